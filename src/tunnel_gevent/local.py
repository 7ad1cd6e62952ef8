"""Local sockets of a tunnel on gevent: what the forwarding session's commands mean on this runtime.

The session decides; this module only carries out its events (dial, write, half-close, pause) and reports what the
local sockets did (data, EOF, reset, bytes still unwritten). Every report is followed by one coalesced flush of the
machine (``kick``).

TCP connections are gevent sockets used in gevent's blocking style - a reader greenlet and a writer greenlet each -
because closing a gevent socket wakes whichever greenlet waits on it. The writer keeps an explicit queue so the
session learns how many delivered bytes are still unwritten (that is what returns flow-control credit to QUIC) and
so ``shutdown(SHUT_WR)`` happens after exactly the queued bytes. Event handlers never block: they queue and wake.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
from gevent import socket

from tunnel_core.forwarding import events as fe
from tunnel_core.types import Address
from tunnel_gevent.driver import DRAIN_LIMIT, Watched, now

log = logging.getLogger("tunnel")

HAPPY_EYEBALLS_DELAY = 0.25
CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536
WRITE_CHUNK = 256 * 1024


class _TcpFlow:
    """One local TCP connection bound to one QUIC stream."""

    def __init__(self, fwd: LocalForwarder, flow_id: int, sock: socket.socket) -> None:
        self.fwd = fwd
        self.flow_id = flow_id
        self.sock = sock
        sock.settimeout(None)  # gevent-blocking: greenlets park, the hub runs
        self.pending = bytearray()
        self.write_wanted = gevent.event.Event()
        self.resumed = gevent.event.Event()
        self.resumed.set()
        self.shutdown_wanted = False
        self.close_wanted = False
        self.write_shut = False
        self.finished = False
        self.greenlets = [gevent.spawn(self._reader), gevent.spawn(self._writer)]

    # ------------------------------------------------------------------------------------------ reading

    def _reader(self) -> None:
        while not self.finished:
            self.resumed.wait()
            if self.finished:
                return
            try:
                data = self.sock.recv(READ_SIZE)
            except OSError:
                if not self.finished:
                    self._failed()
                return
            if self.finished:
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
            # gevent's recv returns without switching while the socket holds data, so without this a local sender
            # faster than one loop turn per chunk keeps this greenlet running: the flush that carries PauseReading
            # (and sends QUIC) never runs, the stream's send buffer grows without bound and the tunnel stalls.
            # idle() lets the flush and the UDP readers run first; a pause then stops the next read.
            gevent.idle()

    # ------------------------------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        if self.finished or self.write_shut:
            return
        self.pending += data
        self._report_pending()
        self.write_wanted.set()

    def _writer(self) -> None:
        while not self.finished:
            self.write_wanted.wait()
            self.write_wanted.clear()
            while self.pending and not self.finished:
                try:
                    n = self.sock.send(self.pending[:WRITE_CHUNK])
                except OSError:
                    if not self.finished:
                        self._failed()
                    return
                del self.pending[:n]
                self._report_pending()
            self._after_drained()

    def _after_drained(self) -> None:
        if self.pending or self.finished:
            return
        if self.close_wanted:
            self.fwd.forget_tcp(self, reset=False)
        elif self.shutdown_wanted and not self.write_shut:
            self.write_shut = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def _report_pending(self) -> None:
        session = self.fwd.session()
        if session is not None and not self.finished:
            session.flow_write_pending(self.flow_id, len(self.pending))
            self.fwd.kick()

    # ------------------------------------------------------------------------------------------ commands

    def shutdown_write(self) -> None:
        self.shutdown_wanted = True
        self.write_wanted.set()  # the writer applies it after the queue (or at once when it is empty)

    def close(self) -> None:
        self.close_wanted = True
        self.write_wanted.set()

    def pause(self) -> None:
        self.resumed.clear()

    def resume(self) -> None:
        self.resumed.set()

    def _failed(self) -> None:
        if self.finished:
            return
        self.fwd.forget_tcp(self, reset=True)
        session = self.fwd.session()
        if session is not None:
            session.flow_reset(self.flow_id)
            self.fwd.kick()

    def release(self, *, abort: bool) -> None:
        """Close the socket (waking both greenlets); with ``abort`` send RST and drop unwritten bytes."""
        if self.finished:
            return
        self.finished = True
        self.resumed.set()
        self.write_wanted.set()
        if abort:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class LocalForwarder:
    """Carries out forwarding events on gevent sockets and reports back to the session."""

    def __init__(self, session: Callable[[], Any], kick: Callable[[], None],
                 now: Callable[[], float] = now) -> None:
        self.session = session
        self.kick = kick
        #: The driver's clock (monotonic past timers it fired early), so the session never sees time go back.
        self.now = now
        self.tcp: dict[int, _TcpFlow] = {}
        self.dials: dict[int, gevent.Greenlet] = {}
        self.udp_flows: dict[int, Watched] = {}
        self.udp_listener: Watched | None = None
        self.tcp_listener: Watched | None = None
        self._greenlets: set[gevent.Greenlet] = set()
        self._closed = False

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        g = gevent.spawn(fn, *args)
        self._greenlets.add(g)
        g.link(self._greenlets.discard)
        return g

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
        self.tcp_listener = Watched(sock)
        self._spawn(self._accept_loop, self.tcp_listener)
        name = sock.getsockname()
        return (name[0], name[1])

    def _accept_loop(self, listener: Watched) -> None:
        while not self._closed and listener.wait_readable():
            for _ in range(64):
                try:
                    conn, _peer = listener.sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if listener.closed:
                        return
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        gevent.sleep(0.1)  # out of descriptors: back off instead of spinning
                    break
                self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        session = self.session()
        if session is None:
            conn.close()
            return
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flow_id = session.open_tcp(self.now())
        self.tcp[flow_id] = _TcpFlow(self, flow_id, conn)
        self.kick()

    def listen_udp(self, host: str, port: int) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.udp_listener = Watched(sock)
        self._spawn(self._udp_listener_loop, self.udp_listener)
        name = sock.getsockname()
        return (name[0], name[1])

    def _udp_listener_loop(self, watched: Watched) -> None:
        while not self._closed and watched.wait_readable():
            session = self.session()
            t = self.now()
            for _ in range(DRAIN_LIMIT):
                try:
                    data, peer = watched.sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if watched.closed:
                        return
                    continue
                if session is not None:
                    session.udp_received((peer[0], peer[1]), data, t)
            self.kick()
            gevent.idle()

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
                dial.kill(block=False)
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
            self.dials[ev.flow_id] = self._spawn(self._dial, ev.flow_id, list(ev.addresses))
        elif isinstance(ev, fe.OpenUdp):
            self._open_udp(ev.flow_id, list(ev.addresses))
        elif isinstance(ev, fe.SendUdp):
            watched = self.udp_flows.get(ev.flow_id)
            if watched is not None:
                with contextlib.suppress(OSError):
                    watched.sock.send(ev.data)
        elif isinstance(ev, fe.SendUdpTo):
            if self.udp_listener is not None:
                with contextlib.suppress(OSError):
                    self.udp_listener.sock.sendto(ev.data, ev.peer)
        elif isinstance(ev, fe.CloseUdp):
            watched = self.udp_flows.pop(ev.flow_id, None)
            if watched is not None:
                watched.close()

    def forget_tcp(self, flow: _TcpFlow, *, reset: bool) -> None:
        if self.tcp.get(flow.flow_id) is flow:
            del self.tcp[flow.flow_id]
        flow.release(abort=reset)

    # ------------------------------------------------------------------------------------- server side

    def _dial(self, flow_id: int, addresses: Sequence[Address]) -> None:
        """Staggered parallel attempts (happy eyeballs) over exactly the addresses the policy checked."""
        winner: list[socket.socket] = []
        won = gevent.event.Event()
        attempts: list[tuple[gevent.Greenlet, gevent.event.Event]] = []
        try:
            for addr in addresses:
                failed = gevent.event.Event()
                attempts.append((gevent.spawn(self._connect_one, addr, failed, winner, won), failed))
                gevent.wait([failed, won], timeout=HAPPY_EYEBALLS_DELAY, count=1)
                if winner:
                    break
            while not winner:
                open_attempts = [failed for _g, failed in attempts if not failed.is_set()]
                if not open_attempts:
                    break
                gevent.wait([won, *open_attempts], count=1)
        finally:
            gevent.killall([g for g, _f in attempts], block=False)
        if self.dials.get(flow_id) is gevent.getcurrent():
            del self.dials[flow_id]
        session = self.session()
        if not winner:
            if session is not None:
                session.flow_connect_failed(flow_id)
                self.kick()
            return
        sock = winner[0]
        if session is None or self._closed:
            sock.close()
            return
        self.tcp[flow_id] = _TcpFlow(self, flow_id, sock)
        session.flow_connected(flow_id)
        self.kick()

    @staticmethod
    def _connect_one(
        addr: Address, failed: gevent.event.Event, winner: list[socket.socket], won: gevent.event.Event
    ) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        kept = False
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(addr)
            if not winner:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                winner.append(sock)
                kept = True
                won.set()
        except OSError:
            pass
        finally:
            if not kept:
                sock.close()
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
        watched = Watched(sock)
        self.udp_flows[flow_id] = watched
        self._spawn(self._udp_flow_loop, flow_id, watched)

    def _udp_flow_loop(self, flow_id: int, watched: Watched) -> None:
        while not self._closed and watched.wait_readable():
            session = self.session()
            t = self.now()
            for _ in range(DRAIN_LIMIT):
                try:
                    data = watched.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if watched.closed:
                        return
                    continue  # ICMP port unreachable from the target: UDP carries on
                if session is not None:
                    session.udp_reply(flow_id, data, t)
            self.kick()
            gevent.idle()

    # ------------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for dial in self.dials.values():
            dial.kill(block=False)
        self.dials.clear()
        for flow in list(self.tcp.values()):
            flow.release(abort=True)
        self.tcp.clear()
        for watched in [*self.udp_flows.values(), self.udp_listener, self.tcp_listener]:
            if watched is not None:
                watched.close()
        self.udp_flows.clear()
        self.udp_listener = None
        self.tcp_listener = None
        current = gevent.getcurrent()
        gevent.killall([g for g in self._greenlets if g is not current], block=False)
