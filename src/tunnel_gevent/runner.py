"""The gevent interpreter of tunnel_core.flows: performs each effect a flow yields and sends the result back.

``GeventRunner(console).run(flow)`` blocks the calling greenlet only; the tunnel's own greenlets keep serving, so a
gevent program runs it with ``gevent.spawn(runner.run, flow)`` next to its other work and ends it with
``runner.stop()`` (orderly: CONNECTION_CLOSE "done"). Nothing here monkey-patches the standard library: whether
to patch is the embedding program's decision.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent import monkey, socket

from tunnel_core import flows
from tunnel_core.errors import ProtocolError
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.peer import IceConnected, TunnelClosed, TunnelReady
from tunnel_core.signal import BlockReader
from tunnel_core.types import Address
from tunnel_gevent.reactor import GeventReactor
from tunnel_io import Console, bind_host_sockets, new_identity, unique_addresses
from tunnel_io.driver import PeerDriver
from tunnel_io.local import LocalForwarder

CLOSE_GRACE = 2.0
now = time.monotonic


# ------------------------------------------------------------------------------------------------ OS helpers


def resolve_all(host: str, port: int) -> list[str]:
    """gevent's resolver (a thread pool by default): the hub keeps running while the name resolves."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return unique_addresses(infos)


# ------------------------------------------------------------------------------------------------ the runner


