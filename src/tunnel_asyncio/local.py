"""Local sockets of a tunnel on asyncio: what the forwarding session's commands mean on this runtime.

The session decides; this module only carries out its events (dial, write, half-close, pause) and reports what the
local sockets did (data, EOF, reset, drained). Every report is followed by one coalesced flush of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

from tunnel_core.forwarding import events as fe
from tunnel_core.types import Address

log = logging.getLogger("tunnel")

HAPPY_EYEBALLS_DELAY = 0.25


class _TcpFlow(asyncio.Protocol):
    """One local TCP connection bound to one QUIC stream."""

    def __init__(self, fwd: LocalForwarder, flow_id: int | None) -> None:
        self.fwd = fwd
        self.flow_id = flow_id
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed on purpose: uvloop's transports implement the interface without subclassing asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=1 << 20, low=256 << 10)
        if self.flow_id is None:  # client side: an accepted local connection opens a stream
            session = self.fwd.session()
            if session is None:
                transport.abort()
                return
            self.flow_id = session.open_tcp(self.fwd.now())
            self.fwd.tcp[self.flow_id] = self
            self.fwd.kick()

    def data_received(self, data: bytes) -> None:
        session = self.fwd.session()
        if session is not None and self.flow_id is not None:
            session.flow_data(self.flow_id, data)
            self.fwd.kick()

    def eof_received(self) -> bool:
        session = self.fwd.session()
        if session is not None and self.flow_id is not None:
            session.flow_eof(self.flow_id)
            self.fwd.kick()
        return True  # keep our writing side open: half-close is preserved

    def resume_writing(self) -> None:
        self._report_pending()

    def _report_pending(self) -> None:
        session = self.fwd.session()
        if session is not None and self.flow_id is not None and self.transport is not None:
            session.flow_write_pending(self.flow_id, self.transport.get_write_buffer_size())
            self.fwd.kick()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow_id is not None:
            self.fwd.tcp.pop(self.flow_id, None)
        if self.closing:
            return
        session = self.fwd.session()
        if session is not None and self.flow_id is not None:
            session.flow_reset(self.flow_id)
            self.fwd.kick()


class LocalForwarder:
    """Carries out forwarding events on asyncio sockets and reports back to the session."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        session: Callable[[], Any],
        kick: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.session = session
        self.kick = kick
        self.tcp: dict[int, _TcpFlow] = {}
        self.udp_flows: dict[int, socket.socket] = {}
        self.udp_listener: socket.socket | None = None
        self.tcp_server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------------------------------- client listeners

    async def listen_tcp(self, host: str, port: int) -> Address:
        self.tcp_server = await self.loop.create_server(lambda: _TcpFlow(self, None), host, port, reuse_address=True)
        name = self.tcp_server.sockets[0].getsockname()
        return (name[0], name[1])

    def listen_udp(self, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
        sock.setblocking(False)
        self.udp_listener = sock
        self.loop.add_reader(sock.fileno(), self._on_udp_listener)
        name = sock.getsockname()
        return (name[0], name[1])

    def _on_udp_listener(self) -> None:
        sock = self.udp_listener
        session = self.session()
        if sock is None:
            return
        now = self.now()
        for _ in range(256):
            try:
                data, peer = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if session is not None:
                session.udp_received((peer[0], peer[1]), data, now)
        self.kick()

    # ------------------------------------------------------------------------------------- events

    def handle(self, ev: Any) -> None:
        if isinstance(ev, fe.SendTcp):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None and flow.transport is not None and not flow.transport.is_closing():
                flow.transport.write(ev.data)
                flow._report_pending()
        elif isinstance(ev, fe.ShutdownTcpWrite):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None and flow.transport is not None and flow.transport.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    flow.transport.write_eof()
        elif isinstance(ev, fe.CloseTcp):
            flow = self.tcp.pop(ev.flow_id, None)
            if flow is not None and flow.transport is not None:
                flow.closing = True
                flow.transport.close()
        elif isinstance(ev, fe.AbortTcp):
            flow = self.tcp.pop(ev.flow_id, None)
            if flow is not None and flow.transport is not None:
                flow.closing = True
                flow.transport.abort()
        elif isinstance(ev, fe.PauseReading):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None and flow.transport is not None:
                with contextlib.suppress(RuntimeError):
                    flow.transport.pause_reading()
        elif isinstance(ev, fe.ResumeReading):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None and flow.transport is not None:
                with contextlib.suppress(RuntimeError):
                    flow.transport.resume_reading()
        elif isinstance(ev, fe.DialTcp):
            task = self.loop.create_task(self._dial(ev.flow_id, list(ev.addresses)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(ev, fe.OpenUdp):
            self._open_udp(ev.flow_id, list(ev.addresses))
        elif isinstance(ev, fe.SendUdp):
            sock = self.udp_flows.get(ev.flow_id)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.send(ev.data)
        elif isinstance(ev, fe.SendUdpTo):
            if self.udp_listener is not None:
                with contextlib.suppress(OSError):
                    self.udp_listener.sendto(ev.data, ev.peer)
        elif isinstance(ev, fe.CloseUdp):
            sock = self.udp_flows.pop(ev.flow_id, None)
            if sock is not None:
                self.loop.remove_reader(sock.fileno())
                sock.close()

    # ------------------------------------------------------------------------------------- server side

    async def _dial(self, flow_id: int, addresses: Sequence[Address]) -> None:
        """Staggered parallel attempts (happy eyeballs) over exactly the addresses the policy checked."""
        protocol = _TcpFlow(self, flow_id)
        winner: asyncio.Transport | None = None
        pending: set[asyncio.Task[Any]] = set()
        try:
            for i, addr in enumerate(addresses):
                pending.add(self.loop.create_task(self._connect_one(addr)))
                if i + 1 < len(addresses):
                    done, _ = await asyncio.wait(pending, timeout=HAPPY_EYEBALLS_DELAY,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    winner = self._first_success(done, pending)
                    if winner is not None:
                        break
            while winner is None and pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winner = self._first_success(done, pending)
        finally:
            for task in pending:
                task.cancel()
        session = self.session()
        if winner is None:
            if session is not None:
                session.flow_connect_failed(flow_id)
                self.kick()
            return
        if session is None:
            winner.abort()
            return
        self.tcp[flow_id] = protocol
        winner.set_protocol(protocol)
        protocol.connection_made(winner)
        winner.resume_reading()
        session.flow_connected(flow_id)
        self.kick()

    @staticmethod
    def _first_success(done: set[asyncio.Task[Any]], pending: set[asyncio.Task[Any]]) -> asyncio.Transport | None:
        for task in done:
            pending.discard(task)
            if not task.cancelled() and task.exception() is None:
                return task.result()
        return None

    async def _connect_one(self, addr: Address) -> asyncio.Transport:
        transport, _ = await asyncio.wait_for(
            self.loop.create_connection(lambda: _Placeholder(), addr[0], addr[1]), timeout=10
        )
        return transport  # type: ignore[return-value]

    def _open_udp(self, flow_id: int, addresses: Sequence[Address]) -> None:
        if not addresses:
            return
        addr = addresses[0]
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(addr)
        except OSError:
            sock.close()
            return
        self.udp_flows[flow_id] = sock
        self.loop.add_reader(sock.fileno(), self._on_udp_flow, flow_id, sock)

    def _on_udp_flow(self, flow_id: int, sock: socket.socket) -> None:
        session = self.session()
        now = self.now()
        for _ in range(256):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP port unreachable from the target: UDP carries on
            if session is not None:
                session.udp_reply(flow_id, data, now)
        self.kick()

    # ------------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        if self.tcp_server is not None:
            self.tcp_server.close()
        for flow in list(self.tcp.values()):
            flow.closing = True
            if flow.transport is not None:
                flow.transport.abort()
        self.tcp.clear()
        for sock in [*self.udp_flows.values(), *([self.udp_listener] if self.udp_listener else [])]:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.udp_flows.clear()
        self.udp_listener = None
        for task in self._tasks:
            task.cancel()


class _Placeholder(asyncio.Protocol):
    """Protocol used while racing dial attempts: it reads nothing, so no byte can arrive before the winner is
    handed the real flow protocol."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).pause_reading()
