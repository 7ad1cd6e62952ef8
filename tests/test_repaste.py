"""Manual mode's fresh paste as a dialogue (tunnel_core.repaste), driven effect by effect without any I/O.

The real-terminal run (tests/e2e/test_fresh_paste.py) covers the whole way through a restarted server; these cover
the branches it cannot reach cheaply: the old path answering while the prompt waits, a malformed paste followed by
the terminal's end of input, and the client without a terminal (no prompt at all).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tunnel_core import dialogue as dx
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import ExitCode, IceOptions, ManualClientOptions, TunnelError
from tunnel_core.peer import TunnelClosed, TunnelHeld, TunnelResumed
from tunnel_core.repaste import PASTE_AFTER, hold_or_paste

OPTIONS = ManualClientOptions(source="tcp://127.0.0.1:22", target="127.0.0.1:2222",
                              ice=IceOptions(host_candidates=("127.0.0.1",)))


def drive(gen: Any, respond: Callable[[Any], Any], limit: int = 200) -> tuple[list[Any], BaseException | None]:
    """Run a dialogue: ``respond(effect)`` returns the result, or returns an exception to throw in."""
    seen: list[Any] = []
    result: Any = None
    error: BaseException | None = None
    for _ in range(limit):
        try:
            effect = gen.throw(error) if error is not None else gen.send(result)
        except StopIteration:
            return seen, None
        except TunnelError as exc:
            return seen, exc
        seen.append(effect)
        answer = respond(effect)
        result, error = (None, answer) if isinstance(answer, BaseException) else (answer, None)
    raise AssertionError(f"no end after {limit} effects: {seen[-5:]}")


class Script:
    """Answers the tunnel effects like the runner would; ``reads`` are the answers to ReadBlock, in order."""

    def __init__(self, reads: list[Any], waits: dict[str, list[Any]]) -> None:
        self.reads = reads
        self.waits = waits
        self.peer: Any = None

    def __call__(self, effect: Any) -> Any:
        inner = effect.effect if isinstance(effect, dx.OnSpare) else effect
        if isinstance(inner, dx.BindHostSockets):
            return [("127.0.0.1", 40000)]
        if isinstance(inner, dx.Start):
            self.peer = inner.peer
            return None
        if isinstance(inner, dx.Poke):
            inner.fn(0.0)
            return None
        if isinstance(inner, dx.Wait) and inner.kind == "gathered":
            return GatheringComplete(tuple(self.peer.ice.local_candidates))
        if isinstance(inner, dx.Wait):
            return self.waits[inner.kind].pop(0)
        if isinstance(inner, dx.ReadBlock):
            return self.reads.pop(0)
        return None


def _client(script: Script) -> tuple[list[Any], BaseException | None]:
    return drive(hold_or_paste(OPTIONS, os.urandom, _forwards(), [], "tcp"), script)


def _forwards() -> list[dx.LocalForward]:
    gen = dx.local_forwards(OPTIONS.source, OPTIONS.target, ())
    with pytest.raises(StopIteration) as done:  # IP literals: nothing to resolve, no effect at all
        gen.send(None)
    return list(done.value.value)


def _lines(effects: list[Any]) -> list[str]:
    return [e.text for e in effects if isinstance(e, dx.Say)]


LOST = TunnelClosed(reason="Gave up reconnecting after 300s (150 attempt(s)); last error: ...", was_up=True,
                    by_peer=False)


def test_the_old_path_answering_while_the_prompt_waits_drops_the_spare() -> None:
    script = Script(reads=[TunnelResumed()],
                    waits={"held": [TunnelHeld(0.0), LOST], "back": [None]})
    effects, error = _client(script)
    assert isinstance(error, TunnelError) and error.exit_code == ExitCode.CONNECTION_LOST
    waits = [e for e in effects if isinstance(e, dx.Wait)]
    assert waits[1] == dx.Wait("back", timeout=PASTE_AFTER)
    blocks = [e for e in effects if isinstance(e, dx.PrintBlock)]
    assert len(blocks) == 1 and "BEGIN TUNNEL-RS MANUAL OFFER" in blocks[0].text
    read = next(e for e in effects if isinstance(e, dx.ReadBlock))
    assert read == dx.ReadBlock("ANSWER", interrupt="back")
    assert effects.index(read) < next(i for i, e in enumerate(effects) if isinstance(e, dx.DropSpare))
    assert not any(isinstance(e, dx.Promote) for e in effects)
    assert any(line.startswith("The old path answers again") for line in _lines(effects))
    assert any(line.startswith("No answer from the server's known addresses") for line in _lines(effects))


def test_a_malformed_paste_is_one_line_then_end_of_input_stops_the_asking() -> None:
    script = Script(reads=["not a block\n", dx.EndOfInput("Missing BEGIN marker", ExitCode.USAGE)],
                    waits={"held": [TunnelHeld(0.0)], "back": [None], "closed": [LOST]})
    effects, error = _client(script)
    lines = _lines(effects)
    assert any(line.startswith("Error: ") for line in lines), lines  # the malformed paste
    assert sum(line.startswith("Paste server answer") for line in lines) == 2, lines  # asked again
    assert any(line.startswith("The terminal's input ended") for line in lines), lines
    assert isinstance(error, TunnelError) and error.exit_code == ExitCode.CONNECTION_LOST
    assert [e for e in effects if isinstance(e, dx.Wait)][-1] == dx.Wait("closed")


def test_a_path_back_before_the_paste_delay_asks_nothing() -> None:
    script = Script(reads=[], waits={"held": [TunnelHeld(0.0), LOST], "back": [TunnelResumed()]})
    effects, error = _client(script)
    assert isinstance(error, TunnelError)
    assert not any(isinstance(e, dx.PrintBlock | dx.ReadBlock | dx.OnSpare) for e in effects)


@pytest.mark.parametrize("terminal", [True, False])
def test_only_a_client_on_a_terminal_enters_the_fresh_paste(terminal: bool) -> None:
    """After its listeners are up, the client asks whether stdin is a terminal; without one it waits for the end
    as before (Wait "closed"), with one it waits for the held milestone."""
    from tunnel_core.candidate import Candidate
    from tunnel_core.peer import IceConnected, TunnelReady

    state: dict[str, Any] = {}

    def respond(effect: Any) -> Any:
        if isinstance(effect, dx.BindHostSockets):
            return [("127.0.0.1", 40000)]
        if isinstance(effect, dx.Start):
            state["peer"] = effect.peer
        elif isinstance(effect, dx.Poke):
            effect.fn(0.0)
        elif isinstance(effect, dx.Wait) and effect.kind == "gathered":
            return GatheringComplete(tuple(state["peer"].ice.local_candidates))
        elif isinstance(effect, dx.ReadBlock):
            return _answer()
        elif isinstance(effect, dx.Wait) and effect.kind == "connected":
            cand = Candidate.from_sdp("candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host")
            return IceConnected(cand, cand, ("127.0.0.1", 40000), ("127.0.0.1", 40001), "Direct (Host)")
        elif isinstance(effect, dx.Wait) and effect.kind == "ready":
            return TunnelReady()
        elif isinstance(effect, dx.Listen):
            return ("127.0.0.1", 2222)
        elif isinstance(effect, dx.AskTerminal):
            return terminal
        elif isinstance(effect, dx.Wait):
            return LOST
        return None

    effects, error = drive(dx.manual_client_dialogue(OPTIONS, os.urandom), respond)
    assert isinstance(error, TunnelError) and error.exit_code == ExitCode.CONNECTION_LOST
    last_wait = [e for e in effects if isinstance(e, dx.Wait)][-1]
    assert last_wait == (dx.Wait("held") if terminal else dx.Wait("closed"))


def _answer() -> str:
    from tunnel_core import manual
    from tunnel_core.assembly import new_agent
    from tunnel_core.blocks import encode_block

    agent = new_agent(controlling=False, rng=os.urandom, stun_servers=[], turn_servers=[])
    agent.add_local_address(("127.0.0.1", 40001))
    return encode_block("ANSWER", manual.make_answer(agent, "ab" * 32))
