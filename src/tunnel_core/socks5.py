"""The local side of dynamic forwarding (``--socks5``): a sans-IO SOCKS5 server for one connection (RFC 1928,
with RFC 1929 username/password when configured).

Not to be confused with tunnel_core.iroh_session.socks, which is the *client* side of SOCKS5 (reaching ``.onion``
relays through Tor); both speak the same RFC, in opposite roles.

Only CONNECT is offered (UDP ASSOCIATE and BIND get reply 0x07, "command not supported": docs/forwards.md says
why). Domain names are passed on unresolved (``socks5h`` semantics): the tunnel's server resolves and checks them.
Feed the bytes the application sent; send ``data_to_send()`` back; once ``request`` is set, answer it with
``reply(code)`` and relay the bytes in ``remainder`` and everything after as payload.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress

import attrs

VERSION = 5
AUTH_VERSION = 1
METHOD_NONE = 0x00
METHOD_USERPASS = 0x02
METHOD_UNACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

# Reply codes (RFC 1928 section 6).
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02  # connection not allowed by ruleset: the server's allowlist refused the target
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04  # the name did not resolve on the server's side
CONNECTION_REFUSED = 0x05  # the server could not connect to an allowed target
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"
    FAILED = "failed"


def reply(code: int) -> bytes:
    """The reply to a CONNECT request (bound address 0.0.0.0:0: the real one is on the server's side)."""
    return bytes([VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])


def refusal_code(reason: str) -> int:
    """The reply for a target the server refused, from its reason: a name that did not resolve is "host
    unreachable", anything else "not allowed by ruleset" (every mode's client asks this)."""
    return HOST_UNREACHABLE if "DNS resolution" in reason else NOT_ALLOWED


@attrs.frozen
class ConnectRequest:
    """Where the application wants to go: an IP literal or a name (unresolved), and a port."""

    host: str
    port: int

    def url(self) -> str:
        """As a tunnel source URL (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


class Socks5Server:
    """One application's SOCKS5 handshake, up to its CONNECT request."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self._credentials = credentials
        self._state = _State.GREETING
        self._buffer = bytearray()
        self._out = bytearray()
        self.request: ConnectRequest | None = None
        self.remainder = b""
        #: Why the handshake failed (for the log), or None.
        self.error: str | None = None

    @property
    def failed(self) -> bool:
        """The handshake failed: send what is left in ``data_to_send()`` and close the connection."""
        return self._state is _State.FAILED

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def feed(self, data: bytes) -> None:
        if self._state is _State.DONE:
            self.remainder += data  # payload the application sent before our reply
            return
        if self._state is _State.FAILED:
            return
        # Bounded without a limit of its own: every state completes (or fails) within 513 buffered bytes.
        self._buffer += data
        while self._state not in (_State.DONE, _State.FAILED):
            progressed = {
                _State.GREETING: self._greeting,
                _State.AUTH: self._auth,
                _State.REQUEST: self._request,
            }[self._state]()
            if not progressed:
                break

    def reply(self, code: int) -> bytes:
        return reply(code)

    # ------------------------------------------------------------------------------------------ states

    def _fail(self, why: str, out: bytes = b"") -> bool:
        self._state = _State.FAILED
        self.error = why
        self._out += out
        return False

    def _greeting(self) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[0] != VERSION:
            return self._fail(f"not SOCKS5 (version byte {buf[0]})")
        end = 2 + buf[1]
        if len(buf) < end:
            return False
        methods = set(buf[2:end])
        del buf[:end]
        wanted = METHOD_USERPASS if self._credentials is not None else METHOD_NONE
        if wanted not in methods:
            return self._fail("no acceptable authentication method", bytes([VERSION, METHOD_UNACCEPTABLE]))
        self._out += bytes([VERSION, wanted])
        self._state = _State.AUTH if wanted == METHOD_USERPASS else _State.REQUEST
        return True

    def _auth(self) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[0] != AUTH_VERSION:
            return self._fail("bad username/password version", bytes([AUTH_VERSION, 1]))
        ulen = buf[1]
        if len(buf) < 2 + ulen + 1:
            return False
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return False
        user, password = bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])
        del buf[:end]
        assert self._credentials is not None
        want_user, want_password = (s.encode("utf-8") for s in self._credentials)
        ok = hmac.compare_digest(user, want_user) & hmac.compare_digest(password, want_password)
        if not ok:
            return self._fail("wrong username or password", bytes([AUTH_VERSION, 1]))
        self._out += bytes([AUTH_VERSION, 0])
        self._state = _State.REQUEST
        return True

    def _request(self) -> bool:
        buf = self._buffer
        if len(buf) < 5:
            return False
        if buf[0] != VERSION:
            return self._fail("bad request version", self.reply(GENERAL_FAILURE))
        cmd, atyp = buf[1], buf[3]
        if atyp == ATYP_IPV4:
            end, host = 4 + 4, None
        elif atyp == ATYP_IPV6:
            end, host = 4 + 16, None
        elif atyp == ATYP_DOMAIN:
            end, host = 5 + buf[4], None
        else:
            return self._fail(f"address type {atyp} not supported", self.reply(ADDRESS_TYPE_NOT_SUPPORTED))
        if len(buf) < end + 2:
            return False
        raw = bytes(buf[4:end])
        port = int.from_bytes(buf[end : end + 2], "big")
        self.remainder = bytes(buf[end + 2 :])
        del buf[:]
        if cmd != CMD_CONNECT:
            return self._fail(f"command {cmd} not supported (CONNECT only)", self.reply(COMMAND_NOT_SUPPORTED))
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(raw))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(raw))
        else:
            host = _domain(raw[1:])
            if host is None:
                return self._fail("malformed domain name", self.reply(GENERAL_FAILURE))
        self.request = ConnectRequest(host, port)
        self._state = _State.DONE
        return False


def _domain(raw: bytes) -> str | None:
    """A DNS name as sent (letters, digits, '-', '.', '_'); anything else is refused rather than passed on."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text or len(text) > 253 or any(not (c.isalnum() or c in "-._") for c in text):
        return None
    return text
