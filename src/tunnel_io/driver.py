"""The one adapter shape, written once: wait readable, drain, feed the Peer, flush once, re-arm one timer.

Why drain a socket and flush once per batch and not transmit per datagram (aioquic's own asyncio protocol does the
latter): aioquic wants to be told about a whole batch before it is asked what to send, which halves the send calls
(python-stack.md 1.2). Why the machine's timer is one slot re-armed in place: the machine only ever has one next
deadline (``get_timer()``), and re-arming happens on nearly every flush.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from tunnel_core.types import Address
from tunnel_io.cctrace import CcTrace
from tunnel_io.reactor import Reactor, Timer, Watch
from tunnel_udp import Batcher

log = logging.getLogger("tunnel_io.driver")

#: Every driver fires a timer closer than this at once, as if due: the runtime's timer granularity would otherwise
#: throttle aioquic's pacer. It stays well below aioquic's 1 ms ACK delay, so the delayed ACK keeps batching: fired
#: early, it would go out as an ACK-only packet after nearly every request/response exchange instead of one per
#: ~4 round trips (aioquic writes an ACK only once it is due, never early on a data packet).
TIMER_SLACK = 0.0005
#: TUNNEL_UDP_GSO=1 sends runs of datagrams as UDP GSO batches (tunnel_udp). Off by default until a quiet WAN-lab run
#: shows it pays (docs/congestion.md); its first version lost 16 % of an iperf3 UDP test, which no longer reproduces.
GSO_ENV = "TUNNEL_UDP_GSO"
#: TUNNEL_UDP_GRO=1 reads the tunnel's UDP sockets with UDP GRO (tunnel_udp): one recvmsg returns a whole batch of
#: datagrams from one sender, split here. Off by default, like GSO_ENV (docs/congestion.md).
GRO_ENV = "TUNNEL_UDP_GRO"
#: Datagrams read per wake-up before flushing, so one busy socket cannot starve the timer and the others.
DRAIN_LIMIT = 256
#: Event/send rounds per flush before the rest is left to the next loop turn.
FLUSH_ROUNDS = 16
#: Errors that mean "this path does not work right now" rather than "the program is broken" (upstream ignores them).
TRANSIENT_SEND_ERRORS = frozenset({
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED, errno.EADDRNOTAVAIL,
    errno.EINVAL, errno.EPERM, errno.EAFNOSUPPORT,
})


def drain(sock: Any, deliver: Callable[[bytes, Any], None]) -> bool:
    """Read at most DRAIN_LIMIT datagrams from ``sock`` into ``deliver(data, remote)``; False if the socket was
    closed meanwhile. Errors on one datagram skip it: ICMP errors (ECONNREFUSED, port unreachable) surface here on
    Linux and say nothing the core or a UDP flow needs."""
    for _ in range(DRAIN_LIMIT):
        try:
            data, remote = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            if sock.fileno() == -1:
                return False
            continue
        deliver(data, remote)
    return True


def drain_batches(batcher: Batcher, deliver: Callable[[bytes, Any], None]) -> bool:
    """As :func:`drain`, reading with UDP GRO: each receive call may return a batch of datagrams (DRAIN_LIMIT counts
    calls, so one wake-up may hand the machine up to DRAIN_LIMIT x 64 datagrams - still one flush)."""
    sock = batcher.sock
    for _ in range(DRAIN_LIMIT):
        try:
            batch = batcher.recv()
        except InterruptedError:
            return True
        except OSError:
            if sock.fileno() == -1:
                return False
            continue
        if not batch:
            return True
        for data, remote in batch:
            deliver(data, remote)
    return True


class PeerDriver:
    """Drives one sans-IO machine (a Peer) over a set of non-blocking UDP sockets keyed by their local address."""

    def __init__(
        self, reactor: Reactor, machine: Any, sockets: dict[Address, Any], on_event: Callable[[Any], None],
        on_events_done: Callable[[], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.machine = machine
        self.on_event = on_event
        #: called after each batch of events was handed to ``on_event`` (local writes are sent then, batched)
        self.on_events_done = on_events_done
        self.sockets: dict[Address, Any] = {}
        self._watches: dict[Address, Watch] = {}
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        #: Bumped on every re-arm; a fire-now callback from an older arm finds it changed and does nothing.
        self._arm = 0
        #: Never hand the machine a time before a timer we fired early (see _on_timer).
        self._floor = -1e18
        self._flushing = False
        self._flush_queued = False
        self._closed = False
        #: called after a send failed with a TRANSIENT_SEND_ERRORS error (tunnel_io.roaming looks at the addresses)
        self.on_send_error: Callable[[], None] | None = None
        #: TUNNEL_CC_TRACE (tunnel_io.cctrace): off, and free, unless the environment asks for it
        self._trace = CcTrace.from_environment()
        #: UDP GSO per socket (tunnel_udp.Batcher) when TUNNEL_UDP_GSO=1 (see GSO_ENV)
        self._gso = os.environ.get(GSO_ENV, "0") == "1"
        #: UDP GRO on every socket when TUNNEL_UDP_GRO=1 (see GRO_ENV)
        self._gro = os.environ.get(GRO_ENV, "0") == "1"
        self._batchers: dict[Address, Batcher] = {}
        for addr, sock in sockets.items():
            self.add_socket(addr, sock)

    def add_socket(self, addr: Address, sock: Any) -> None:
        """Drive one more socket (at start, or when roaming bound one on a new address)."""
        self.sockets[addr] = sock
        if self._gro:
            batcher = Batcher(sock, gso=None if self._gso else False)
            if batcher.gro:
                self._batchers[addr] = batcher
        watch = self.reactor.watch(sock, self._readable(addr, sock), _never)
        watch.want(read=True, write=False)
        self._watches[addr] = watch

    def remove_socket(self, addr: Address) -> None:
        """Stop driving the socket at ``addr`` and close it (its address left the machine)."""
        self.sockets.pop(addr, None)
        self._batchers.pop(addr, None)
        watch = self._watches.pop(addr, None)
        if watch is not None:
            watch.close()  # closes the socket too

    def now(self) -> float:
        """The reactor's clock, but never behind a timer fired early: machines need monotonic time."""
        t = self.reactor.time()
        return t if t > self._floor else self._floor

    # ---------------------------------------------------------------------------------------- the shape

    def _readable(self, addr: Address, sock: Any) -> Callable[[], None]:
        receive = self.machine.receive_datagram

        def on_readable() -> None:
            if self._closed:
                return
            if self._trace is not None:
                self._trace.counts["reads"] += 1
            # Each datagram is stamped when it is read, not when the drain began: a process descheduled in the
            # middle of a drain (a busy host) would otherwise date late ACKs early, and every such RTT sample is
            # short by the stall - measured: min_rtt 18 ms on a 50 ms path, and a BBR window sized on it.
            now = self.now

            def deliver(data: bytes, remote: Any) -> None:
                receive(data, addr, (remote[0], remote[1]), now())

            if self._trace is not None:
                deliver = self._trace.counting(deliver)
            batcher = self._batchers.get(addr)
            calls_before = batcher.recv_calls if batcher is not None else 0
            if batcher is not None and batcher.gro:
                done = drain_batches(batcher, deliver)
                if self._trace is not None:
                    self._trace.counts["recv_calls"] += batcher.recv_calls - calls_before
            else:
                done = drain(sock, deliver)
            if done:
                self.flush()

        return on_readable

    def kick_now(self) -> None:
        """Flush at once for input from a local socket, unless a flush is running (it absorbs the kick) or queued.

        Why not schedule_flush: one more loop turn between a local read and the datagram that carries it costs
        about 25 µs of round-trip latency per tunnel process (benchmarks/README.md). Bulk reads are large, so
        flushing per read does not shrink packets.
        """
        if not self._flushing and not self._flush_queued and not self._closed:
            self.flush()

    def schedule_flush(self) -> None:
        """Coalesce many inputs into one flush on the next loop turn."""
        if not self._flush_queued and not self._closed:
            self._flush_queued = True
            self.reactor.call_soon(self._queued_flush)

    def _queued_flush(self) -> None:
        self._flush_queued = False
        self.flush()

    def flush(self) -> None:
        """Hand every pending event to the adapter, then send everything the machine has, once.

        Event handlers may feed the machine (local data, credit), so the pair repeats only while handlers ran: in
        the common case datagrams_to_send is called exactly once per flush. Kicks from those handlers are absorbed.
        """
        if self._closed or self._flushing:
            return
        self._flushing = True
        try:
            handled = self._drain_events()
            for _ in range(FLUSH_ROUNDS):
                self._send(self.machine.datagrams_to_send(self.now()))
                handled = self._drain_events()
                if not handled:
                    break
        finally:
            self._flushing = False
        if self._trace is not None:
            self._trace.counts["flushes"] += 1
            self._trace.sample(self.machine, self.now())
        if handled:
            self.schedule_flush()  # the bound was reached: carry on in the next loop turn
        self._rearm()

    def _drain_events(self) -> int:
        handled = 0
        while not self._closed:
            ev = self.machine.next_event()
            if ev is None:
                break
            self.on_event(ev)
            handled += 1
        if handled and self.on_events_done is not None:
            self.on_events_done()
        return handled

    def _send(self, transmits: list[Any]) -> None:
        """Send in order; a run of datagrams from one socket to one address goes out as UDP GSO batches.

        Why: a bulk flush is one such run (aioquic fills every 1-RTT datagram to max_datagram_size while stream data
        lasts), and one sendmsg per up to 64 datagrams replaces as many sendto calls (docs/congestion.md). Where
        the kernel or device has no GSO, tunnel_udp falls back to one sendto per datagram by itself.
        """
        i, n = 0, len(transmits)
        while i < n:
            t = transmits[i]
            j = i + 1
            while j < n and transmits[j].local == t.local and transmits[j].remote == t.remote:
                j += 1
            sock = self.sockets.get(t.local)
            if sock is not None:
                self._send_run(t.local, sock, [x.data for x in transmits[i:j]], t.remote)
            i = j

    def _send_run(self, local: Address, sock: Any, datagrams: list[bytes], remote: Any) -> None:
        trace = self._trace
        try:
            if len(datagrams) == 1 or not self._gso:
                sent = 0
                for data in datagrams:
                    try:
                        sock.sendto(data, remote)
                        sent += 1
                    except (BlockingIOError, InterruptedError):
                        pass  # QUIC and STUN both retransmit
            else:
                batcher = self._batchers.get(local)
                if batcher is None:
                    batcher = self._batchers[local] = Batcher(sock, gro=self._gro)
                sent = batcher.send(datagrams, remote)
        except OSError as exc:
            if exc.errno not in TRANSIENT_SEND_ERRORS:
                log.debug("send from %s to %s failed: %s", local, remote, exc)
            elif self.on_send_error is not None:
                self.on_send_error()
            return
        if trace is not None:
            trace.counts["sent"] += sent
            trace.counts["refused"] += len(datagrams) - sent

    def _rearm(self) -> None:
        if self._closed:
            return
        when = self.machine.get_timer()
        if when == self._timer_at and (self._timer is not None or when is None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        self._arm += 1
        if when is None:
            return
        # Against the reactor's clock, not now(): now() may already stand at the floor of a timer fired early, and
        # measured from there a chain of timers each "less than TIMER_SLACK away" moves the floor ahead of real time
        # without bound. It did: the machine's clock ran ahead under bulk load, packets were stamped in the future
        # and paced faster than the pacing rate, and RTT samples came out shorter than the path (41 ms on a 50 ms
        # path in the WAN lab), so bbr's min_rtt and bandwidth were both wrong.
        if when - self.reactor.time() < TIMER_SLACK:
            arm = self._arm
            self.reactor.call_soon(lambda: self._on_timer(arm))
            self._timer = _SOON
        else:
            self._timer = self.reactor.call_at(when, self._on_timer_at)

    def _on_timer_at(self) -> None:
        self._on_timer(self._arm)

    def _on_timer(self, arm: int) -> None:
        if self._closed or arm != self._arm:
            return
        when = self._timer_at
        self._timer = None
        self._timer_at = None
        if when is not None and when > self._floor:
            # A timer less than TIMER_SLACK away fires now, as if its moment had come: waiting for it would cost a
            # loop wake-up, and handing the machine a time before it would leave it not due - a spin.
            self._floor = when
        if self._trace is not None:
            self._trace.counts["timers"] += 1
        self.machine.handle_timer(self.now())
        self.flush()

    # ---------------------------------------------------------------------------------------- lifetime

    def keep_only(self, keep: Address) -> None:
        """After nomination only the selected socket matters; the others are closed (upstream does the same)."""
        for addr in list(self.sockets):
            if addr != keep:
                del self.sockets[addr]
                self._batchers.pop(addr, None)
                self._watches.pop(addr).close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._trace is not None:
            self._trace.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
        self.sockets.clear()
        self._batchers.clear()


def _never() -> None:
    """The write callback of sockets that never arm writing."""


class _Soon:
    """Stands for a fire-now timer: cancelling it is done by bumping the arm counter."""

    def cancel(self) -> None:
        pass


_SOON = _Soon()
