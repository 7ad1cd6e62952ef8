"""The server's dialogue on one iroh bi-stream (reference 3.2 step 3) as an explicit state machine.

Order matters and is upstream's: the session permit is settled before the request is read (so a full server
answers at once), the scheme is checked by prefix before anything is parsed, then the access policy decides,
possibly after the adapter resolved a hostname. Only an accepted stream turns into forwarding, and it carries the
exact addresses the policy checked, so the adapter dials nothing else.

Inputs: ``feed(data)``, ``feed_eof()``, ``resolved(addresses)``, ``resolution_failed(error)``.
Outputs (pulled with ``next_event()``): ``SendBytes`` (write to the stream, then finish it if asked),
``ResolveHost``, ``StartForwarding``, ``StreamRejected``, ``StreamFailed``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence

import attrs

from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_session.constants import INVALID_PROTOCOL_REASON, PROTOCOL_VERSION_E2, SESSION_LIMIT_REASON
from tunnel_core.policy import AccessPolicy, Decision, NeedsResolution, PolicyError, Source, parse_source, parse_target
from tunnel_core.reverse import REVERSE_SCHEME, listen_allowed, listen_refusal
from tunnel_core.types import Address
from tunnel_core.wire import (
    DurableRequest,
    MessageReader,
    SourceResponse,
    WireError,
    decode_source_request,
    encode_source_response,
)


class ServerStreamState(enum.Enum):
    AWAIT_REQUEST = "await-request"
    AWAIT_RESOLUTION = "await-resolution"
    AWAIT_LISTENER = "await-listener"
    FORWARDING = "forwarding"
    REJECTED = "rejected"
    FAILED = "failed"


@attrs.frozen
class SendBytes:
    """Write ``data`` to the stream; ``finish`` ends our send side afterwards (every rejection does)."""

    data: bytes
    finish: bool = False


@attrs.frozen
class ResolveHost:
    """Resolve ``host`` (getaddrinfo) and report with ``resolved`` or ``resolution_failed``."""

    host: str
    port: int


@attrs.frozen
class StartForwarding:
    """The source was accepted and the response queued: dial exactly ``addresses``.

    ``payload`` is what the client sent after its request (normally nothing, as clients wait for the answer).
    """

    source: Source
    addresses: tuple[Address, ...]
    payload: bytes = b""
    #: UDP: the flow id the client offered for QUIC datagrams and we accepted (None: stream framing only).
    datagram_flow: int | None = None
    #: A durable TCP stream (docs/durable.md): new (``offset`` None: dial) or resumed (take the held socket).
    durable: DurableRequest | None = None


@attrs.frozen
class DurableControl:
    """Durable streams (docs/durable.md): the client opened the control stream of durable session
    ``durable.token`` (key 0): it carries confirmations (ACK frames) both ways; ``payload`` is the first of them."""

    durable: DurableRequest
    payload: bytes = b""


#: The key a client's SourceRequest names for its connection's durable control stream.
DURABLE_CONTROL_KEY = 0


@attrs.frozen
class StartListening:
    """A reverse forward (ours, docs/forwards.md) that ``--allow-listen`` permits: bind ``ip:port``, then report
    with ``listening()`` or ``listen_failed(reason)``. The stream stays open as the forward's control stream: the
    listener lives until it ends."""

    text: str
    ip: str
    port: int
    #: Durable streams (docs/durable.md): the client's durable session (its token): each accepted connection's
    #: stream is then a durable one of that session. None: the client did not ask (upstream, e2, an older one).
    durable: DurableRequest | None = None


@attrs.frozen
class StreamRejected:
    """The request was refused; the reason has been queued for the client. For the server's log."""

    reason: str
    source: str | None = None


@attrs.frozen
class StreamFailed:
    """The client broke the protocol (bad message, early end); nothing more is sent. For the server's log."""

    error: str


ServerStreamEvent = (
    SendBytes | ResolveHost | StartForwarding | StartListening | StreamRejected | StreamFailed | DurableControl
)


