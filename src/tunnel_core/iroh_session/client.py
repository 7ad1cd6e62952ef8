"""The client's dialogue on one iroh bi-stream: send the SourceRequest, wait for the SourceResponse.

The client writes its request at once and sends no payload before the verdict, so a refused stream never
carries a byte of the user's data. Bytes that follow the response are the server's first payload and are
handed back with the acceptance.
"""

from __future__ import annotations

import enum
from collections import deque

import attrs

from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_session.constants import PROTOCOL_VERSION_E2
from tunnel_core.wire import (
    DurableRequest,
    MessageReader,
    SourceRequest,
    WireError,
    decode_source_response,
    encode_source_request,
)


class ClientStreamState(enum.Enum):
    AWAIT_RESPONSE = "await-response"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


@attrs.frozen
class SourceAccepted:
    """The server will forward; ``payload`` is stream data that arrived together with the response."""

    payload: bytes = b""
    #: The flow id under which the server takes this stream's UDP datagrams as QUIC datagrams (None: stream only).
    datagram_flow: int | None = None
    #: Durable streams (docs/durable.md): what the server has received of this stream (None: not durable).
    durable: int | None = None


@attrs.frozen
class SourceRejected:
    """The server refused; ``reason`` is its words, shown to the user as ``Source request rejected: <reason>``."""

    reason: str

    def message(self) -> str:
        return f"Source request rejected: {self.reason}"


ClientStreamEvent = SourceAccepted | SourceRejected


class ClientStream:
    """One forwarding stream on the client side until the server's verdict."""

    def __init__(self, source: str, *, version: int = PROTOCOL_VERSION_E2, datagram_flow: int | None = None,
                 durable: DurableRequest | None = None) -> None:
        self._version = version
        self._flow = datagram_flow
        self._durable = durable
        self._request = encode_source_request(SourceRequest(source=source, version=version,
                                                            datagram_flow=datagram_flow, durable=durable))
        self._reader = MessageReader("SourceResponse")
        self._events: deque[ClientStreamEvent] = deque()
        self.state = ClientStreamState.AWAIT_RESPONSE

    def request_bytes(self) -> bytes:
        """What to write first on the freshly opened stream."""
        return self._request

    def feed(self, data: bytes) -> None:
        """Stream bytes from the server; raises WireError (and stays failed) on a malformed response."""
        if self.state is not ClientStreamState.AWAIT_RESPONSE:
            raise LocalProtocolError(f"ClientStream.feed in state {self.state.value}; forward the bytes instead")
        try:
            body = self._reader.feed(data)
            if body is None:
                return
            response = decode_source_response(body, expected_version=self._version)
        except WireError:
            self.state = ClientStreamState.FAILED
            raise
        if response.accepted:
            self.state = ClientStreamState.ACCEPTED
            # Only an echo of exactly our offer counts; anything else means "stream only".
            flow = response.datagram_flow if self._flow is not None and response.datagram_flow == self._flow else None
            durable = response.durable if self._durable is not None else None
            self._events.append(SourceAccepted(self._reader.remainder, flow, durable))
        else:
            self.state = ClientStreamState.REJECTED
            self._events.append(SourceRejected(response.reason or "no reason given"))

    def feed_eof(self) -> None:
        """The server ended the stream; before a verdict that is a protocol error."""
        if self.state is not ClientStreamState.AWAIT_RESPONSE:
            return
        self.state = ClientStreamState.FAILED
        self._reader.feed_eof()  # raises: the response is incomplete or absent
        raise WireError("SourceResponse missing: stream ended")  # pragma: no cover - defensive

    def next_event(self) -> ClientStreamEvent | None:
        return self._events.popleft() if self._events else None
