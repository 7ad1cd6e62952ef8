"""The interpreter of tunnel_core.dialogue and dialogue_nostr, written once, as a small callback machine.

A dialogue yields effects. Instant effects (print, bind, poke, publish, ...) are performed inline and their result is
sent straight back. A waiting effect (ReadBlock, Resolve, Wait, OpenRelays, NextMessage) becomes the one *pending*
state, resumed by whichever comes first of: its condition (a milestone of the peer, a relay change, a signal in the
inbox, a thread's result), its timeout, or ``stop()`` (then ``Stopped`` is thrown into the dialogue). Each runtime only
supplies the reactor and a shell that waits for ``on_done`` (see tunnel_<runtime>.runner).

The end of a run is always the same orderly close, also on failure: spawned sessions first (each closes its QUIC
connection), then the relays (CLOSE and close frames, ``RELAY_CLOSE_GRACE``), then our own tunnel
(CONNECTION_CLOSE 0 "done", up to ``CLOSE_GRACE`` for it to leave), then every socket is released.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tunnel_core import dialogue as dx
from tunnel_core import dialogue_nostr as fx
from tunnel_core.blocks import MAX_BLOCK_PAYLOAD, BlockReader
from tunnel_core.errors import ProtocolError
from tunnel_core.forwarding.durable import DurableRegistry, DurableStreams
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.peer import IceConnected, TunnelClosed, TunnelHeld, TunnelReady, TunnelResumed
from tunnel_core.types import Address
from tunnel_io import Console, PrefixConsole, bind_host_sockets, new_identity, unique_addresses
from tunnel_io.driver import PeerDriver
from tunnel_io.guard import GuardedReactor
from tunnel_io.local import LocalForwarder
from tunnel_io.nostr_relays import RelayConnections
from tunnel_io.reactor import Reactor, Timer
from tunnel_io.roaming import AddressWatch

log = logging.getLogger("tunnel_io.runner")

CLOSE_GRACE = 2.0
#: How long a server holds the durable connections of a client it lost (docs/durable.md): the client's default
#: reconnect budget, so a client that is still trying finds them.
DURABLE_GRACE = 300.0
#: Characters of stdin one pasted block may take in all, blank lines and line endings included: the payload limit
#: plus room for markers and wrapping. A longer line is refused without being read whole into memory.
MAX_BLOCK_INPUT = MAX_BLOCK_PAYLOAD + (64 << 10)
_TOO_LARGE = f"Manual payload too large (more than {MAX_BLOCK_PAYLOAD} characters)"
_NOT_YET = object()
_PENDING = object()


def _none() -> None:
    return None


def _ignore(_failure: BaseException | None) -> None:
    pass


def read_block(stdin: Any, kind: str) -> str:
    """Lines of ``stdin`` up to the END marker of one ``kind`` block; the lines as read.

    Bounded (issue 18): no line longer than the block limit is read whole (``readline(limit)`` on real streams),
    and blank or whitespace lines count towards the limit too, so neither a pasted 200 MB line without newline nor
    endless blank lines can grow the process. An embedder's object gets ``readline()`` without a limit, as
    documented, and is still cut off at the limit."""
    reader = BlockReader(kind)  # type: ignore[arg-type]
    limited = isinstance(stdin, io.IOBase)
    lines: list[str] = []
    used = 0
    try:
        while True:
            try:
                line = stdin.readline(MAX_BLOCK_INPUT - used + 1) if limited else stdin.readline()
            except (OSError, ValueError):
                line = ""  # a closed or broken stdin is the end of input
            if line == "":
                if not "".join(lines).strip():
                    raise dx.EndOfInput("Missing BEGIN marker", ExitCode.USAGE)
                reader.feed_eof()  # raises the reference's message (missing BEGIN / END marker)
                raise TunnelError("Missing BEGIN marker", ExitCode.USAGE)
            used += len(line)
            if used > MAX_BLOCK_INPUT:
                raise TunnelError(_TOO_LARGE, ExitCode.USAGE)
            lines.append(line)
            if reader.feed_line(line) is not None:
                return "".join(lines)
    except ProtocolError as exc:
        raise TunnelError(str(exc), ExitCode.USAGE) from None


class _Failure:
    """What a wait's ``check`` returns when the awaited thing failed: the error goes into the dialogue."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Pending:
    """The one waiting effect: ``check()`` returns its result or ``_NOT_YET``."""

    def __init__(self, check: Callable[[], Any], stoppable: bool = True) -> None:
        self.check = check
        self.stoppable = stoppable
        self.timer: Timer | None = None


