"""Local sockets of a tunnel, written once: what the forwarding session's commands mean on a real machine.

The session decides; this module only carries out its events (dial, write, half-close, pause) and reports what the
local sockets did (data, EOF, reset, bytes still unwritten). Every report is followed by a kick of the driver, which
flushes at once unless a flush is running (it absorbs the kick).

Why raw non-blocking sockets and explicit write queues rather than each runtime's streams: the session needs to
know how many delivered bytes are still unwritten (that is what returns flow-control credit to QUIC), needs
``shutdown(SHUT_WR)`` after exactly the queued bytes, and pauses reading by disarming readiness, so the pause takes
effect before the next read on every runtime (gevent once needed its own fix for that).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from tunnel_core.forwarding import events as fe
from tunnel_core.reconnect import held_line, reset_line
from tunnel_core.socks5 import ConnectRequest, Socks5Server
from tunnel_core.socks5 import reply as socks5_reply
from tunnel_core.types import Address
from tunnel_io import unique_addresses
from tunnel_io.dial import HappyEyeballs
from tunnel_io.driver import drain
from tunnel_io.reactor import Reactor, Timer, Watch

log = logging.getLogger("tunnel_io.local")
#: SOCKS5 listener messages, shown at the default level.
socks_log = logging.getLogger("tunnel_io.socks")

#: Bytes read from a local TCP socket per wake-up: asyncio's own transports read 256 KiB (what the tunnel used before
#: tunnel_io). Every read is flushed at once, so each one ends in a part-filled QUIC packet: with 64 KiB reads a bulk
#: upload sent ~18 % more packets (and spent ~20 % more CPU per GiB, benchmarks/cpu_cost.py) than with 256 KiB.
#: Reads go into one reused buffer (``LocalForwarder.read_buffer``) and copy out what arrived: a fresh 256 KiB object
#: per read is above glibc's mmap threshold, and a 1-byte ping-pong read would pay for it.
READ_SIZE = 256 * 1024
#: Reads per readiness callback while each fills READ_SIZE (a bulk sender has more queued). One 64 kB read per loop
#: turn capped one connection at ~64 kB x loop turns per second - ~80 Mbit/s on a busy host while the QUIC side
#: spent each turn on ACKs and pacing (measured with tunnel_io.cctrace in the WAN lab). Interactive reads stay one.
READ_BURST = 4
#: Bytes written per send call; bounded so one flow's burst does not monopolise the loop.
WRITE_CHUNK = 256 * 1024
#: Connections accepted per wake-up.
ACCEPT_LIMIT = 64
#: Out of file descriptors: stop accepting for this long instead of spinning on EMFILE.
EMFILE_BACKOFF = 0.1
#: A SOCKS5 application that has not finished its handshake by then is dropped (it would hold a socket forever).
SOCKS_HANDSHAKE_TIMEOUT = 10.0


class TcpFlow:
    """One local TCP connection bound to one QUIC stream: a pending-bytes queue and one readiness watch."""

    def __init__(self, fwd: LocalForwarder, flow_id: int, sock: Any) -> None:
        self.fwd = fwd
        self.flow_id = flow_id
        self.sock = sock
        self.pending = bytearray()
        #: in the forwarder's ``unwritten`` list (write queued bytes; flush_writes sends them)
        self.queued = False
        self.paused = False
        self.read_eof = False
        self.shutdown_wanted = False
        self.close_wanted = False
        self.write_shut = False
        self.finished = False
        #: durable streams (docs/durable.md): the session's replay state for this connection, and whether it
        #: waits for the next tunnel (reading paused, writing on) with the timer that gives up on it
        self.stream: Any = None
        self.held = False
        self.hold_timer: Timer | None = None
        self.watch: Watch = fwd.reactor.watch(sock, self._on_readable, self._on_writable)
        self._armed = (True, False)
        self.watch.want(read=True, write=False)

    def _arm(self) -> None:
        wanted = (not self.paused and not self.read_eof, bool(self.pending))
        if wanted != self._armed and not self.finished:
            self._armed = wanted
            self.watch.want(read=wanted[0], write=wanted[1])

    # ------------------------------------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        buffer = self.fwd.read_buffer
        for _ in range(READ_BURST):
            if self.finished or self.paused or self.read_eof:
                return
            try:
                n = self.sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._failed()
                return
            data = bytes(buffer[:n])
            session = self.fwd.session()
            if not data:
                self.read_eof = True  # half-closed by the local peer: the other direction keeps flowing
                self._arm()
                if session is not None:
                    session.flow_eof(self.flow_id)
                    self.fwd.kick()
                return
            if session is not None:
                session.flow_data(self.flow_id, data)
                self.fwd.kick()
            if len(data) < READ_SIZE:
                return

    # ------------------------------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        """Queue ``data``; the forwarder sends it with everything else the same batch of events brought
        (:meth:`LocalForwarder.flush_writes`). Why: a bulk receiver gets one stream frame per ~1.3 KB datagram, and
        a send call per frame was the receiving process's largest cost (29 % of its samples, py-spy)."""
        if self.finished or self.write_shut:
            return
        if not self.queued:
            self.queued = True
            self.fwd.unwritten.append(self)
        self.pending += data

    def _on_writable(self) -> None:
        if self.finished:
            return
        if self._write_now():
            self._report_pending()
            self._arm()

    def flush(self) -> None:
        """Send what :meth:`write` queued, then tell the session how much is still unwritten (also when the
        socket is full: the session returns credit only for bytes the socket took)."""
        self.queued = False
        if not self.finished and self._write_now():
            self._report_pending()
            self._arm()

    def _write_now(self) -> bool:
        """Write what the socket takes without waiting; False if the flow ended (failed or closed after the queue)."""
        while self.pending:
            try:
                pending = self.pending
                n = self.sock.send(pending if len(pending) <= WRITE_CHUNK else pending[:WRITE_CHUNK])
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._failed()
                return False
            del self.pending[:n]
        self._after_drained()
        return not self.finished

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
        self._after_drained()

    def close(self) -> None:
        self.close_wanted = True
        self._after_drained()

    def pause(self) -> None:
        self.paused = True
        self._arm()

    def resume(self) -> None:
        self.paused = False
        self._arm()

    @property
    def resumable(self) -> bool:
        """A durable connection the next tunnel can continue (its replay state is intact)."""
        stream = self.stream
        return stream is not None and stream.key is not None and not stream.lost and not self.finished

    def hold(self, grace: float | None) -> None:
        """The tunnel is gone: stop reading (the bytes wait in the kernel, bounding memory), keep writing what is
        queued, wait for a new tunnel to continue; after ``grace`` seconds (None: no limit) give up with one line."""
        self.held = True
        self.pause()
        if grace is not None:
            reactor = self.fwd.reactor
            self.hold_timer = reactor.call_at(reactor.time() + grace, lambda: self._hold_expired(grace))

    def _hold_expired(self, grace: float) -> None:
        self.hold_timer = None
        if self.held and not self.finished:
            log.warning("%s", held_line(_peer_name(self.sock), grace))
            self.stream.lost = True
            self.release(abort=True)

    def adopt(self, fwd: LocalForwarder, flow_id: int) -> None:
        """A new tunnel continues this held connection as ``flow_id`` (it may come from another session's
        forwarder on a server)."""
        old = self.fwd
        if old.tcp.get(self.flow_id) is self:
            del old.tcp[self.flow_id]
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None
        self.fwd, self.flow_id, self.held = fwd, flow_id, False
        fwd.tcp[flow_id] = self
        if self.queued:
            fwd.unwritten.append(self)  # queued by a write the old forwarder may never flush
        self.resume()
        self._report_pending()

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
        """Stop watching and close the socket; with ``abort`` send RST (SO_LINGER 0) and drop unwritten bytes."""
        if self.finished:
            return
        self.finished = True
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None
        if abort:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.watch.close()


