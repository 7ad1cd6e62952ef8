"""What the forwarding session asks the adapter to do with local sockets.

The session never touches a socket: it describes each local action as one of these frozen events, and the adapter
reports back through the session's ``flow_*``/``udp_*`` methods. Flow ids are QUIC stream ids.
"""

from __future__ import annotations

from typing import Any

import attrs

from tunnel_core.types import Address


@attrs.frozen
class DialTcp:
    """Server: connect to one of ``addresses`` (Happy Eyeballs), then call ``flow_connected``/``flow_connect_failed``.

    An ``AbortTcp`` for the same flow may arrive while dialling: cancel the dial (or abort the new socket).
    """

    flow_id: int
    addresses: tuple[Address, ...]


@attrs.frozen
class SendTcp:
    """Write ``data`` to the flow's local socket; report what is still unwritten with ``flow_write_pending``.

    ``data`` may be a bytearray: the session appends the frames of one batch to its newest SendTcp until the
    adapter takes it."""

    flow_id: int
    data: bytes | bytearray


@attrs.frozen
class ShutdownTcpWrite:
    """The peer half-closed: after the pending data, ``shutdown(SHUT_WR)`` the local socket; keep reading it."""

    flow_id: int


@attrs.frozen
class AbortTcp:
    """The peer reset the flow: close the local socket with RST (SO_LINGER 0), dropping unwritten data."""

    flow_id: int


@attrs.frozen
class CloseTcp:
    """Both directions are finished: close the local socket normally once its pending data is written."""

    flow_id: int


@attrs.frozen
class PauseReading:
    """The flow's QUIC send buffer is above the high-water mark: stop reading the local socket."""

    flow_id: int


@attrs.frozen
class ResumeReading:
    """The flow's QUIC send buffer drained below the low-water mark: read the local socket again."""

    flow_id: int


@attrs.frozen
class OpenUdp:
    """Server: a new UDP flow; open a socket that sends towards ``addresses[0]`` (fall back on send errors)."""

    flow_id: int
    addresses: tuple[Address, ...]


@attrs.frozen
class SendUdp:
    """Server: send ``data`` to the target from the flow's socket."""

    flow_id: int
    data: bytes


@attrs.frozen
class SendUdpTo:
    """Client: send ``data`` to the local UDP peer ``peer`` from the listening socket of ``forward``."""

    peer: Address
    data: bytes
    forward: int = 0


@attrs.frozen
class CloseUdp:
    """Server: the UDP flow ended (FIN, reset or idle): close its socket."""

    flow_id: int


@attrs.frozen
class ResolveTarget:
    """Server: resolve a dynamic flow's target name, then call ``flow_resolved(flow_id, addresses)`` (the session
    checks them with the policy and dials only what it allowed)."""

    flow_id: int
    host: str
    port: int


@attrs.frozen
class DynamicReply:
    """Client: the server answered a dynamic flow; write SOCKS5 reply ``code`` to its application. Any code but
    0 (succeeded) ends the flow: close the connection after the reply."""

    flow_id: int
    code: int


@attrs.frozen
class ResumeTcp:
    """Durable streams (docs/durable.md): a held local connection continues on this connection as ``flow_id``.
    ``stream.local`` is the object the adapter stored for it: move it to ``flow_id`` and read it again; if its socket
    is gone meanwhile, report ``flow_reset(flow_id)``."""

    flow_id: int
    stream: Any = attrs.field(eq=False, repr=False)


@attrs.frozen
class DropTcp:
    """Durable streams: a held local connection cannot be resumed (``reason``): reset ``stream.local`` with one
    log line."""

    stream: Any = attrs.field(eq=False, repr=False)
    reason: str


ForwardingEvent = (
    DialTcp
    | SendTcp
    | ShutdownTcpWrite
    | AbortTcp
    | CloseTcp
    | PauseReading
    | ResumeReading
    | OpenUdp
    | SendUdp
    | SendUdpTo
    | CloseUdp
    | ResolveTarget
    | DynamicReply
    | ResumeTcp
    | DropTcp
)

__all__ = [
    "AbortTcp",
    "CloseTcp",
    "CloseUdp",
    "DialTcp",
    "DropTcp",
    "ForwardingEvent",
    "OpenUdp",
    "PauseReading",
    "ResumeReading",
    "ResumeTcp",
    "SendTcp",
    "SendUdp",
    "SendUdpTo",
    "ShutdownTcpWrite",
]
