"""Interop over real 127.0.0.1 sockets: aioice 0.13 (an independent ICE implementation) in both roles, and
server-reflexive gathering against a real coturn.

Our agent runs under a minimal asyncio driver written here (the real adapter lives in tunnel_asyncio); aioice
runs through its public API with host discovery patched to loopback (python-stack.md 2). Application datagrams
must flow both ways over the pair ICE selected, which proves the selection is the same on both sides.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aioice
import aioice.ice
import pytest

from helpers.coturn import run_coturn
from tunnel_core import stun
from tunnel_core.candidate import Candidate
from tunnel_core.ice import (
    GatheringComplete,
    IceAgent,
    IceFailed,
    IceTiming,
    PairSelected,
    ServerReflexiveDiscovered,
)
from tunnel_core.types import Address

pytestmark = pytest.mark.interop


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, driver: AgentDriver) -> None:
        self.driver = driver
        self.local: Address | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.local is not None
        self.driver.on_datagram(data, self.local, (addr[0], addr[1]))


class AgentDriver:
    """One UDP socket per host candidate; STUN goes to the agent, anything else to ``app``."""

    def __init__(self, agent: IceAgent) -> None:
        self.agent = agent
        self.loop = asyncio.get_running_loop()
        self.transports: dict[Address, asyncio.DatagramTransport] = {}
        self.events: list[Any] = []
        self.app: asyncio.Queue[tuple[bytes, Address, Address]] = asyncio.Queue()
        self.changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    async def bind(self) -> Address:
        transport, proto = await self.loop.create_datagram_endpoint(
            lambda: _Proto(self), local_addr=("127.0.0.1", 0)
        )
        local = transport.get_extra_info("sockname")[:2]
        proto.local = local
        self.transports[local] = transport
        self.agent.add_local_address(local)
        return local

    def on_datagram(self, data: bytes, local: Address, remote: Address) -> None:
        if stun.is_stun(data):
            self.agent.receive_datagram(data, local, remote, self.loop.time())
        else:
            self.app.put_nowait((data, local, remote))
        self.pump()

    def pump(self) -> None:
        now = self.loop.time()
        for t in self.agent.datagrams_to_send(now):
            self.transports[t.local].sendto(t.data, t.remote)
        while (event := self.agent.next_event()) is not None:
            self.events.append(event)
            self.changed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.agent.get_timer()
        if when is not None:
            self._timer = self.loop.call_at(max(when, now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.agent.handle_timer(self.loop.time())
        self.pump()

    async def wait_for(self, kind: type, timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.events if isinstance(e, kind | IceFailed)]
                if found:
                    return found[0]
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.agent.close()
        for transport in self.transports.values():
            transport.close()


def _to_aioice(c: Candidate) -> aioice.Candidate:
    # aioice writes candidates without str0m's "candidate:" prefix.
    return aioice.Candidate.from_sdp(c.to_sdp().removeprefix("candidate:"))


async def _interop(
    we_control: bool, seed: int, they_control: bool | None = None, their_tie_breaker: int | None = None
) -> tuple[bool, bool]:
    """Connect, exchange data; our final role and aioice's."""
    if they_control is None:
        they_control = not we_control
    theirs = aioice.Connection(ice_controlling=they_control, use_ipv6=False)
    if their_tie_breaker is not None:
        theirs._tie_breaker = their_tie_breaker  # private, but the only way to force who wins a conflict
    agent = IceAgent(controlling=we_control, rng=random.Random(seed).randbytes, timing=IceTiming())
    driver = AgentDriver(agent)
    try:
        await theirs.gather_candidates()
        their_candidates = [Candidate.from_sdp(c.to_sdp()) for c in theirs.local_candidates]
        assert their_candidates and all(c.host == "127.0.0.1" for c in their_candidates)
        await driver.bind()
        agent.gather(driver.loop.time())
        driver.pump()
        gathered = await driver.wait_for(GatheringComplete, 5)
        assert isinstance(gathered, GatheringComplete)

        theirs.remote_username = agent.local_ufrag
        theirs.remote_password = agent.local_pwd
        for c in gathered.candidates:
            await theirs.add_remote_candidate(_to_aioice(c))
        await theirs.add_remote_candidate(None)
        agent.set_remote(theirs.local_username, theirs.local_password, their_candidates)
        agent.connect(driver.loop.time())
        driver.pump()

        their_connect = asyncio.ensure_future(theirs.connect())
        selected = await driver.wait_for(PairSelected, 10)
        assert isinstance(selected, PairSelected), selected
        await asyncio.wait_for(their_connect, 10)

        # aioice -> us: arrives on our selected socket from the selected remote address.
        await theirs.send(b"hello from aioice")
        data, local, remote = await asyncio.wait_for(driver.app.get(), 5)
        assert data == b"hello from aioice"
        assert (local, remote) == (selected.local_address, selected.remote_address)
        # us -> aioice, raw from the selected base socket.
        driver.transports[selected.local_address].sendto(b"hello from tunnel", selected.remote_address)
        assert await asyncio.wait_for(theirs.recv(), 5) == b"hello from tunnel"
        # Nothing failed on our side, and the roles are what we asked for.
        assert not [e for e in driver.events if isinstance(e, IceFailed)]
        assert agent.selected_pair == (selected.local, selected.remote)
        return agent.controlling, theirs.ice_controlling
    finally:
        driver.close()
        await theirs.close()


