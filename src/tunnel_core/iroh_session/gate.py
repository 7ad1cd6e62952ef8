"""Who may connect and how many streams may be forwarded at once: decisions the server takes before any
byte is forwarded, kept free of I/O so they are tested exhaustively."""

from __future__ import annotations

from collections.abc import Iterable

from tunnel_core.errors import LocalProtocolError
from tunnel_core.keys import KEY_BYTES, format_endpoint_id


class ClientAllowlist:
    """The set of client EndpointIds a server serves (reference 6.3): empty means nobody.

    The check is made on the id iroh's TLS handshake authenticated, never on anything the client says on a
    stream, so a client cannot claim someone else's identity.
    """

    def __init__(self, ids: Iterable[bytes]) -> None:
        checked = []
        for endpoint_id in ids:
            if len(endpoint_id) != KEY_BYTES:
                raise LocalProtocolError(f"an EndpointId is 32 bytes, got {len(endpoint_id)}")
            checked.append(bytes(endpoint_id))
        self._ids = frozenset(checked)

    def __len__(self) -> int:
        return len(self._ids)

    def allows(self, remote_id: bytes) -> bool:
        return bytes(remote_id) in self._ids

    def describe(self) -> list[str]:
        """The ids in hex, sorted, for the start-up log."""
        return sorted(format_endpoint_id(i) for i in self._ids)


class SessionLimiter:
    """A counting permit pool shared by every connection of one server (upstream's global semaphore).

    A permit is taken per forwarding stream before its request is read and is held until the stream's
    forwarding ends, so ``max_sessions`` bounds sockets and tasks however many clients connect.
    """

    def __init__(self, max_sessions: int) -> None:
        if max_sessions < 1:
            raise LocalProtocolError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    def try_acquire(self) -> bool:
        if self._active >= self.max_sessions:
            return False
        self._active += 1
        return True

    def release(self) -> None:
        if self._active == 0:
            raise LocalProtocolError("SessionLimiter.release without a permit")
        self._active -= 1
