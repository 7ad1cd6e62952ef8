"""Local sockets of a tunnel on trio: what the forwarding session's commands mean on this runtime.

The session decides; this module only carries out its events (dial, write, half-close, pause) and reports what the
local sockets did (data, EOF, reset, bytes still unwritten). Every report is followed by one coalesced flush of the
machine (``kick``).

Why raw non-blocking sockets and explicit write queues rather than trio streams: the session needs to know how many
delivered bytes are still unwritten (that is what returns flow-control credit to QUIC), needs ``shutdown(SHUT_WR)``
after exactly the queued bytes, and must pause reading without losing the socket's readiness. A socket, a
bytearray and two small tasks per connection say all of that directly.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import trio

from tunnel_core.forwarding import events as fe
from tunnel_core.types import Address
from tunnel_trio.driver import DRAIN_LIMIT, close_socket

log = logging.getLogger("tunnel")

HAPPY_EYEBALLS_DELAY = 0.25
CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536
#: Bytes written per send call; bounded so one flow's burst does not monopolise the scheduler.
WRITE_CHUNK = 256 * 1024


class _TcpFlow:
    """One local TCP connection bound to one QUIC stream: a reader task and a writer task under one cancel scope."""

    def __init__(self, fwd: LocalForwarder, flow_id: int, sock: socket.socket) -> None:
        self.fwd = fwd
        self.flow_id = flow_id
        self.sock = sock
        self.scope = trio.CancelScope()
        self.pending = bytearray()
        self.write_wanted = trio.Event()
        self.resumed = trio.Event()
        self.resumed.set()
        self.shutdown_wanted = False
        self.close_wanted = False
        self.write_shut = False
        self.finished = False

    async def run(self) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)

    # ------------------------------------------------------------------------------------------ reading

    async def _reader(self) -> None:
        while not self.finished:
            await self.resumed.wait()
            try:
                await trio.lowlevel.wait_readable(self.sock)
            except (trio.ClosedResourceError, OSError):
                return
            if self.finished or not self.resumed.is_set():
                continue
            try:
                data = self.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self._failed()
                return
            session = self.fwd.session()
            if not data:
                if session is not None:
                    session.flow_eof(self.flow_id)
                    self.fwd.kick()
                return  # half-closed by the local peer: the other direction keeps flowing via the writer
            if session is not None:
                session.flow_data(self.flow_id, data)
                self.fwd.kick()

    # ------------------------------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        if self.finished or self.write_shut:
            return
        self.pending += data
        self._write_now()
        self._report_pending()
        if self.pending:
            self.write_wanted.set()

    def _write_now(self) -> bool:
        """Write what the socket takes without waiting; False if the socket failed (already reported)."""
        while self.pending:
            try:
                n = self.sock.send(self.pending[:WRITE_CHUNK])
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._failed()
                return False
            del self.pending[:n]
        self._after_drained()
        return True

    def _after_drained(self) -> None:
        if self.pending or self.finished:
            return
        if self.close_wanted:
            self.fwd.forget_tcp(self, reset=False)
        elif self.shutdown_wanted and not self.write_shut:
            self.write_shut = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    async def _writer(self) -> None:
        while not self.finished:
            await self.write_wanted.wait()
            self.write_wanted = trio.Event()
            while self.pending and not self.finished:
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except (trio.ClosedResourceError, OSError):
                    return
                if not self._write_now():
                    return
                self._report_pending()

    def _report_pending(self) -> None:
        session = self.fwd.session()
        if session is not None and not self.finished:
            session.flow_write_pending(self.flow_id, len(self.pending))
            self.fwd.kick()

    # ------------------------------------------------------------------------------------------ commands

    def shutdown_write(self) -> None:
        self.shutdown_wanted = True
        self._after_drained()

    def close(self) -> None:
        self.close_wanted = True
        self._after_drained()

    def pause(self) -> None:
        if self.resumed.is_set():
            self.resumed = trio.Event()

    def resume(self) -> None:
        self.resumed.set()

    def _failed(self) -> None:
        """The local socket broke (reset, broken pipe): the session resets the stream; we drop the socket."""
        if self.finished:
            return
        self.fwd.forget_tcp(self, reset=True)
        session = self.fwd.session()
        if session is not None:
            session.flow_reset(self.flow_id)
            self.fwd.kick()

    def release(self, *, abort: bool) -> None:
        """Stop both tasks and close the socket; with ``abort`` send RST (SO_LINGER 0) and drop unwritten bytes."""
        if self.finished:
            return
        self.finished = True
        self.scope.cancel()
        if abort:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        close_socket(self.sock)


class LocalForwarder:
    """Carries out forwarding events on trio-waited sockets and reports back to the session."""

    def __init__(self, session: Callable[[], Any], kick: Callable[[], None],
                 now: Callable[[], float] = trio.current_time) -> None:
        self.nursery: trio.Nursery | None = None
        self.session = session
        self.kick = kick
        #: The driver's clock (monotonic past timers it fired early), so the session never sees time go back.
        self.now = now
        self.tcp: dict[int, _TcpFlow] = {}
        self.dials: dict[int, trio.CancelScope] = {}
        self.udp_flows: dict[int, tuple[socket.socket, trio.CancelScope]] = {}
        self.udp_listener: socket.socket | None = None
        self.tcp_listener: socket.socket | None = None
        self._closed = False


    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of every local task, so ``close`` can cancel them all at once."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.nursery is not None and not self._closed:
            self.nursery.start_soon(fn, *args)

    # ------------------------------------------------------------------------------------- client listeners

    def listen_tcp(self, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.tcp_listener = sock
        self._spawn(self._accept_loop, sock)
        name = sock.getsockname()
        return (name[0], name[1])

    async def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                await trio.lowlevel.wait_readable(listener)
            except (trio.ClosedResourceError, OSError):
                return
            for _ in range(64):
                try:
                    conn, _peer = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if listener.fileno() == -1:
                        return
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        await trio.sleep(0.1)  # out of descriptors: back off instead of spinning
                    break
                self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        session = self.session()
        if session is None:
            conn.close()
            return
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flow_id = session.open_tcp(self.now())
        self._start_flow(flow_id, conn)
        self.kick()

    def _start_flow(self, flow_id: int, sock: socket.socket) -> None:
        flow = _TcpFlow(self, flow_id, sock)
        self.tcp[flow_id] = flow
        self._spawn(flow.run)

    def listen_udp(self, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.udp_listener = sock
        self._spawn(self._udp_listener_loop, sock)
        name = sock.getsockname()
        return (name[0], name[1])

    async def _udp_listener_loop(self, sock: socket.socket) -> None:
        while not self._closed:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return
            session = self.session()
            now = self.now()
            for _ in range(DRAIN_LIMIT):
                try:
                    data, peer = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if sock.fileno() == -1:
                        return
                    continue
                if session is not None:
                    session.udp_received((peer[0], peer[1]), data, now)
            self.kick()
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------------------------- events

    def handle(self, ev: Any) -> None:
        if isinstance(ev, fe.SendTcp):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None:
                flow.write(ev.data)
        elif isinstance(ev, fe.ShutdownTcpWrite):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None:
                flow.shutdown_write()
        elif isinstance(ev, fe.CloseTcp):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None:
                flow.close()
        elif isinstance(ev, fe.AbortTcp):
            dial = self.dials.pop(ev.flow_id, None)
            if dial is not None:
                dial.cancel()
            flow = self.tcp.pop(ev.flow_id, None)
            if flow is not None:
                flow.release(abort=True)
        elif isinstance(ev, fe.PauseReading):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None:
                flow.pause()
        elif isinstance(ev, fe.ResumeReading):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None:
                flow.resume()
        elif isinstance(ev, fe.DialTcp):
            scope = trio.CancelScope()
            self.dials[ev.flow_id] = scope
            self._spawn(self._dial, ev.flow_id, list(ev.addresses), scope)
        elif isinstance(ev, fe.OpenUdp):
            self._open_udp(ev.flow_id, list(ev.addresses))
        elif isinstance(ev, fe.SendUdp):
            entry = self.udp_flows.get(ev.flow_id)
            if entry is not None:
                with contextlib.suppress(OSError):
                    entry[0].send(ev.data)
        elif isinstance(ev, fe.SendUdpTo):
            if self.udp_listener is not None:
                with contextlib.suppress(OSError):
                    self.udp_listener.sendto(ev.data, ev.peer)
        elif isinstance(ev, fe.CloseUdp):
            entry = self.udp_flows.pop(ev.flow_id, None)
            if entry is not None:
                entry[1].cancel()
                close_socket(entry[0])

    def forget_tcp(self, flow: _TcpFlow, *, reset: bool) -> None:
        if self.tcp.get(flow.flow_id) is flow:
            del self.tcp[flow.flow_id]
        flow.release(abort=reset)

    # ------------------------------------------------------------------------------------- server side

    async def _dial(self, flow_id: int, addresses: Sequence[Address], scope: trio.CancelScope) -> None:
        """Staggered parallel attempts (happy eyeballs) over exactly the addresses the policy checked."""
        winner: list[socket.socket] = []
        with scope:
            async with trio.open_nursery() as nursery:
                for addr in addresses:
                    failed = trio.Event()
                    nursery.start_soon(self._connect_one, addr, failed, winner, nursery.cancel_scope)
                    with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                        await failed.wait()  # a quick failure starts the next attempt early
                    if winner:
                        break
        if self.dials.get(flow_id) is scope:
            del self.dials[flow_id]
        session = self.session()
        if scope.cancelled_caught and not winner:
            return  # AbortTcp while dialling: the session already forgot the flow
        if not winner:
            if session is not None:
                session.flow_connect_failed(flow_id)
                self.kick()
            return
        sock = winner[0]
        if session is None or self._closed:
            sock.close()
            return
        self._start_flow(flow_id, sock)
        session.flow_connected(flow_id)
        self.kick()

    async def _connect_one(
        self, addr: Address, failed: trio.Event, winner: list[socket.socket], race: trio.CancelScope
    ) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        won = False
        try:
            with trio.move_on_after(CONNECT_TIMEOUT):
                err = sock.connect_ex(addr)
                if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                    await trio.lowlevel.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0 and not winner:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    winner.append(sock)
                    won = True
                    race.cancel()
        finally:
            if not won:
                close_socket(sock)
                failed.set()

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
        scope = trio.CancelScope()
        self.udp_flows[flow_id] = (sock, scope)
        self._spawn(self._udp_flow_loop, flow_id, sock, scope)

    async def _udp_flow_loop(self, flow_id: int, sock: socket.socket, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    return
                session = self.session()
                t = self.now()
                for _ in range(DRAIN_LIMIT):
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        if sock.fileno() == -1:
                            return
                        continue  # ICMP port unreachable from the target: UDP carries on
                    if session is not None:
                        session.udp_reply(flow_id, data, t)
                self.kick()
                await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()
        for scope in self.dials.values():
            scope.cancel()
        self.dials.clear()
        for flow in list(self.tcp.values()):
            flow.release(abort=True)
        self.tcp.clear()
        for sock, scope in self.udp_flows.values():
            scope.cancel()
            close_socket(sock)
        self.udp_flows.clear()
        for listener in (self.udp_listener, self.tcp_listener):
            if listener is not None:
                close_socket(listener)
        self.udp_listener = None
        self.tcp_listener = None

