"""A tiny in-memory "adapter" for forwarding-session tests: local TCP endpoints and UDP peers as plain objects.

It applies every ForwardingEvent the way a real adapter would (write, shutdown, RST, close, pause, open/close UDP
sockets) and reports back through the session's flow_* methods, on top of test_quic_pair.Pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
from aioquic.quic import events as qe

from test_quic_pair import Pair
from tunnel_core.forwarding import (
    AbortTcp,
    CloseTcp,
    CloseUdp,
    DialTcp,
    ForwardingSession,
    OpenUdp,
    PauseReading,
    ResumeReading,
    Route,
    SendTcp,
    SendUdp,
    SendUdpTo,
    ShutdownTcpWrite,
)
from tunnel_core.types import Address

TARGETS: tuple[Address, ...] = (("127.0.0.1", 9), ("::1", 9))
CHUNK = 64 * 1024


@attrs.define(eq=False)
class LocalTcp:
    """One local TCP socket and the application behind it."""

    outbox: bytearray = attrs.Factory(bytearray)  # what the local application still wants to send
    want_eof: bool = False  # the application shuts down writing once the outbox is empty
    reading: bool = True  # whether the application takes what arrives
    received: bytearray = attrs.Factory(bytearray)
    pending: bytearray = attrs.Factory(bytearray)  # arrived in the socket buffer, not yet taken
    max_pending: int = 0
    eof_sent: bool = False
    got_eof: bool = False  # ShutdownTcpWrite reached this socket
    aborted: bool = False
    closed: bool = False
    paused: bool = False
    pauses: int = 0
    resumes: int = 0

    @property
    def done(self) -> bool:
        return self.closed or self.aborted


@attrs.define(eq=False)
class UdpFlow:
    """Server: one target-facing UDP socket."""

    addresses: tuple[Address, ...]
    sent: list[bytes] = attrs.Factory(list)
    closed: bool = False


class Adapter:
    """Applies one side's ForwardingEvents to in-memory endpoints."""

    def __init__(self, tunnel: Tunnel, side: str, session: ForwardingSession) -> None:
        self.tunnel = tunnel
        self.side = side
        self.session = session
        self.tcp: dict[int, LocalTcp] = {}
        self.udp: dict[int, UdpFlow] = {}
        self.udp_inbox: dict[Address, list[bytes]] = {}
        self.udp_forwards: dict[Address, set[int]] = {}  # client: which forwards' sockets answered each peer
        self.events: list[Any] = []
        self.dials: list[tuple[float, int]] = []

    # -------------------------------------------------------------- local side acting

    def connect(self, outbox: bytes = b"", *, want_eof: bool = False, forward: int = 0) -> tuple[int, LocalTcp]:
        """Client: a local application connects to the listening socket (of ``forward``)."""
        fid = self.session.open_tcp(self.tunnel.pair.now, forward)
        sock = self.tcp[fid] = LocalTcp(outbox=bytearray(outbox), want_eof=want_eof)
        self.drain()
        return fid, sock

    def send_udp(self, peer: Address, data: bytes, forward: int = 0) -> None:
        self.session.udp_received(peer, data, self.tunnel.pair.now, forward)
        self.drain()

    def poll(self) -> bool:
        busy = False
        now = self.tunnel.pair.now
        for due, fid in [d for d in self.dials if d[0] <= now]:
            self.dials.remove((due, fid))
            busy = True
            if self.tunnel.dial_ok:
                self.tcp[fid] = self.tunnel.new_target(fid)
                self.session.flow_connected(fid)
            else:
                self.session.flow_connect_failed(fid)
        for fid, sock in list(self.tcp.items()):
            if sock.done:
                continue
            if not sock.paused and sock.outbox:
                chunk = bytes(sock.outbox[:CHUNK])
                del sock.outbox[:CHUNK]
                self.session.flow_data(fid, chunk)
                busy = True
            elif not sock.outbox and sock.want_eof and not sock.eof_sent:
                sock.eof_sent = True
                self.session.flow_eof(fid)
                busy = True
            if sock.reading and sock.pending:
                sock.received += sock.pending
                sock.pending.clear()
                self.session.flow_write_pending(fid, 0)
                busy = True
        # Draining may bring ResumeReading (the session notices drained send buffers when asked for events).
        return self.drain() > 0 or busy

    # -------------------------------------------------------------- session events

    def drain(self) -> int:
        for count in range(1_000_000):
            ev = self.session.next_event()
            if ev is None:
                return count
            self.events.append(ev)
            self.apply(ev)
        raise AssertionError("session produced events without end")

    def apply(self, ev: Any) -> None:
        if isinstance(ev, DialTcp):
            assert ev.addresses == TARGETS
            self.dials.append((self.tunnel.pair.now + self.tunnel.dial_delay, ev.flow_id))
        elif isinstance(ev, SendTcp):
            sock = self.tcp[ev.flow_id]
            assert not sock.got_eof and not sock.done, "data after shutdown"
            sock.pending += ev.data
            if sock.reading:
                sock.received += sock.pending
                sock.pending.clear()
            sock.max_pending = max(sock.max_pending, len(sock.pending))
            self.session.flow_write_pending(ev.flow_id, len(sock.pending))
        elif isinstance(ev, ShutdownTcpWrite):
            self.tcp[ev.flow_id].got_eof = True
        elif isinstance(ev, AbortTcp):
            if ev.flow_id in self.tcp:
                self.tcp[ev.flow_id].aborted = True
            else:
                self.dials = [d for d in self.dials if d[1] != ev.flow_id]
        elif isinstance(ev, CloseTcp):
            sock = self.tcp[ev.flow_id]
            assert sock.got_eof and sock.eof_sent
            sock.closed = True
        elif isinstance(ev, PauseReading):
            sock = self.tcp[ev.flow_id]
            assert not sock.paused
            sock.paused = True
            sock.pauses += 1
        elif isinstance(ev, ResumeReading):
            sock = self.tcp[ev.flow_id]
            assert sock.paused
            sock.paused = False
            sock.resumes += 1
        elif isinstance(ev, OpenUdp):
            assert ev.flow_id not in self.udp
            self.udp[ev.flow_id] = UdpFlow(ev.addresses)
        elif isinstance(ev, SendUdp):
            flow = self.udp[ev.flow_id]
            assert not flow.closed
            flow.sent.append(ev.data)
            reply = self.tunnel.udp_target(ev.data)
            if reply is not None:
                self.session.udp_reply(ev.flow_id, reply)
        elif isinstance(ev, SendUdpTo):
            self.udp_inbox.setdefault(ev.peer, []).append(ev.data)
            self.udp_forwards.setdefault(ev.peer, set()).add(ev.forward)
        elif isinstance(ev, CloseUdp):
            self.udp[ev.flow_id].closed = True
        else:
            raise AssertionError(f"unexpected event {ev!r}")

    # -------------------------------------------------------------- timers (a Pair participant)

    def get_timer(self) -> float | None:
        timers = [t for t in (self.session.get_timer(), *(d[0] for d in self.dials)) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        t = self.session.get_timer()
        if t is not None and t <= now:
            self.session.handle_timer(now)
        self.drain()


class Tunnel:
    """A Pair whose sides each get a ForwardingSession (created on HandshakeCompleted, like tunnel_core.peer)."""

    def __init__(
        self,
        protocol: Literal["tcp", "udp"] = "tcp",
        *,
        packet_size: int = 16000,
        high_water: int = 1 << 20,
        low_water: int = 256 << 10,
        udp_idle_timeout: float = 120.0,
        max_flows: int = 0,
        max_udp_peers: int = 256,
        dial_ok: bool = True,
        dial_delay: float = 0.01,
        routes: Sequence[Route] | None = None,
        **pair_kwargs: Any,
    ) -> None:
        self.pair = Pair(packet_size=packet_size, **pair_kwargs)
        self.protocol = protocol
        self.session_kwargs: dict[str, Any] = dict(
            high_water=high_water, low_water=low_water, udp_idle_timeout=udp_idle_timeout,
            max_udp_peers=max_udp_peers,
        )
        self.max_flows = max_flows
        #: Several forwards (the server's routes; the client gets the same protocols without addresses).
        self.routes = routes
        self.dial_ok = dial_ok
        self.dial_delay = dial_delay
        self.adapters: dict[str, Adapter] = {}
        self.quic_events: dict[str, list[Any]] = {"client": [], "server": []}
        self.new_target: Callable[[int], LocalTcp] = lambda fid: LocalTcp()
        self.udp_target: Callable[[bytes], bytes | None] = lambda data: b"re:" + data
        self.pair.on_event = self._on_event

    def _on_event(self, side: str, ev: Any) -> None:
        self.quic_events[side].append(ev)
        if isinstance(ev, qe.HandshakeCompleted):
            session = ForwardingSession(
                self.pair.conn(side),
                is_client=side == "client",
                protocol=self.protocol,  # type: ignore[arg-type]
                target_addresses=TARGETS if side == "server" else (),
                max_flows=self.max_flows if side == "server" else 0,
                routes=self._routes(side),
                **self.session_kwargs,
            )
            adapter = self.adapters[side] = Adapter(self, side, session)
            self.pair.participants.append(adapter)
        elif side in self.adapters:
            adapter = self.adapters[side]
            adapter.session.handle_quic_event(ev, self.pair.now)
            adapter.drain()

    def _routes(self, side: str) -> list[Route] | None:
        if self.routes is None:
            return None
        return list(self.routes) if side == "server" else [Route(r.protocol) for r in self.routes]

    @property
    def client(self) -> Adapter:
        return self.adapters["client"]

    @property
    def server(self) -> Adapter:
        return self.adapters["server"]

    def start(self) -> Tunnel:
        self.pair.run(lambda: "client" in self.adapters and "server" in self.adapters)
        return self

    def run(self, until: Callable[[], bool], **kwargs: Any) -> None:
        self.pair.run(until, **kwargs)

    def idle(self, seconds: float) -> None:
        self.pair.idle(seconds)
