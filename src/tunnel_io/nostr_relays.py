"""Nostr relay connections, written once: non-blocking TCP, TLS through ``ssl.MemoryBIO``, the sans-IO WebSocket.

The pool decides (which relay to (re)connect, what to send, which events are new) and tunnel_core.nostr.links glues
it to the sans-IO WebSocket client; this module only moves bytes between sockets and those links. Why MemoryBIO and
not each runtime's TLS stream (trio.SSLStream, gevent.ssl, asyncio streams): TLS then is one more sans-IO layer over
the same readiness callbacks, so reconnecting, the goodbye and the failure wording are the same on every runtime.

Life of a connection: resolve (in a thread) -> happy eyeballs -> TLS handshake (wss) -> WebSocket upgrade -> open.
Everything before "open" must finish within ``CONNECT_TIMEOUT``. A connection the pool asked to close writes its
last frames and is then closed; ``close()`` cuts whatever is left after ``RELAY_CLOSE_GRACE``.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from tunnel_core.nostr.links import RelayLinks
from tunnel_core.nostr.pool import RelayPool, RelayUp
from tunnel_core.websocket import WebSocketError
from tunnel_io import unique_addresses
from tunnel_io.dial import HappyEyeballs
from tunnel_io.reactor import Reactor, Timer, Watch

log = logging.getLogger("tunnel_io.nostr_relays")

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536
#: How long leaving the relays may take (CLOSE and close frames going out) before the connections are cut.
RELAY_CLOSE_GRACE = 1.0


class _Conn:
    """One relay connection from name resolution to close."""

    def __init__(self, relays: RelayConnections, url: str) -> None:
        self.relays = relays
        self.url = url
        self.link = relays.links.new_link(url)
        self.reactor = relays.reactor
        target = self.link.target
        self.tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if target.tls:
            self.tls = relays.ssl_context().wrap_bio(self._incoming, self._outgoing, server_hostname=target.host)
        self.handshaking = self.tls is not None
        self.sock: Any = None
        self.watch: Watch | None = None
        self.dial: HappyEyeballs | None = None
        self.out = bytearray()
        self.ending = False
        self.gone = False
        self.timeout: Timer | None = self.reactor.call_at(self.reactor.time() + CONNECT_TIMEOUT, self._timed_out)
        self.reactor.run_blocking(
            lambda: socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM), self._resolved)

    # ------------------------------------------------------------------------------------ connecting

    def _resolved(self, ok: bool, value: Any) -> None:
        if self.gone:
            return
        addresses = unique_addresses(value) if ok else []
        if not addresses:
            self.fail(f"cannot resolve {self.link.target.host}" + (f": {value}" if not ok else ""))
            return
        port = self.link.target.port
        self.dial = HappyEyeballs(self.reactor, [(ip, port) for ip in addresses], self._connected)

    def _connected(self, sock: Any) -> None:
        self.dial = None
        if sock is None:
            self.fail("Connection refused")
            return
        if self.gone:
            sock.close()
            return
        self.sock = sock
        self.watch = self.reactor.watch(sock, self._readable, self._writable)
        self.watch.want(read=True, write=False)
        if self.tls is not None:
            self._handshake()
        else:
            self._send(self.link.data_to_send())

    def _handshake(self) -> None:
        assert self.tls is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._pump_tls()
            return
        except (ssl.SSLError, OSError) as exc:
            self.fail(str(exc) or type(exc).__name__)
            return
        self.handshaking = False
        self._send(self.link.data_to_send())

    def _timed_out(self) -> None:
        self.timeout = None
        if not self.link.open:
            self.fail("timed out")

    # ------------------------------------------------------------------------------------ bytes

    def _send(self, data: bytes) -> None:
        if self.gone:
            return
        if data:
            if self.tls is not None:
                try:
                    self.tls.write(data)
                except ssl.SSLError as exc:
                    self.fail(str(exc))
                    return
            else:
                self.out += data
        self._pump_tls()

    def _pump_tls(self) -> None:
        if self.tls is not None:
            pending = self._outgoing.read()
            if pending:
                self.out += pending
        self._flush_out()

    def _flush_out(self) -> None:
        sock = self.sock
        if sock is None or self.gone:
            return
        while self.out:
            try:
                n = sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.fail(str(exc) or type(exc).__name__)
                return
            del self.out[:n]
        if self.watch is not None:
            self.watch.want(read=True, write=bool(self.out))
        if not self.out and self.ending:
            self.end("closed")

    def _writable(self) -> None:
        self._flush_out()

    def _readable(self) -> None:
        if self.gone:
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(str(exc) or type(exc).__name__)
            return
        eof = not data
        if self.tls is not None:
            decrypted = self._decrypt(data)
            if decrypted is None:
                return  # nothing for the WebSocket yet (handshake, partial record), or failed
            data, eof = decrypted
        try:
            if data:
                self.link.receive(data, self.reactor.time())
            if eof:
                self.link.receive(b"", self.reactor.time())
        except WebSocketError as exc:
            self.fail(str(exc) or type(exc).__name__)
            return
        if self.link.open and self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        self.relays.flush()
        if eof or self.link.finished:
            self.ending = True  # EOF, or the closing handshake is over: send what is left (a close reply), then end
            self._flush_out()

    def _decrypt(self, data: bytes) -> tuple[bytes, bool] | None:
        """Ciphertext in; (plaintext, end of stream) out, or None when there is nothing for the WebSocket yet."""
        assert self.tls is not None
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        if self.handshaking:
            self._handshake()
            if self.handshaking or self.gone:
                return None
        chunks = []
        eof = not data
        while True:
            try:
                chunk = self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
                break
            except ssl.SSLError as exc:
                self.fail(str(exc))
                return None
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        self._pump_tls()  # TLS may have something to say back (key updates, close_notify)
        if self.gone:
            return None
        plain = b"".join(chunks)
        if not plain and not eof:
            return None
        return plain, eof

    def write(self) -> None:
        """The pool may have given this link frames to send."""
        if self.gone or self.sock is None or self.handshaking:
            return
        self._send(self.link.data_to_send())
        if self.link.closing or self.link.finished:
            self.ending = True
            self._flush_out()

    # ------------------------------------------------------------------------------------ ending

    def fail(self, reason: str) -> None:
        self.end(reason)

    def end(self, reason: str) -> None:
        if self.gone:
            return
        self.gone = True
        if self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        elif self.sock is not None:
            self.sock.close()
        self.relays.lost(self, reason)


class RelayConnections:
    """Drives one RelayPool; verified new events and ``RelayUp`` go to ``deliver``, and ``changed`` hears of every
    change (a relay connected or lost, events arrived) so a waiting flow can look again."""

    def __init__(self, reactor: Reactor, pool: RelayPool, deliver: Callable[[Any], None],
                 changed: Callable[[], None]) -> None:
        self.reactor = reactor
        self.pool = pool
        self.links = RelayLinks(pool, os.urandom)
        self.deliver = deliver
        self.changed = changed
        self.conns: dict[str, _Conn] = {}
        self._context: ssl.SSLContext | None = None
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._gone_callbacks: list[Callable[[], None]] = []
        self._grace: Timer | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context()
        return self._context

    def flush(self) -> None:
        step = self.links.step(self.reactor.time())
        if not self._closed:
            for url in step.connect:
                try:
                    self.conns[url] = _Conn(self, url)
                except WebSocketError as exc:  # a URL the CLI should have refused
                    reason = str(exc)
                    self.reactor.call_soon(lambda url=url, reason=reason: self._refused(url, reason))
        for conn in list(self.conns.values()):
            conn.write()
        for ev in step.received:
            self.deliver(ev.event)
        for ev in step.other:
            log.debug("relay pool: %s", ev)
            if isinstance(ev, RelayUp):  # a waiting client re-publishes its request afresh (docs/reconnect.md)
                self.deliver(ev)
        if step.received or step.other or step.connect:
            self.changed()
        self._rearm()

    def _rearm(self) -> None:
        when = None if self._closed else self.pool.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self.reactor.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.pool.handle_timer(self.reactor.time())
        self.flush()

    def _refused(self, url: str, reason: str) -> None:
        self.links.lost(url, self.reactor.time(), reason)
        if not self._closed:
            self.flush()
        self.changed()

    def lost(self, conn: _Conn, reason: str) -> None:
        if self.conns.get(conn.url) is conn:
            del self.conns[conn.url]
        self.links.lost(conn.url, self.reactor.time(), reason)
        if not self._closed:
            self.flush()
        self.changed()
        if self._closed and not self.conns:
            self._all_gone()

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Unsubscribe and close every connection (the CLOSE and close frames still go out); no more reconnects.
        ``then`` runs once every connection ended, or after RELAY_CLOSE_GRACE at the latest."""
        if then is not None:
            self._gone_callbacks.append(then)
        if self._closed:
            if not self.conns:
                self._all_gone()
            return
        self.pool.close()
        self.flush()
        self._closed = True
        self._rearm()
        for conn in list(self.conns.values()):
            if not conn.link.open:
                conn.end("closed")  # still connecting: nothing to say goodbye on
        if not self.conns:
            self._all_gone()
        else:
            self._grace = self.reactor.call_at(self.reactor.time() + RELAY_CLOSE_GRACE, self._cut)

    def _cut(self) -> None:
        self._grace = None
        for conn in list(self.conns.values()):
            conn.end("closed")
        self._all_gone()

    def _all_gone(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        callbacks, self._gone_callbacks = self._gone_callbacks, []
        for fn in callbacks:
            fn()