class _Spare:
    """A tunnel built beside the running one (``dx.OnSpare``): its sockets, Peer, driver and milestones."""

    def __init__(self, sockets: dict[Address, Any]) -> None:
        self.sockets = sockets
        self.peer: Any = None
        self.driver: PeerDriver | None = None
        self.results: dict[str, Any] = {}


class DialogueRunner:
    """Runs one dialogue on ``reactor``; owns its sockets, the Peer's driver and the local forwarding.

    A child runner (``parent`` given) is a nostr server session: it shares the root's relays and signal inbox and
    is stopped whenever its parent is.
    """

    def __init__(
        self, reactor: Reactor, console: Console | None = None, *, parent: DialogueRunner | None = None
    ) -> None:
        #: every callback this runner (and what it drives) hands the runtime is guarded: an exception ends the run
        #: through _crash instead of leaving a half-dead process (tunnel_io.guard)
        self.reactor: Any = GuardedReactor(reactor, self._crash)
        self.console = console or Console()
        self.parent = parent
        self.root: DialogueRunner = parent.root if parent is not None else self
        self.sockets: dict[Address, Any] = {}
        self.peer: Any = None
        self.driver: PeerDriver | None = None
        self.local: LocalForwarder | None = None
        self.results: dict[str, Any] = {}
        self.inbox: deque[Any] = parent.inbox if parent is not None else deque()
        self.relays: RelayConnections | None = parent.relays if parent is not None else None
        self.children: set[DialogueRunner] = set()
        self.failure: BaseException | None = None
        self.finished = False
        self._dialogue: Any = None
        self._on_done: Callable[[BaseException | None], None] = _ignore
        self._pending: _Pending | None = None
        self._stopping = False
        self._closing = False
        self._close_timer: Timer | None = None
        self._close_step: Callable[[], None] | None = None
        #: the client's --host-candidate choice, for roaming (tunnel_io.roaming), and its watch while a tunnel runs
        self._wanted: tuple[str, ...] = ()
        self._watch: AddressWatch | None = None
        #: durable streams (docs/durable.md), on the root: a client's one session, a server's registry
        self.durable_streams: DurableStreams | None = None
        self.durable_registry: DurableRegistry | None = None
        #: manual mode's fresh paste (tunnel_core.repaste): the tunnel built beside the held one, and the stdin
        #: read still in flight (one at a time: a read the dialogue stopped waiting for goes on for the next one)
        self._spare: _Spare | None = None
        self._reading: list[Any] | None = None

    # ------------------------------------------------------------------------------------------ public

    def start(self, dialogue: Any, on_done: Callable[[BaseException | None], None]) -> None:
        """Begin ``dialogue``; ``on_done(failure or None)`` is called once, after the orderly close."""
        self._dialogue = dialogue
        self._on_done = on_done
        self.reactor.defer(lambda: self._advance(None, None))

    def stop(self) -> None:
        """End the dialogue at its current wait: Stopped is thrown into it, the tunnel closes with code 0 "done"."""
        if self._stopping:
            return
        self._stopping = True
        for child in list(self.children):
            child.stop()
        pending = self._pending
        if pending is not None and pending.stoppable:
            self._resume(pending, error=dx.Stopped())

    # ------------------------------------------------------------------------------------------ the machine

    def _advance(self, result: Any, error: BaseException | None) -> None:
        dialogue = self._dialogue
        while True:
            try:
                effect = dialogue.throw(error) if error is not None else dialogue.send(result)
            except (StopIteration, dx.Stopped):
                self._finish(None)
                return
            except ProtocolError as exc:
                self._finish(TunnelError(str(exc), ExitCode.USAGE))
                return
            except Exception as exc:
                self._finish(exc)
                return
            result, error = None, None
            try:
                result = self._perform(effect)
            except (dx.Stopped, OSError) as exc:
                error = exc
                continue
            except ProtocolError as exc:  # bad outside input met while performing (a pasted block cut short)
                self._finish(TunnelError(str(exc), ExitCode.USAGE))
                return
            except Exception as exc:
                self._finish(exc)
                return
            if result is _PENDING:
                return

    def _wait(self, check: Callable[[], Any], timeout: float | None = None, on_timeout: Callable[[], Any] = _none,
              *, stoppable: bool = True) -> Any:
        """Return the result at once if ``check`` has it; otherwise become the pending state."""
        if stoppable and self._stopping:
            raise dx.Stopped()
        value = check()
        if isinstance(value, _Failure):
            raise value.error
        if value is not _NOT_YET:
            return value
        pending = _Pending(check, stoppable)
        if timeout is not None:
            pending.timer = self.reactor.call_at(
                self.reactor.time() + timeout, lambda: self._resume(pending, on_timeout()))
        self._pending = pending
        return _PENDING

    def _poll(self) -> None:
        """Something changed (a milestone, a relay, the inbox): the pending wait may be over."""
        pending = self._pending
        if pending is not None:
            value = pending.check()
            if isinstance(value, _Failure):
                self._resume(pending, error=value.error)
            elif value is not _NOT_YET:
                self._resume(pending, value)

    def _resume(self, pending: _Pending, value: Any = None, error: BaseException | None = None) -> None:
        if self._pending is not pending:
            return
        self._pending = None
        if pending.timer is not None:
            pending.timer.cancel()
        self.reactor.defer(lambda: self._advance(value, error))

    # ------------------------------------------------------------------------------------------ effects

    def _perform(self, effect: Any) -> Any:
        if isinstance(effect, dx.Say):
            self.console.say(effect.text)
        elif isinstance(effect, dx.PrintBlock):
            self.console.block(effect.text)
        elif isinstance(effect, dx.ReadBlock):
            return self._read_block(effect.kind, effect.interrupt)
        elif isinstance(effect, dx.AskTerminal):
            isatty = getattr(self.console.stdin, "isatty", None)
            try:
                return bool(isatty and isatty())
            except (OSError, ValueError):
                return False
        elif isinstance(effect, dx.OnSpare):
            return self._on_spare(effect.effect)
        elif isinstance(effect, dx.Promote):
            self._promote()
        elif isinstance(effect, dx.DropSpare):
            self._drop_spare()
        elif isinstance(effect, dx.BindHostSockets):
            self._wanted = effect.wanted
            self.sockets = bind_host_sockets(effect.wanted)
            return list(self.sockets)
        elif isinstance(effect, dx.Resolve):
            return self._resolve(effect.host, effect.port)
        elif isinstance(effect, dx.NewIdentity):
            return new_identity()
        elif isinstance(effect, dx.Start):
            self._start(effect.peer)
        elif isinstance(effect, dx.Poke):
            assert self.driver is not None
            effect.fn(self.driver.now())
            self.driver.flush()
        elif isinstance(effect, dx.Wait):
            return self._wait(self._milestone(effect.kind), effect.timeout)
        elif isinstance(effect, dx.Detach):
            self._detach()
        elif isinstance(effect, dx.Sleep):
            return self._wait(lambda: _NOT_YET, effect.seconds)
        elif isinstance(effect, dx.Listen):
            assert self.local is not None
            if effect.protocol == "dynamic":
                return self.local.listen_socks(effect.ip, effect.port, effect.forward, effect.credentials)
            if effect.protocol == "tcp":
                return self.local.listen_tcp(effect.ip, effect.port, effect.forward, held=effect.held)
            return self.local.listen_udp(effect.ip, effect.port, effect.forward)
        elif isinstance(effect, fx.OpenRelays):
            return self._open_relays(effect)
        elif isinstance(effect, fx.Publish):
            assert self.relays is not None
            n = self.relays.pool.publish(effect.event, self.reactor.time())
            self.relays.flush()
            return n
        elif isinstance(effect, fx.NextMessage):
            inbox = self.inbox
            return self._wait(lambda: inbox.popleft() if inbox else _NOT_YET, effect.timeout)
        elif isinstance(effect, fx.CloseRelays):
            relays = self.relays
            if relays is not None:
                self.reactor.call_at(self.reactor.time() + effect.delay, relays.close)
        elif isinstance(effect, fx.Clock):
            return fx.Times(self.reactor.time(), int(time.time()))
        elif isinstance(effect, fx.Spawn):
            self._spawn(effect)
        else:  # pragma: no cover - a dialogue yielded something new
            raise TypeError(f"unknown effect {effect!r}")
        return None

    def _milestone(self, kind: str, results: dict[str, Any] | None = None) -> Callable[[], Any]:
        if results is None:
            results = self.results

        def check() -> Any:
            if kind in results:
                return results[kind]
            if "closed" in results:
                return results["closed"]
            return _NOT_YET

        return check

    def _resolve(self, host: str, port: int) -> Any:
        box: list[Any] = []

        def done(ok: bool, value: Any) -> None:
            box.append(unique_addresses(value) if ok else [])
            self._poll()

        self.reactor.run_blocking(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), done)
        return self._wait(lambda: box[0] if box else _NOT_YET)

    def _read_block(self, kind: str, interrupt: str | None = None) -> Any:
        """One whole block from stdin, read where it may block (a thread, or a greenlet for a cooperative object
        on gevent), so the loop - and ICE answering the peer's checks - never waits on the terminal.

        With ``interrupt`` the wait also ends at that milestone (or the tunnel's end) and the read goes on: the
        next ReadBlock takes it over. A block that arrives while nobody waits for it is dropped with one line."""
        box = self._reading
        if box is None:
            box = self._reading = []

            def done(ok: bool, value: Any) -> None:
                if self._reading is box:
                    self._reading = None
                box.append(value if ok else _Failure(value))
                if self._pending is None or getattr(self._pending.check, "box", None) is not box:
                    if ok:
                        self.console.say("Ignored the pasted block: nothing is waiting for one now")
                    return
                self._poll()

            stdin = self.console.stdin
            self.reactor.run_blocking(lambda: read_block(stdin, kind), done, subject=stdin)
        milestone = self._milestone(interrupt) if interrupt is not None else None

        def check_box() -> Any:
            if box:
                return box[0]
            return milestone() if milestone is not None else _NOT_YET

        check_box.box = box  # type: ignore[attr-defined]
        return self._wait(check_box)

    def _open_relays(self, effect: fx.OpenRelays) -> Any:
        relays = RelayConnections(self.reactor, effect.pool, self._signal, self._poll)
        self.relays = relays
        relays.flush()
        pool = effect.pool
        return self._wait(lambda: pool.open_count if pool.settled else _NOT_YET, effect.timeout,
                          lambda: pool.open_count)

    def _signal(self, item: Any) -> None:
        """A relay event or a session's end, for the root dialogue's NextMessage."""
        self.root.inbox.append(item)
        self.root._poll()

    def _spawn(self, effect: fx.Spawn) -> None:
        child = DialogueRunner(self.reactor, PrefixConsole(self.console, effect.label), parent=self)
        self.children.add(child)

        def done(failure: BaseException | None) -> None:
            self.children.discard(child)
            error: str | None = None
            if isinstance(failure, TunnelError):
                error = failure.message
            elif failure is not None:
                log.error("session %s crashed", effect.name, exc_info=failure)
                error = f"internal error: {type(failure).__name__}: {failure}"
            self._signal(fx.SessionEnded(effect.name, error))
            self._poll_close()

        child.start(effect.dialogue, done)
        if self._stopping:
            child.stop()

    # ------------------------------------------------------------------------------------------ the peer

    def _start(self, peer: Any) -> None:
        self.peer = peer
        peer.durable = self._durable_state(peer.is_client)
        self.driver = PeerDriver(self.reactor, peer, self.sockets, self._on_event, self._events_done)
        if getattr(peer, "is_client", False) and hasattr(peer, "local_addresses_changed"):
            self._watch = AddressWatch(self.reactor, self.driver, peer, self._wanted)
        if self.local is None:
            self.local = LocalForwarder(self.reactor, self._session, self.driver.kick_now, self.driver.now)
        else:  # a reconnect: the listeners (and what waits in their backlog) carry over to the new tunnel
            self.local.kick, self.local.now = self.driver.kick_now, self.driver.now

    def _on_spare(self, effect: Any) -> Any:
        """dx.OnSpare: the tunnel effects aimed at the spare tunnel; the held one keeps running meanwhile."""
        spare = self._spare
        if isinstance(effect, dx.BindHostSockets):
            self._drop_spare()
            self._spare = spare = _Spare(bind_host_sockets(effect.wanted))
            return list(spare.sockets)
        if spare is None:
            return self._perform(effect)
        if isinstance(effect, dx.Start):
            peer = spare.peer = effect.peer
            peer.durable = self._durable_state(peer.is_client)
            spare.driver = PeerDriver(self.reactor, peer, spare.sockets,
                                      lambda ev: self._on_event(ev) if self.peer is peer else self._spare_event(ev),
                                      self._events_done)
            return None
        if isinstance(effect, dx.Poke):
            assert spare.driver is not None
            effect.fn(spare.driver.now())
            spare.driver.flush()
            return None
        if isinstance(effect, dx.Wait):
            return self._wait(self._milestone(effect.kind, spare.results), effect.timeout)
        return self._perform(effect)

    def _spare_event(self, ev: Any) -> None:
        spare = self._spare
        if spare is None:
            return
        kinds = {GatheringComplete: "gathered", IceConnected: "connected", TunnelReady: "ready",
                 TunnelClosed: "closed"}
        kind = kinds.get(type(ev))
        if kind is None or kind in spare.results:
            return
        if isinstance(ev, IceConnected) and spare.driver is not None:
            spare.driver.keep_only(ev.local_address)
        spare.results[kind] = ev
        self._poll()

    def _promote(self) -> None:
        """dx.Promote: the spare becomes the tunnel; the held one goes (``_detach``), the listeners stay."""
        spare, self._spare = self._spare, None
        assert spare is not None and spare.driver is not None
        self._detach()
        self.sockets, self.peer, self.driver, self.results = spare.sockets, spare.peer, spare.driver, spare.results
        self._watch = AddressWatch(self.reactor, spare.driver, spare.peer, self._wanted)
        if self.local is not None:
            self.local.kick, self.local.now = spare.driver.kick_now, spare.driver.now
            if "ready" in self.results:
                self.local.attach()

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if spare.driver is not None:
            if spare.peer is not None and not spare.peer.closed:
                spare.peer.close(spare.driver.now(), "done")  # releases its TURN allocations
                spare.driver.flush()
            spare.driver.close()
        for sock in spare.sockets.values():
            sock.close()

    def _durable_state(self, is_client: bool) -> DurableStreams | DurableRegistry:
        """What the Peer's session needs for durable streams; lives on the root runner, across tunnels (a nostr
        server's sessions share the registry)."""
        root = self.root
        if is_client:
            if root.durable_streams is None:
                root.durable_streams = DurableStreams(os.urandom(16))
            return root.durable_streams
        if root.durable_registry is None:
            root.durable_registry = DurableRegistry(DURABLE_GRACE)
        return root.durable_registry

    def _durable_ended(self) -> None:
        """A server's connection is over: its durable session waits DURABLE_GRACE for the client, then the
        registry forgets it (docs/durable.md)."""
        registry = self.root.durable_registry
        if registry is None or self.peer is None or self.peer.is_client:
            return
        now = self.reactor.time()
        registry.connection_ended(getattr(self.peer, "session", None), now)
        self.reactor.call_at(now + registry.hold, lambda: registry.expire(self.reactor.time()))

    def _session(self) -> Any:
        """The forwarding session local sockets talk to; None while there is no live tunnel."""
        peer = self.peer
        return None if peer is None or peer.closed else peer.session

    def _detach(self) -> None:
        """dx.Detach: drop the lost tunnel, keep the listeners (docs/reconnect.md)."""
        self._stop_watch()
        if self.driver is not None:
            self.driver.close()
        for sock in self.sockets.values():
            sock.close()
        self.peer, self.driver, self.sockets, self.results = None, None, {}, {}
        if self.local is not None:
            self.local.detach()

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _events_done(self) -> None:
        if self.local is not None:
            self.local.flush_writes()

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, GatheringComplete):
            self._settle("gathered", ev)
        elif isinstance(ev, IceConnected):
            self._settle("connected", ev)
            assert self.driver is not None
            self.driver.keep_only(ev.local_address)
        elif isinstance(ev, TunnelReady):
            if self.local is not None:
                self.local.attach()  # after a reconnect: accept what waited in the backlog
            self._settle("ready", ev)
        elif isinstance(ev, TunnelClosed):
            self._settle("closed", ev)
            self._poll_close()
        elif isinstance(ev, TunnelHeld):
            self.results.pop("back", None)
            self._settle("held", ev)
        elif isinstance(ev, TunnelResumed):
            self.results.pop("held", None)
            self._settle("back", ev)
        elif self.local is not None:
            self.local.handle(ev)

    def _settle(self, kind: str, value: Any) -> None:
        if kind not in self.results:
            self.results[kind] = value
            self._poll()

    # ------------------------------------------------------------------------------------------ closing

    def _crash(self, exc: BaseException) -> None:
        """A callback raised (a bug): end the run with it as the failure. Already closing, the close itself may be
        what failed, so release everything at once instead of waiting for steps that may never come."""
        if not self._closing:
            self._finish(exc)
            return
        if self.failure is None:
            self.failure = exc
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._close_step = None
        if not self.finished:
            try:
                self._release()
            except Exception:  # a second failure while releasing: still report the run as over
                log.debug("release after a crash failed", exc_info=True)
                self._report_done()

    def _finish(self, failure: BaseException | None) -> None:
        """The dialogue ended (or failed): close in order - sessions, relays, our tunnel - then report."""
        if self._closing:
            return
        self._closing = True
        self.failure = failure
        self._stopping = True
        if self._pending is not None and self._pending.timer is not None:
            self._pending.timer.cancel()
        self._pending = None
        for child in list(self.children):
            child.stop()
        self._close_in(CLOSE_GRACE + 1.0, self._close_relays, lambda: not self.children)

    def _close_in(self, limit: float, next_step: Callable[[], None], over: Callable[[], bool]) -> None:
        """Go on to ``next_step`` once ``over()`` holds (checked on every relevant change) or after ``limit``."""
        if over():
            next_step()
            return
        self._close_step = lambda: over() and self._advance_close(next_step)
        self._close_timer = self.reactor.call_at(self.reactor.time() + limit, lambda: self._advance_close(next_step))

    def _advance_close(self, next_step: Callable[[], None]) -> bool:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._close_step is None:
            return False
        self._close_step = None
        next_step()
        return True

    def _poll_close(self) -> None:
        if self._close_step is not None:
            self._close_step()

    def _close_relays(self) -> None:
        if self.relays is not None and self.parent is None:
            self.relays.close(then=self._close_tunnel)
        else:
            self._close_tunnel()

    def _close_tunnel(self) -> None:
        if self._close_step is not None or self.finished:
            return  # called again by the relays after their grace: already past this step
        peer, driver = self.peer, self.driver
        if peer is not None and driver is not None and not peer.closed:
            peer.close(driver.now(), "done")
            driver.flush()
            self._close_in(CLOSE_GRACE, self._release, lambda: "closed" in self.results or peer.closed)
        else:
            self._release()

    def _release(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._stop_watch()
        self._drop_spare()
        if self.local is not None:
            closed = self.results.get("closed")
            lost = isinstance(closed, TunnelClosed) and not dx.closed_orderly(closed)
            # A server that lost its client holds the durable connections for the client's reconnect.
            self.local.close(hold=DURABLE_GRACE if lost and self.peer is not None and not self.peer.is_client
                             else None)
        self._durable_ended()
        if self.driver is not None:
            self.driver.close()
        else:
            for sock in self.sockets.values():
                sock.close()
        self._report_done()

    def _report_done(self) -> None:
        """Call on_done exactly once."""
        on_done, self._on_done = self._on_done, _ignore
        on_done(self.failure)


#: Old name, kept for embedders; docs/embedding.md.
FlowRunner = DialogueRunner