class _Datagrams:
    """A UDP socket whose datagrams are drained in bounded batches into ``deliver(data, peer, now)``."""

    def __init__(self, fwd: LocalForwarder, sock: Any, deliver: Callable[[bytes, Address, float], None]) -> None:
        self.fwd = fwd
        self.sock = sock
        self.deliver = deliver
        self.watch = fwd.reactor.watch(sock, self._on_readable, _nothing)
        self.watch.want(read=True, write=False)

    def _on_readable(self) -> None:
        now = self.fwd.now()
        deliver = self.deliver
        if drain(self.sock, lambda data, peer: deliver(data, (peer[0], peer[1]), now)):
            self.fwd.kick()

    def close(self) -> None:
        self.watch.close()


class LocalForwarder:
    """Carries out forwarding events on local sockets and reports back to the session (via ``session()``, which
    is None once the tunnel is gone)."""

    def __init__(
        self, reactor: Reactor, session: Callable[[], Any], kick: Callable[[], None], now: Callable[[], float]
    ) -> None:
        self.reactor = reactor
        self.session = session
        self.kick = kick
        #: The driver's clock (monotonic past timers it fired early), so the session never sees time go back.
        self.now = now
        self.tcp: dict[int, TcpFlow] = {}
        self.dials: dict[int, HappyEyeballs] = {}
        self.udp_flows: dict[int, _Datagrams] = {}
        #: Client listeners, by forward (route index): one per forward of the tunnel.
        self.udp_listeners: dict[int, _Datagrams] = {}
        self.tcp_listeners: dict[int, _Acceptor] = {}
        self.handshakes: set[_SocksHandshake] = set()  # SOCKS5 connections still negotiating
        #: Flows :meth:`TcpFlow.write` queued bytes for since the last :meth:`flush_writes`.
        self.unwritten: list[TcpFlow] = []
        #: Reused by every read of this forwarder's sockets (callbacks never overlap; each read copies out its bytes).
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._closed = False
        #: between ``detach`` and ``attach`` (a reconnect): new connections wait in the listen backlog
        self._held = False

    @property
    def held(self) -> bool:
        """Between ``detach`` and ``attach``: the listeners do not accept."""
        return self._held

    # ------------------------------------------------------------------------------------- client listeners

    def listen_tcp(self, host: str, port: int, forward: int = 0, *, held: bool = False) -> Address:
        """Listen for ``forward`` (its index in the session's routes; 0 for a one-forward tunnel). ``held``: accept
        only from ``attach`` on (a server's reverse forward, bound before the tunnel is up)."""
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
        self.tcp_listeners[forward] = _Acceptor(self, sock, forward)
        if held:
            self._held = True
            self.tcp_listeners[forward].hold()
        name = sock.getsockname()
        return (name[0], name[1])

    def listen_socks(self, host: str, port: int, forward: int, credentials: tuple[str, str] | None) -> Address:
        """A dynamic forward's SOCKS5 listener: each connection first speaks SOCKS5 (tunnel_core.socks5)."""
        bound = self.listen_tcp(host, port, forward)
        self.tcp_listeners[forward].socks = credentials or ()
        return bound

    def start_socks(self, conn: Any, forward: int, credentials: tuple[str, str] | tuple[()]) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.handshakes.add(_SocksHandshake(self, conn, forward, Socks5Server(credentials or None)))

    def socks_requested(self, conn: Any, forward: int, request: ConnectRequest, early: bytes) -> None:
        """The application's CONNECT: a dynamic flow; the SOCKS reply waits for the server's DynamicReply."""
        session = self.session()
        if session is None or self._closed:
            conn.close()
            return
        flow_id = session.open_dynamic(self.now(), forward, request.url())
        # Durable streams: tied now, resumable once the server accepted the target (the session gives the stream
        # its key then); a connection lost before that resets it with one line (``_let_go``).
        self.tcp[flow_id] = self._durable(session, TcpFlow(self, flow_id, conn))
        if early:
            session.flow_data(flow_id, early)
        self.kick()

    def accepted(self, conn: Any, forward: int) -> None:
        session = self.session()
        if session is None:
            conn.close()
            return
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flow_id = session.open_tcp(self.now(), forward) if forward else session.open_tcp(self.now())
        self.tcp[flow_id] = self._durable(session, TcpFlow(self, flow_id, conn))
        self.kick()

    def listen_udp(self, host: str, port: int, forward: int = 0) -> Address:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise

        def from_peer(data: bytes, peer: Address, now: float) -> None:
            session = self.session()
            if session is None:
                return
            if forward:
                session.udp_received(peer, data, now, forward)
            else:
                session.udp_received(peer, data, now)

        self.udp_listeners[forward] = _Datagrams(self, sock, from_peer)
        name = sock.getsockname()
        return (name[0], name[1])

    # ------------------------------------------------------------------------------------- events

    def flush_writes(self) -> None:
        """Send what this batch of events queued on local sockets: one send per connection per batch (the driver
        calls it after each batch of events, before it asks the machine what to send, so returned credit rides
        along)."""
        unwritten = self.unwritten
        while unwritten:
            self.unwritten = []
            for flow in unwritten:
                flow.flush()
            unwritten = self.unwritten

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
            self._dial(ev.flow_id, list(ev.addresses))
        elif isinstance(ev, fe.OpenUdp):
            self._open_udp(ev.flow_id, list(ev.addresses))
        elif isinstance(ev, fe.SendUdp):
            entry = self.udp_flows.get(ev.flow_id)
            if entry is not None:
                with contextlib.suppress(OSError):
                    entry.sock.send(ev.data)
        elif isinstance(ev, fe.SendUdpTo):
            listener = self.udp_listeners.get(ev.forward)
            if listener is not None:
                with contextlib.suppress(OSError):
                    listener.sock.sendto(ev.data, ev.peer)
        elif isinstance(ev, fe.CloseUdp):
            entry = self.udp_flows.pop(ev.flow_id, None)
            if entry is not None:
                entry.close()
        elif isinstance(ev, fe.ResolveTarget):
            self._resolve(ev.flow_id, ev.host, ev.port)
        elif isinstance(ev, fe.DynamicReply):
            flow = self.tcp.get(ev.flow_id)
            if flow is not None:
                flow.write(socks5_reply(ev.code))
                if ev.code:
                    flow.close()
        elif isinstance(ev, fe.ResumeTcp):
            self._resume(ev.flow_id, ev.stream)
        elif isinstance(ev, fe.DropTcp):
            held = ev.stream.local
            if isinstance(held, TcpFlow) and not held.finished:
                log.warning("%s", reset_line(_peer_name(held.sock), ev.reason))
                held.fwd.forget_tcp(held, reset=True)

    # ------------------------------------------------------------------------------------- durable streams

    @staticmethod
    def _durable(session: Any, flow: TcpFlow) -> TcpFlow:
        """Tie a new local connection to its durable stream, if the tunnel made it one."""
        stream = session.durable_stream(flow.flow_id) if hasattr(session, "durable_stream") else None
        if stream is not None:
            stream.local = flow
            flow.stream = stream
        return flow

    def _resume(self, flow_id: int, stream: Any) -> None:
        held = stream.local
        session = self.session()
        if not isinstance(held, TcpFlow) or held.finished:
            if session is not None:  # the local application left while we waited: end the stream the same way
                session.flow_reset(flow_id)
            return
        held.adopt(self, flow_id)

    def forget_tcp(self, flow: TcpFlow, *, reset: bool) -> None:
        if self.tcp.get(flow.flow_id) is flow:
            del self.tcp[flow.flow_id]
        flow.release(abort=reset)

    # ------------------------------------------------------------------------------------- server side

    def _dial(self, flow_id: int, addresses: Sequence[Address]) -> None:
        """Staggered parallel attempts (happy eyeballs) over exactly the addresses the policy checked."""

        def done(sock: Any) -> None:
            self.dials.pop(flow_id, None)
            session = self.session()
            if sock is None:
                if session is not None:
                    session.flow_connect_failed(flow_id)
                    self.kick()
                return
            if session is None or self._closed:
                sock.close()
                return
            self.tcp[flow_id] = flow = TcpFlow(self, flow_id, sock)
            session.flow_connected(flow_id)
            self._durable(session, flow)
            self.kick()

        self.dials[flow_id] = HappyEyeballs(self.reactor, addresses, done)

    def _resolve(self, flow_id: int, host: str, port: int) -> None:
        """A dynamic flow's target name, resolved here on the server (socks5h); the session checks the answer."""

        def done(ok: bool, value: Any) -> None:
            session = self.session()
            if session is None or self._closed:
                return
            session.flow_resolved(flow_id, unique_addresses(value) if ok else [])
            self.kick()

        self.reactor.run_blocking(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), done)

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

        def reply(data: bytes, _peer: Address, now: float) -> None:
            session = self.session()
            if session is not None:
                session.udp_reply(flow_id, data, now)

        self.udp_flows[flow_id] = _Datagrams(self, sock, reply)

    # ------------------------------------------------------------------------------------- lifetime

    def detach(self) -> None:
        """The tunnel is lost and a new one will be built (docs/reconnect.md): hold every durable local connection
        for the next tunnel (docs/durable.md), reset every other with one line each, drop UDP flows towards
        services, and let new connections wait in the listen backlog until ``attach``. The listeners stay bound."""
        for dial in self.dials.values():
            dial.cancel()
        self.dials.clear()
        self._let_go(None, say=True)
        for entry in self.udp_flows.values():
            entry.close()
        self.udp_flows.clear()
        self._held = True
        for acceptor in self.tcp_listeners.values():
            acceptor.hold()

    def attach(self) -> None:
        """A new tunnel is ready: accept again (connections that waited in the backlog come first)."""
        if not self._held:
            return
        self._held = False
        for acceptor in self.tcp_listeners.values():
            acceptor.release()

    def close(self, hold: float | None = None) -> None:
        """Release everything; with ``hold`` (a server whose client was lost), durable connections wait that many
        seconds for the client to come back (docs/durable.md)."""
        if self._closed:
            return
        self._closed = True
        for dial in self.dials.values():
            dial.cancel()
        self.dials.clear()
        if hold is not None:
            self._let_go(hold, say=False)
        for flow in list(self.tcp.values()):
            flow.release(abort=True)
        self.tcp.clear()
        for entry in self.udp_flows.values():
            entry.close()
        self.udp_flows.clear()
        for listener in self.udp_listeners.values():
            listener.close()
        self.udp_listeners.clear()
        for acceptor in self.tcp_listeners.values():
            acceptor.close()
        self.tcp_listeners.clear()
        for handshake in list(self.handshakes):
            handshake.close()


    def _let_go(self, grace: float | None, *, say: bool) -> None:
        """The tunnel is gone: durable connections are held for the next one, the others reset (``say``: with
        one line each)."""
        for flow in list(self.tcp.values()):
            if flow.resumable:
                flow.hold(grace)
                continue
            if say:
                log.warning("%s", reset_line(_peer_name(flow.sock)))
            flow.release(abort=True)
        self.tcp.clear()