@pytest.fixture
def loopback_aioice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("loopback_aioice")
def test_we_control_aioice_is_controlled() -> None:
    """aioice as controlled must accept our regular nomination."""
    assert asyncio.run(_interop(we_control=True, seed=11)) == (True, False)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("loopback_aioice")
def test_aioice_controls_with_aggressive_nomination() -> None:
    """We, controlled, must accept aioice's aggressive nomination (USE-CANDIDATE on every check)."""
    assert asyncio.run(_interop(we_control=False, seed=12)) == (False, True)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("loopback_aioice")
@pytest.mark.parametrize("both_controlling", [True, False])
@pytest.mark.parametrize("we_win", [True, False])
def test_role_conflict_with_aioice_resolves(both_controlling: bool, we_win: bool) -> None:
    """Same role on both sides: the 487 dance of RFC 8445 7.3.1.1/7.2.5.1 must agree across implementations;
    the larger tie-breaker ends up controlling."""
    their_tie_breaker = 0 if we_win else 2**64 - 1
    ours, theirs = asyncio.run(
        _interop(both_controlling, seed=13, they_control=both_controlling, their_tie_breaker=their_tie_breaker)
    )
    assert (ours, theirs) == ((True, False) if we_win else (False, True))


async def _gather_against(server: Address) -> tuple[Address, list[Any], IceAgent]:
    agent = IceAgent(controlling=True, rng=random.Random(5).randbytes, stun_servers=[server])
    driver = AgentDriver(agent)
    try:
        local = await driver.bind()
        agent.gather(driver.loop.time())
        driver.pump()
        await driver.wait_for(GatheringComplete, 5)
        return local, list(driver.events), agent
    finally:
        driver.close()


@pytest.mark.timeout(60)
def test_srflx_gathering_against_real_coturn(tmp_path) -> None:
    """coturn sees our socket at its own 127.0.0.1 address: reported, and dropped as a redundant candidate."""
    with run_coturn(tmp_path) as server:
        local, events, agent = asyncio.run(_gather_against(server.address))
    found = [e for e in events if isinstance(e, ServerReflexiveDiscovered)]
    assert found == [ServerReflexiveDiscovered(server=server.address, base=local, mapped=local)]
    complete = [e for e in events if isinstance(e, GatheringComplete)]
    assert len(complete) == 1
    assert [c.type.value for c in complete[0].candidates] == ["host"]
    assert events.index(found[0]) < events.index(complete[0])
    assert agent.local_candidates == list(complete[0].candidates)
