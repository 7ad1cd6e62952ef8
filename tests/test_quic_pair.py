"""An in-memory client/server pair of TunnelQuicConnections on a virtual clock, shared by the QUIC and forwarding
tests (plus tests of the harness itself).

Both sides see the constant virtual peer address ("peer", 0), as in tunnel_core.peer. aioquic paces its sending, so
the loop advances virtual time whenever nothing moves; every loop is bounded in steps and virtual seconds.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.packet import pull_quic_header
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tunnel_core.quic import QuicIdentity, TunnelQuicConnection, make_configuration, make_identity
from tunnel_core.testing import VirtualClock

PEER = ("peer", 0)
NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2034, 1, 1, tzinfo=dt.UTC)


@functools.cache
def cached_identity(slot: int = 0, kind: str = "p256") -> QuicIdentity:
    """Cached identities: key generation is the slow part of a handshake test."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    return make_identity(key, not_before=NOT_BEFORE, not_after=NOT_AFTER)


class Pair:
    """Client and server connections joined by a perfect in-memory link, plus hooks for sessions and adapters.

    ``on_event(side, event)`` sees every QUIC event ("client" or "server"); the default records them in
    ``events[side]``. ``participants`` are extra machines with ``get_timer``/``handle_timer`` and an optional
    ``poll() -> bool`` that runs each step (test adapters reading their local endpoints).
    """

    def __init__(
        self,
        *,
        server_identity: QuicIdentity | None = None,
        client_identity: QuicIdentity | None = None,
        pin_server: str | bool | None = True,
        pin_client: str | None = None,
        request_client_certificate: bool = False,
        packet_size: int = 1350,
        window: int = 8 * 1024 * 1024,
        idle_timeout: float = 300.0,
        keepalive_interval: float | None = 15.0,
        tick: float = 0.0005,
        start_client: bool = True,
        client_datagrams: bool = True,
        server_datagrams: bool = True,
    ) -> None:
        self.clock = VirtualClock()
        self.tick = tick
        self.server_identity = server_identity or cached_identity(0)
        if pin_server is True:
            pin_server = self.server_identity.fingerprint
        self._server_kwargs: dict[str, Any] = dict(
            configuration=make_configuration(
                is_client=False,
                identity=self.server_identity,
                packet_size=packet_size,
                window=window,
                idle_timeout=idle_timeout,
                datagrams=server_datagrams,
            ),
            expected_peer_fingerprint=pin_client,
            request_client_certificate=request_client_certificate,
            keepalive_interval=keepalive_interval,
        )
        self.client = TunnelQuicConnection(
            configuration=make_configuration(
                is_client=True,
                identity=client_identity,
                packet_size=packet_size,
                window=window,
                idle_timeout=idle_timeout,
                datagrams=client_datagrams,
            ),
            expected_peer_fingerprint=pin_server or None,
            keepalive_interval=keepalive_interval,
        )
        self.server: TunnelQuicConnection | None = None
        self.events: dict[str, list[Any]] = {"client": [], "server": []}
        self.on_event: Callable[[str, Any], None] = lambda side, ev: self.events[side].append(ev)
        self.participants: list[Any] = []
        self.datagrams = {"client": 0, "server": 0}
        self.drop: Callable[[str, bytes], bool] = lambda side, data: False
        if start_client:
            self.client.connect(PEER, self.clock.now)

    @property
    def now(self) -> float:
        return self.clock.now

    def conn(self, side: str) -> TunnelQuicConnection:
        conn = self.client if side == "client" else self.server
        assert conn is not None
        return conn

    def _make_server(self, first: bytes) -> TunnelQuicConnection:
        header = pull_quic_header(Buffer(data=first), host_cid_length=8)
        self.server = TunnelQuicConnection(
            original_destination_connection_id=header.destination_cid, **self._server_kwargs
        )
        return self.server

    def flush(self) -> int:
        """Move every pending datagram once in each direction; return how many moved."""
        moved = 0
        now = self.clock.now
        for side, other in (("client", "server"), ("server", "client")):
            src = self.client if side == "client" else self.server
            if src is None:
                continue
            for data, addr in src.datagrams_to_send(now):
                assert addr == PEER
                moved += 1
                self.datagrams[side] += 1
                if self.drop(side, data):
                    continue
                dst = self.client if other == "client" else self.server
                if dst is None:
                    dst = self._make_server(data)
                dst.receive_datagram(data, PEER, now)
        return moved

    def pump(self) -> int:
        """Hand every pending QUIC event to ``on_event``; return how many."""
        count = 0
        for side in ("client", "server"):
            conn = self.client if side == "client" else self.server
            if conn is None:
                continue
            while (ev := conn.next_event()) is not None:
                count += 1
                self.on_event(side, ev)
        return count

    def _timers(self) -> list[float]:
        sources: list[Any] = [self.client, *([self.server] if self.server else []), *self.participants]
        return [t for t in (s.get_timer() for s in sources) if t is not None]

    def fire_timers(self) -> None:
        now = self.clock.now
        sources: list[Any] = [self.client, *([self.server] if self.server else []), *self.participants]
        for source in sources:
            t = source.get_timer()
            if t is not None and t <= now:
                source.handle_timer(now)

    def step(self) -> bool:
        busy = False
        for p in self.participants:
            poll = getattr(p, "poll", None)
            if poll is not None and poll():
                busy = True
        busy = self.pump() > 0 or busy
        busy = self.flush() > 0 or busy
        busy = self.pump() > 0 or busy
        return busy

    def run(self, until: Callable[[], bool], *, max_time: float = 60.0, max_steps: int = 200_000) -> None:
        """Step until ``until()`` holds; fail after ``max_steps`` or ``max_time`` virtual seconds."""
        deadline = self.clock.now + max_time
        for _ in range(max_steps):
            if until():
                return
            if self.step():
                continue
            timers = self._timers()
            if not timers:
                break
            target = max(self.clock.now + self.tick, min(timers))
            if target > deadline:
                break
            self.clock.advance_to(target)
            self.fire_timers()
        if until():
            return
        raise AssertionError(f"condition not reached by t+{self.clock.now - deadline + max_time:.3f}s")

    def idle(self, seconds: float, *, max_steps: int = 100_000) -> None:
        """Let ``seconds`` of virtual time pass, serving timers and traffic on the way."""
        end = self.clock.now + seconds
        for _ in range(max_steps):
            if self.step():
                continue
            timers = [t for t in self._timers() if t <= end]
            if not timers:
                break
            self.clock.advance_to(max(self.clock.now + self.tick, min(timers)))
            self.fire_timers()
        self.clock.advance_to(end)
        self.fire_timers()
        for _ in range(1000):
            if not self.step():
                break

    def handshake(self) -> None:
        self.run(lambda: self.has("client", qe.HandshakeCompleted) and self.has("server", qe.HandshakeCompleted))

    def has(self, side: str, kind: type) -> bool:
        return any(isinstance(e, kind) for e in self.events[side])

    def of(self, side: str, kind: type) -> list[Any]:
        return [e for e in self.events[side] if isinstance(e, kind)]


# ------------------------------------------------------------------------------------------ tests of the harness


def test_pair_handshakes_over_constant_virtual_address() -> None:
    pair = Pair()
    pair.handshake()
    assert pair.client.get_peer_address() == PEER
    assert pair.conn("server").get_peer_address() == PEER
    assert pair.client.peer_verified and pair.conn("server").peer_verified


def test_pair_run_fails_loudly_when_condition_never_holds() -> None:
    pair = Pair()
    with pytest.raises(AssertionError, match="condition not reached"):
        pair.run(lambda: False, max_time=2.0)


def test_pair_moves_stream_data_both_ways() -> None:
    pair = Pair()
    pair.handshake()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"ping", end_stream=True)
    pair.run(lambda: pair.has("server", qe.StreamDataReceived))
    pair.conn("server").send_stream_data(sid, b"pong", end_stream=True)
    pair.run(lambda: pair.has("client", qe.StreamDataReceived))
    assert b"".join(e.data for e in pair.of("server", qe.StreamDataReceived)) == b"ping"
    assert b"".join(e.data for e in pair.of("client", qe.StreamDataReceived)) == b"pong"