class ServerStream:
    """One forwarding stream on the server, from its first byte to the forwarding decision."""

    def __init__(self, policy: AccessPolicy, *, permit: bool, version: int = PROTOCOL_VERSION_E2,
                 datagrams: bool = True, allow_listen: Sequence[str] = (),
                 durable: Callable[[DurableRequest], int | str] | None = None) -> None:
        """``durable`` answers a client's durable request (docs/durable.md): what we received of the stream (0 for
        a new one), or why it cannot be resumed; None: durable streams are off (the request field is ignored)."""
        self._policy = policy
        self._allow_listen = tuple(allow_listen)
        self._durable_answer = durable
        self._durable: DurableRequest | None = None
        self._version = version
        self._datagrams = datagrams  # take a client's offer of QUIC datagrams for UDP (docs/datagrams.md)
        self._flow: int | None = None
        self._reader = MessageReader("SourceRequest")
        self._events: deque[ServerStreamEvent] = deque()
        self._source: Source | None = None
        self._source_text: str | None = None
        self._payload = b""
        self.state = ServerStreamState.AWAIT_REQUEST
        if not permit:
            self._reject(SESSION_LIMIT_REASON)

    # ------------------------------------------------------------------------------------------ inputs

    def feed(self, data: bytes) -> None:
        if self.state is ServerStreamState.AWAIT_RESOLUTION:
            self._payload += data  # early payload waits for the verdict
            return
        if self.state is not ServerStreamState.AWAIT_REQUEST:
            return  # after a verdict the stream's bytes belong to forwarding (or are ignored)
        try:
            body = self._reader.feed(data)
        except WireError as exc:
            self._fail(str(exc))
            return
        if body is None:
            return
        try:
            request = decode_source_request(body, expected_version=self._version)
        except WireError as exc:
            self._fail(str(exc))
            return
        self._payload = self._reader.remainder
        self._flow = request.datagram_flow
        self._durable = request.durable if self._durable_answer is not None else None
        if self._durable is not None and self._durable.key == DURABLE_CONTROL_KEY:
            self.state = ServerStreamState.FORWARDING
            response = SourceResponse(accepted=True, version=self._version, durable=0)
            self._events.append(SendBytes(encode_source_response(response)))
            self._events.append(DurableControl(self._durable, self._payload))
            return
        self._judge(request.source)

    def feed_eof(self) -> None:
        if self.state is ServerStreamState.AWAIT_REQUEST:
            try:
                self._reader.feed_eof()
            except WireError as exc:
                self._fail(str(exc))

    def resolved(self, addresses: Sequence[str]) -> None:
        source = self._expect_resolution()
        self._conclude(self._policy.decide_resolved(source, addresses))

    def resolution_failed(self, error: str) -> None:
        source = self._expect_resolution()
        self._conclude(self._policy.resolution_failed(source, error))

    def listening(self) -> None:
        """The reverse forward's listener is bound: accept the request (``"durable":0`` when the client asked for
        durable streams: its connections' streams will be durable)."""
        self._expect_listener()
        self.state = ServerStreamState.FORWARDING
        durable = 0 if self._durable is not None else None
        response = SourceResponse(accepted=True, version=self._version, durable=durable)
        self._events.append(SendBytes(encode_source_response(response)))

    def listen_failed(self, reason: str) -> None:
        """The listener could not be bound (port in use, permission): the client is told why."""
        self._expect_listener()
        self._reject(reason)

    # ------------------------------------------------------------------------------------------ outputs

    def next_event(self) -> ServerStreamEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def source_text(self) -> str | None:
        """The source exactly as the client asked for it (for logs)."""
        return self._source_text

    # ------------------------------------------------------------------------------------------ internals

    def _expect_resolution(self) -> Source:
        if self.state is not ServerStreamState.AWAIT_RESOLUTION or self._source is None:
            raise LocalProtocolError(f"no resolution pending (state {self.state.value})")
        return self._source

    def _expect_listener(self) -> None:
        if self.state is not ServerStreamState.AWAIT_LISTENER:
            raise LocalProtocolError(f"no listener pending (state {self.state.value})")

    def _judge(self, text: str) -> None:
        self._source_text = text
        if text.startswith(REVERSE_SCHEME) and self._durable is not None and self._durable.offset is not None:
            self._resume_reverse(text[len(REVERSE_SCHEME):], self._durable)
            return
        if text.startswith(REVERSE_SCHEME):
            self._judge_reverse(text[len(REVERSE_SCHEME):])
            return
        # Upstream tests the prefix case-sensitively before parsing; keep that so both servers answer alike.
        if not (text.startswith("tcp://") or text.startswith("udp://")):
            self._reject(INVALID_PROTOCOL_REASON)
            return
        try:
            source = parse_source(text)
        except PolicyError as exc:
            self._reject(str(exc))
            return
        self._source = source
        verdict = self._policy.decide(source)
        if isinstance(verdict, NeedsResolution):
            self.state = ServerStreamState.AWAIT_RESOLUTION
            self._events.append(ResolveHost(verdict.host, verdict.port))
            return
        self._conclude(verdict)

    def _judge_reverse(self, listen: str) -> None:
        try:
            ip, port = parse_target(listen)
        except PolicyError as exc:
            self._reject(str(exc))
            return
        if not listen_allowed(self._allow_listen, ip, port):
            self._reject(listen_refusal(listen))
            return
        self.state = ServerStreamState.AWAIT_LISTENER
        self._events.append(StartListening(listen, ip, port, self._durable))

    def _resume_reverse(self, listen: str, durable: DurableRequest) -> None:
        """A client continues a reverse forward's durable stream (its key is one the server gave): the held
        accepted connection, if we still have it; nothing is bound or dialled."""
        try:
            source = parse_source(f"tcp://{listen}")
        except PolicyError as exc:
            self._reject(str(exc))
            return
        self._source = source
        self._conclude(Decision(True, ()))  # nothing to dial: the socket is held (or the answer refuses)

    def _conclude(self, decision: Decision) -> None:
        if not decision.allowed:
            self._reject(decision.reason or "Source not allowed")
            return
        assert self._source is not None
        durable = self._durable if self._source.protocol == "tcp" else None
        offset: int | None = None
        if durable is not None:
            assert self._durable_answer is not None
            answer = self._durable_answer(durable)
            if isinstance(answer, str):
                self._reject(answer)
                return
            offset = answer
        self.state = ServerStreamState.FORWARDING
        flow = self._flow if self._datagrams and self._source.protocol == "udp" else None
        response = encode_source_response(SourceResponse(accepted=True, version=self._version, datagram_flow=flow,
                                                         durable=offset))
        self._events.append(SendBytes(response))
        self._events.append(StartForwarding(self._source, decision.addresses, self._payload, flow, durable))
        self._payload = b""

    def _reject(self, reason: str) -> None:
        self.state = ServerStreamState.REJECTED
        response = SourceResponse(accepted=False, reason=reason, version=self._version)
        self._events.append(SendBytes(encode_source_response(response), finish=True))
        self._events.append(StreamRejected(response.reason or reason, self._source_text))

    def _fail(self, error: str) -> None:
        self.state = ServerStreamState.FAILED
        self._events.append(StreamFailed(error))