class GeventRunner:
    """Runs one flow in the calling greenlet; owns the sockets, the driver and the local forwarding I/O.

    ``handle_signals`` turns SIGINT/SIGTERM into an orderly stop (main thread only); an embedding program with its
    own signal policy passes False and calls ``stop()``.
    """

    def __init__(self, console: Console | None = None, *, handle_signals: bool = True) -> None:
        self.console = console or Console()
        self.handle_signals = handle_signals
        self.sockets: dict[Address, socket.socket] = {}
        self.peer: Any = None
        self.driver: PeerDriver | None = None
        self.local: LocalForwarder | None = None
        self.results: dict[str, Any] = {}
        self._changed = gevent.event.Event()
        self._stopping = False

    def stop(self) -> None:
        """Ask the flow to end at its current wait; the tunnel closes with code 0 "done" and ``run`` returns."""
        self._stopping = True
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    # ------------------------------------------------------------------------------------------ flow loop

    def run(self, flow: flows.Flow) -> None:
        handlers = []
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            handlers = [gevent.signal_handler(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)]
        try:
            self._drive(flow)
        finally:
            for handler in handlers:
                handler.cancel()
            self.close()

    def _drive(self, flow: flows.Flow) -> None:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(result)
            except (StopIteration, flows.Stopped):
                return
            except ProtocolError as exc:
                raise TunnelError(str(exc), ExitCode.USAGE) from None
            result, error = None, None
            try:
                result = self._perform(effect)
            except (flows.Stopped, OSError) as exc:
                error = exc

    def _stoppable(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in its own greenlet unless a stop request comes first (then Stopped goes to the flow).

        The worker hands its exception back as a value: a greenlet dying with an exception would have the hub print
        a traceback, and users must only ever see the one ``Error:`` line.
        """

        def captured() -> tuple[bool, Any]:
            try:
                return True, fn(*args)
            except Exception as exc:
                return False, exc

        worker = gevent.spawn(captured)
        try:
            while not worker.ready():
                if self._stopping:
                    raise flows.Stopped()
                gevent.wait([worker, self._changed], count=1)
            ok, value = worker.get()
        finally:
            if not worker.ready():
                worker.kill(block=False)
        if not ok:
            raise value
        return value

    # ------------------------------------------------------------------------------------------ effects

    def _perform(self, effect: Any) -> Any:
        if isinstance(effect, flows.Say):
            self.console.say(effect.text)
        elif isinstance(effect, flows.PrintBlock):
            self.console.block(effect.text)
        elif isinstance(effect, flows.ReadBlock):
            return self._stoppable(self._read_block, effect.kind)
        elif isinstance(effect, flows.BindHostSockets):
            self.sockets = bind_host_sockets(effect.wanted)
            return list(self.sockets)
        elif isinstance(effect, flows.Resolve):
            return self._stoppable(resolve_all, effect.host, effect.port)
        elif isinstance(effect, flows.NewIdentity):
            return new_identity()
        elif isinstance(effect, flows.Start):
            self._start(effect.peer)
        elif isinstance(effect, flows.Poke):
            assert self.driver is not None
            effect.fn(self.driver.now())
            self.driver.flush()
        elif isinstance(effect, flows.Wait):
            return self._wait(effect.kind, effect.timeout)
        elif isinstance(effect, flows.Listen):
            assert self.local is not None
            if effect.protocol == "tcp":
                return self.local.listen_tcp(effect.ip, effect.port)
            return self.local.listen_udp(effect.ip, effect.port)
        else:  # pragma: no cover - a flow yielded something new
            raise TypeError(f"unknown effect {effect!r}")
        return None

    def _read_block(self, kind: str) -> str:
        """Lines from stdin without blocking the hub (ICE must keep answering checks meanwhile)."""
        reader = BlockReader(kind)  # type: ignore[arg-type]
        lines: list[str] = []
        readline = self.console.stdin.readline
        if not _cooperative(self.console.stdin):
            pool = gevent.get_hub().threadpool
            readline = functools.partial(pool.apply, readline)
        try:
            while True:
                line = readline()
                if line == "":
                    reader.feed_eof()
                    raise TunnelError("Missing BEGIN marker", ExitCode.USAGE)
                lines.append(line)
                if reader.feed_line(line) is not None:
                    return "".join(lines)
        except ProtocolError as exc:
            raise TunnelError(str(exc), ExitCode.USAGE) from None

    def _wait(self, kind: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else now() + timeout
        while True:
            if kind in self.results:
                return self.results[kind]
            if "closed" in self.results:
                return self.results["closed"]
            if self._stopping:
                raise flows.Stopped()
            remaining = None if deadline is None else deadline - now()
            if remaining is not None and remaining <= 0:
                return None
            self._changed.wait(remaining)

    def _start(self, peer: Any) -> None:
        self.peer = peer
        reactor = GeventReactor()
        self.driver = PeerDriver(reactor, peer, self.sockets, self._on_event)
        self.local = LocalForwarder(reactor, lambda: peer.session, self.driver.kick_now, self.driver.now)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, GatheringComplete):
            self._settle("gathered", ev)
        elif isinstance(ev, IceConnected):
            self._settle("connected", ev)
            assert self.driver is not None
            self.driver.keep_only(ev.local_address)
        elif isinstance(ev, TunnelReady):
            self._settle("ready", ev)
        elif isinstance(ev, TunnelClosed):
            self._settle("closed", ev)
        elif self.local is not None:
            self.local.handle(ev)

    def _settle(self, kind: str, value: Any) -> None:
        if kind not in self.results:
            self.results[kind] = value
            self._notify()

    def close(self) -> None:
        """Orderly stop: CONNECTION_CLOSE(0, "done"), a short grace for it to leave, then release everything."""
        peer, driver = self.peer, self.driver
        if peer is not None and driver is not None and not peer.closed:
            peer.close(driver.now(), "done")
            driver.flush()
            deadline = now() + CLOSE_GRACE
            while "closed" not in self.results and not peer.closed and now() < deadline:
                self._changed.wait(min(0.05, max(0.0, deadline - now())))
        if self.local is not None:
            self.local.close()
        if self.driver is not None:
            self.driver.close()
        else:
            for sock in self.sockets.values():
                sock.close()


def run_flow(flow: flows.Flow, console: Console | None = None) -> None:
    """Run a flow to completion in the current greenlet; user-facing failures come out as TunnelError."""
    GeventRunner(console).run(flow)


__all__ = ["CLOSE_GRACE", "Console", "GeventRunner", "run_flow"]


def _cooperative(stdin: Any) -> bool:
    """Whether ``stdin.readline`` may run in a greenlet: an in-memory object in a monkey-patched program.

    Why it matters: a real file blocks the whole hub, so it is read in gevent's thread pool (a native thread); but
    an object built on patched primitives (a queue, an Event) only works from greenlets of the hub's thread, and
    in a program that did not patch, such an object blocks natively - the thread pool again.
    """
    try:
        stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return monkey.is_module_patched("threading")
    return False
