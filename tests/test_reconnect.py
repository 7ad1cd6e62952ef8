"""tunnel_core.reconnect driven by hand: the effects it yields, its backoff, its budget and what ends it at once."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import attrs
import pytest

from tunnel_core.candidate import Candidate, CandidateType
from tunnel_core.dialogue import Detach, Say, Sleep, Stopped
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.peer import IceConnected
from tunnel_core.reconnect import keep_reconnecting, quiet

LOST = TunnelError("ICE consent lost", ExitCode.CONNECTION_LOST)


@attrs.frozen
class Tick:
    """Stands for the mode's clock effect."""


@attrs.frozen
class Times:
    monotonic: float


@attrs.frozen
class Step:
    """An effect of the fake establish step (passed through by ``quiet``)."""

    n: int


def _connected() -> IceConnected:
    cand = Candidate(foundation="1", component=1, transport="udp", priority=1, host="192.0.2.1", port=1,
                     type=CandidateType.HOST)
    return IceConnected(local=cand, remote=cand, local_address=("192.0.2.1", 1), remote_address=("192.0.2.2", 1),
                        connection_type="Direct (Host)")


class Driver:
    """Plays the interpreter: a virtual clock moved by Sleep, every effect recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.effects: list[Any] = []

    def run(self, gen: Generator[Any, Any, Any]) -> Any:
        result: Any = None
        while True:
            try:
                effect = gen.send(result)
            except StopIteration as stop:
                return stop.value
            self.effects.append(effect)
            result = None
            if isinstance(effect, Tick):
                result = Times(self.now)
            elif isinstance(effect, Sleep):
                self.now += effect.seconds
            elif isinstance(effect, Step):
                self.now += 0.5  # an attempt takes a while

    def says(self) -> list[str]:
        return [e.text for e in self.effects if isinstance(e, Say)]


def _establish(outcomes: list[TunnelError | None], budgets: list[float]):
    def establish(remaining: float) -> Generator[Any, Any, IceConnected]:
        budgets.append(remaining)
        yield Say("Gathered 2 candidate(s)")  # an attempt's own line: swallowed
        yield Step(len(budgets))
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return _connected()

    return establish


def test_fails_twice_then_comes_back_with_one_line_each_way() -> None:
    budgets: list[float] = []
    failing = TunnelError("Timeout waiting for offer from peer (1s)", ExitCode.CONNECT_FAILED)
    driver = Driver()
    connected = driver.run(keep_reconnecting(_establish([failing, failing, None], budgets), LOST, 60.0, Tick()))
    assert connected.connection_type == "Direct (Host)"
    says = driver.says()
    assert says[0] == "Tunnel lost: ICE consent lost. Reconnecting... (giving up after 60s)"
    assert says[1].startswith("Tunnel back after 4.5s (3 attempt(s)): Direct (Host)")
    assert len(says) == 2  # the attempts' own lines were swallowed
    sleeps = [e.seconds for e in driver.effects if isinstance(e, Sleep)]
    assert sleeps == [1.0, 2.0]  # backoff doubles
    assert sum(isinstance(e, Detach) for e in driver.effects) == 3  # at the loss and after each failed attempt
    assert budgets[0] == 60.0 and budgets[1] == pytest.approx(58.5) and budgets[2] == pytest.approx(56.0)


def test_gives_up_with_exit_11_saying_how_long_it_tried() -> None:
    failing = TunnelError("Connection timed out after 30s", ExitCode.CONNECT_FAILED)
    driver = Driver()
    with pytest.raises(TunnelError) as info:
        driver.run(keep_reconnecting(_establish([failing] * 20, []), LOST, 10.0, Tick()))
    assert info.value.exit_code is ExitCode.CONNECTION_LOST
    assert info.value.message.startswith("Gave up reconnecting after ")
    assert info.value.message.endswith("(4 attempt(s)); last error: Connection timed out after 30s")
    assert driver.now <= 10.0


@pytest.mark.parametrize("code", [ExitCode.AUTH, ExitCode.USAGE])
def test_a_refusal_ends_at_once(code: ExitCode) -> None:
    refused = TunnelError("Session rejected by server: nope", code)
    driver = Driver()
    with pytest.raises(TunnelError) as info:
        driver.run(keep_reconnecting(_establish([refused, None], []), LOST, 60.0, Tick()))
    assert info.value is refused
    assert not any(isinstance(e, Sleep) for e in driver.effects)


def test_timeout_zero_and_a_final_loss_raise_the_loss_itself() -> None:
    driver = Driver()
    with pytest.raises(TunnelError) as info:
        driver.run(keep_reconnecting(_establish([None], []), LOST, 0.0, Tick()))
    assert info.value is LOST and driver.effects == []
    refused = TunnelError("manual fingerprint mismatch", ExitCode.AUTH)
    with pytest.raises(TunnelError) as info:
        driver.run(keep_reconnecting(_establish([None], []), refused, 60.0, Tick()))
    assert info.value is refused


def test_quiet_passes_results_and_stop_requests_through() -> None:
    seen: list[Any] = []

    def inner() -> Generator[Any, Any, str]:
        yield Say("hidden")
        seen.append((yield Step(1)))
        try:
            yield Step(2)
        except Stopped:
            seen.append("stopped")
            raise
        return "never"

    gen = quiet(inner())
    assert gen.send(None) == Step(1)
    assert gen.send("result") == Step(2)
    with pytest.raises(Stopped):
        gen.throw(Stopped())
    assert seen == ["result", "stopped"]