class _Acceptor:
    """A client's listening TCP socket for one forward: accepts in bounded batches, backs off on EMFILE."""

    def __init__(self, fwd: LocalForwarder, sock: Any, forward: int) -> None:
        self.fwd = fwd
        self.sock = sock
        self.forward = forward
        #: A dynamic forward's credentials (() for none); None for a plain TCP forward.
        self.socks: tuple[str, str] | tuple[()] | None = None
        self.closed = False
        self.backoff: Timer | None = None
        self.watch: Watch = fwd.reactor.watch(sock, self._on_acceptable, _nothing)
        self.watch.want(read=True, write=False)

    def _on_acceptable(self) -> None:
        for _ in range(ACCEPT_LIMIT):
            if self.closed:
                return
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self.watch.want(read=False, write=False)  # back off instead of spinning
                    reactor = self.fwd.reactor
                    self.backoff = reactor.call_at(reactor.time() + EMFILE_BACKOFF, self._accept_again)
                return
            if self.socks is None:
                self.fwd.accepted(conn, self.forward)
            else:
                self.fwd.start_socks(conn, self.forward, self.socks)

    def _accept_again(self) -> None:
        self.backoff = None
        if not self.closed and not self.fwd.held:
            self.watch.want(read=True, write=False)

    def hold(self) -> None:
        """A reconnect: new connections wait in the listen backlog (LocalForwarder.detach)."""
        self.watch.want(read=False, write=False)

    def release(self) -> None:
        """The new tunnel is ready: accept again, unless backing off from EMFILE."""
        if not self.closed and self.backoff is None:
            self.watch.want(read=True, write=False)

    def close(self) -> None:
        self.closed = True
        if self.backoff is not None:
            self.backoff.cancel()
        self.watch.close()


