"""Reverse and dynamic forwards' shared core pieces (issue 17): the --allow-listen rule, iroh's server stream for a
``reverse://`` request (listen, then accept or refuse with the bind error), the SOCKS reply for a refusal, and the
one error a client gets from a server without the capability."""

from __future__ import annotations

import json

import pytest

from tunnel_core.dialogue import DYNAMIC_SOURCE, LocalForward, ReverseForward, old_server_error
from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_session import SendBytes, ServerStream, StartListening, StreamRejected
from tunnel_core.options import ExitCode
from tunnel_core.policy import AccessPolicy, parse_source
from tunnel_core.reverse import cannot_listen, listen_allowed, listen_refusal
from tunnel_core.socks5 import HOST_UNREACHABLE, NOT_ALLOWED, refusal_code
from tunnel_core.wire import SourceRequest, encode_source_request


def test_listen_allowed_matches_exact_addresses_only() -> None:
    allowed = ["127.0.0.1:8080", "[::1]:9000"]
    assert listen_allowed(allowed, "127.0.0.1", 8080)
    assert listen_allowed(allowed, "::1", 9000)
    assert not listen_allowed(allowed, "127.0.0.1", 8081)
    assert not listen_allowed(allowed, "0.0.0.0", 8080)
    assert not listen_allowed(allowed, "localhost", 8080)  # a name never matches
    assert not listen_allowed(["127.0.0.1:0"], "127.0.0.1", 0)
    assert not listen_allowed([], "127.0.0.1", 8080)


def _stream(source: str, allow_listen: tuple[str, ...] = ()) -> tuple[ServerStream, list[object]]:
    machine = ServerStream(AccessPolicy.from_strings(["127.0.0.0/8"], []), permit=True, allow_listen=allow_listen)
    machine.feed(encode_source_request(SourceRequest(source=source)))
    events = []
    while (event := machine.next_event()) is not None:
        events.append(event)
    return machine, events


def _response(event: object) -> dict[str, object]:
    assert isinstance(event, SendBytes)
    return json.loads(event.data[4:])


def test_iroh_reverse_request_listens_then_accepts_or_refuses_with_the_bind_error() -> None:
    machine, events = _stream("reverse://127.0.0.1:8080", ("127.0.0.1:8080",))
    assert events == [StartListening("127.0.0.1:8080", "127.0.0.1", 8080)]  # nothing answered before the bind
    machine.listening()
    assert _response(machine.next_event()) == {"version": 1, "accepted": True}
    with pytest.raises(LocalProtocolError):
        machine.listening()

    machine, _ = _stream("reverse://127.0.0.1:8080", ("127.0.0.1:8080",))
    machine.listen_failed(cannot_listen("127.0.0.1:8080", "Address already in use"))
    refused = machine.next_event()
    assert _response(refused)["reason"] == "The server cannot listen on 127.0.0.1:8080: Address already in use"
    assert isinstance(refused, SendBytes) and refused.finish


def test_iroh_reverse_request_outside_allow_listen_is_refused_without_listening() -> None:
    _, events = _stream("reverse://127.0.0.1:8081", ("127.0.0.1:8080",))
    assert not any(isinstance(e, StartListening) for e in events)
    assert _response(events[0])["reason"] == listen_refusal("127.0.0.1:8081")
    assert isinstance(events[1], StreamRejected)


def test_socks_reply_for_a_refusal() -> None:
    assert refusal_code("Source 'tcp://x:1': DNS resolution failed: no such host") == HOST_UNREACHABLE
    assert refusal_code("Source 'tcp://127.0.0.3:1' (resolved to 127.0.0.3) not in allowed networks") == NOT_ALLOWED


def test_a_server_without_the_capability_is_named_by_what_the_client_asked_for() -> None:
    plain = LocalForward(parse_source("tcp://127.0.0.1:22"), "127.0.0.1:2222", "127.0.0.1", 2222)
    dynamic = LocalForward(None, "127.0.0.1:1080", "127.0.0.1", 1080)
    reverse = ReverseForward("127.0.0.1:8080", parse_source("tcp://127.0.0.1:3000"), (("127.0.0.1", 3000),))
    assert dynamic.url() == DYNAMIC_SOURCE
    assert "several forwards in one tunnel" in old_server_error([plain, plain]).message
    assert old_server_error([dynamic]).message == ("The server does not support dynamic forwarding (--socks5) "
                                                   "(upstream tunnel-rs or an older tunnel)")
    both = old_server_error([plain, dynamic], [reverse])
    assert "dynamic forwarding (--socks5) or reverse forwards (--reverse)" in both.message
    assert both.exit_code is ExitCode.GENERAL