class _SocksHandshake:
    """One application's SOCKS5 handshake on a dynamic forward's listener, before its flow exists."""

    def __init__(self, fwd: LocalForwarder, sock: Any, forward: int, machine: Socks5Server) -> None:
        self.fwd = fwd
        self.sock = sock
        self.forward = forward
        self.machine = machine
        self.watch: Watch = fwd.reactor.watch(sock, self._on_readable, _nothing)
        self.watch.want(read=True, write=False)
        self.timer = fwd.reactor.call_at(fwd.reactor.time() + SOCKS_HANDSHAKE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        socks_log.info("SOCKS5 connection dropped: no complete request within %.0f s", SOCKS_HANDSHAKE_TIMEOUT)
        self.close()

    def close(self) -> None:
        self.timer.cancel()
        self.fwd.handshakes.discard(self)
        self.watch.close()

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.machine.feed(data)
        out = self.machine.data_to_send()
        if out:
            try:
                self.sock.send(out)  # a few bytes into an empty send buffer
            except OSError:
                self.close()
                return
        if self.machine.failed:
            socks_log.info("SOCKS5 connection refused: %s", self.machine.error)
            self.close()
        elif self.machine.request is not None:
            self.timer.cancel()
            self.fwd.handshakes.discard(self)
            self.watch.want(read=False, write=False)  # the socket changes hands: the flow watches it from now on
            self.fwd.socks_requested(self.sock, self.forward, self.machine.request, self.machine.remainder)


def _nothing() -> None:
    pass


def _peer_name(sock: Any) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "a local client"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
