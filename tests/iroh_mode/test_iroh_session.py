"""The sans-IO iroh-mode machines: server stream dialogue, client stream dialogue, gate, limiter, paths."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_session import (
    ALPN_E2,
    CLOSE_DONE,
    CLOSE_UNAUTHORIZED,
    ClientAllowlist,
    ClientStream,
    ClientStreamState,
    PathReporter,
    PathView,
    ResolveHost,
    SendBytes,
    ServerStream,
    ServerStreamState,
    SessionLimiter,
    SourceAccepted,
    SourceRejected,
    StartForwarding,
    StreamFailed,
    StreamRejected,
    describe_path,
)
from tunnel_core.iroh_session.socks import (
    ProxyError,
    check_proxy_for_relays,
    onion_target,
    parse_socks5_proxy,
    socks5_connect_request,
)
from tunnel_core.policy import AccessPolicy
from tunnel_core.wire import SourceRequest, WireError, encode_source_request

POLICY = AccessPolicy.from_strings(["127.0.0.0/8"], ["10.0.0.0/8"])


def request(source: str, version: int = 1) -> bytes:
    return encode_source_request(SourceRequest(source=source, version=version))


def response_json(event: SendBytes) -> dict[str, object]:
    assert int.from_bytes(event.data[:4], "big") == len(event.data) - 4
    return json.loads(event.data[4:])


def drain(machine: ServerStream | ClientStream) -> list[object]:
    out = []
    while (event := machine.next_event()) is not None:
        out.append(event)
    return out


def test_constants_are_the_e2_generation() -> None:
    assert ALPN_E2 == b"multi-forward/1"
    assert (CLOSE_UNAUTHORIZED.code, CLOSE_UNAUTHORIZED.reason) == (1, b"unauthorized")
    assert (CLOSE_DONE.code, CLOSE_DONE.reason) == (0, b"done")


def test_accepted_ip_literal_forwards_exactly_the_checked_address() -> None:
    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://127.0.0.1:22") + b"early")
    send, start = drain(machine)
    assert isinstance(send, SendBytes) and not send.finish
    assert send.data == b'\x00\x00\x00\x1d{"version":1,"accepted":true}'
    assert isinstance(start, StartForwarding)
    assert start.addresses == (("127.0.0.1", 22),) and start.payload == b"early"
    assert machine.state is ServerStreamState.FORWARDING
    machine.feed(b"more")  # forwarding bytes are not the machine's business
    assert drain(machine) == []


def test_no_permit_rejects_before_reading_anything() -> None:
    machine = ServerStream(POLICY, permit=False)
    send, rejected = drain(machine)
    assert isinstance(send, SendBytes) and send.finish
    assert response_json(send) == {"version": 1, "accepted": False, "reason": "Session limit reached"}
    assert isinstance(rejected, StreamRejected)
    machine.feed(request("tcp://127.0.0.1:22"))
    assert drain(machine) == [] and machine.state is ServerStreamState.REJECTED


@pytest.mark.parametrize("source", ["http://127.0.0.1:80", "TCP://127.0.0.1:22", "127.0.0.1:22"])
def test_scheme_is_checked_by_prefix(source: str) -> None:
    machine = ServerStream(POLICY, permit=True)
    machine.feed(request(source))
    send, rejected = drain(machine)
    assert response_json(send)["reason"] == "Invalid protocol (must be tcp:// or udp://)"
    assert isinstance(rejected, StreamRejected) and rejected.source == source


def test_outside_allowlist_and_unparsable_sources_are_rejected_with_reasons() -> None:
    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://192.168.1.1:22"))
    send, _ = drain(machine)
    assert response_json(send)["reason"] == (
        "Source 'tcp://192.168.1.1:22' (resolved to 192.168.1.1) not in allowed networks [\"127.0.0.0/8\"]"
    )
    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://bad host:22"))
    send, _ = drain(machine)
    assert "Invalid source" in str(response_json(send)["reason"])


def test_hostname_needs_resolution_then_every_address_must_be_allowed() -> None:
    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://localhost:22"))
    assert drain(machine) == [ResolveHost("localhost", 22)]
    machine.feed(b"x")  # early payload is kept for the verdict
    machine.resolved(["127.0.0.1", "127.0.0.2"])
    send, start = drain(machine)
    assert response_json(send)["accepted"] is True
    assert isinstance(start, StartForwarding) and start.payload == b"x"
    assert start.addresses == (("127.0.0.1", 22), ("127.0.0.2", 22))

    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://mixed.example:22"))
    drain(machine)
    machine.resolved(["127.0.0.1", "8.8.8.8"])
    send, rejected = drain(machine)
    assert response_json(send)["accepted"] is False and isinstance(rejected, StreamRejected)

    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://nowhere.example:22"))
    drain(machine)
    machine.resolution_failed("Name or service not known")
    send, _ = drain(machine)
    assert "DNS resolution failed: Name or service not known" in str(response_json(send)["reason"])
    with pytest.raises(LocalProtocolError):
        machine.resolved(["127.0.0.1"])


def test_protocol_errors_fail_the_stream_without_a_response() -> None:
    machine = ServerStream(POLICY, permit=True)
    machine.feed(request("tcp://127.0.0.1:22", version=3))
    (failed,) = drain(machine)
    assert isinstance(failed, StreamFailed) and "version mismatch: expected 1, got 3" in failed.error
    machine = ServerStream(POLICY, permit=True)
    machine.feed(b"\xff\xff\xff\xff")
    assert isinstance(drain(machine)[0], StreamFailed)
    machine = ServerStream(POLICY, permit=True)
    machine.feed(b"\x00\x00")
    machine.feed_eof()
    (failed,) = drain(machine)
    assert isinstance(failed, StreamFailed) and "too short" in failed.error


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_request_split_anywhere_gives_the_same_verdict(cuts: list[int]) -> None:
    data = request("udp://10.1.2.3:53")
    machine = ServerStream(POLICY, permit=True)
    offset = 0
    for cut in cuts:
        machine.feed(data[offset : offset + cut])
        offset += cut
    machine.feed(data[offset:])
    events = drain(machine)
    assert isinstance(events[-1], StartForwarding) and events[-1].addresses == (("10.1.2.3", 53),)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_server_machine(data: bytes) -> None:
    machine = ServerStream(POLICY, permit=True)
    machine.feed(data)
    machine.feed_eof()
    for event in drain(machine):
        assert isinstance(event, SendBytes | StreamRejected | StreamFailed | StartForwarding | ResolveHost)


def test_client_stream_accept_reject_and_errors() -> None:
    client = ClientStream("tcp://127.0.0.1:22")
    assert client.request_bytes() == b'\x00\x00\x00\x2b{"version":1,"source":"tcp://127.0.0.1:22"}'
    accepted = b'\x00\x00\x00\x1d{"version":1,"accepted":true}'
    client.feed(accepted[:5])
    assert client.next_event() is None
    client.feed(accepted[5:] + b"payload")
    assert drain(client) == [SourceAccepted(b"payload")]
    assert client.state is ClientStreamState.ACCEPTED

    client = ClientStream("tcp://127.0.0.1:22")
    body = b'{"version":1,"accepted":false,"reason":"Session limit reached"}'
    client.feed(len(body).to_bytes(4, "big") + body)
    (rejected,) = drain(client)
    assert isinstance(rejected, SourceRejected)
    assert rejected.message() == "Source request rejected: Session limit reached"

    client = ClientStream("tcp://127.0.0.1:22")
    body = b'{"version":4,"accepted":true}'
    with pytest.raises(WireError, match="version mismatch"):
        client.feed(len(body).to_bytes(4, "big") + body)
    assert client.state is ClientStreamState.FAILED

    client = ClientStream("tcp://127.0.0.1:22")
    with pytest.raises(WireError):
        client.feed_eof()


def test_allowlist_and_limiter() -> None:
    a, b = bytes(32), b"\x01" * 32
    gate = ClientAllowlist([a])
    assert gate.allows(a) and not gate.allows(b) and len(gate) == 1
    assert not ClientAllowlist([]).allows(a)
    with pytest.raises(LocalProtocolError):
        ClientAllowlist([b"short"])
    limiter = SessionLimiter(2)
    assert limiter.try_acquire() and limiter.try_acquire() and not limiter.try_acquire()
    limiter.release()
    assert limiter.active == 1 and limiter.try_acquire()
    limiter.release()
    limiter.release()
    with pytest.raises(LocalProtocolError):
        limiter.release()
    with pytest.raises(LocalProtocolError):
        SessionLimiter(0)


def test_path_reporter_speaks_only_on_changes() -> None:
    reporter = PathReporter()
    relay = PathView("http://127.0.0.1:3340/", is_relay=True, selected=True, rtt_ms=12.4)
    direct = PathView("127.0.0.1:5000", is_relay=False, selected=True, rtt_ms=0.3)
    assert reporter.update([relay]) == "Connection: Relay http://127.0.0.1:3340/ (rtt 12ms)"
    assert reporter.update([attr_copy(relay, rtt_ms=30.0)]) is None
    assert reporter.update([attr_copy(relay, selected=False), direct]) == "Connection: Direct 127.0.0.1:5000 (rtt <1ms)"
    assert reporter.update([]) is None
    assert reporter.update([relay]) == "Connection: Relay http://127.0.0.1:3340/ (rtt 12ms)"
    assert describe_path(PathView("1.2.3.4:5", False, True, None)) == "Direct 1.2.3.4:5 (rtt ?)"


def attr_copy(view: PathView, **changes: object) -> PathView:
    import attrs

    return attrs.evolve(view, **changes)


def test_socks5_settings() -> None:
    assert parse_socks5_proxy("127.0.0.1:9050").scheme == "socks5h"
    assert parse_socks5_proxy("socks5://proxy").port == 1080
    for bad in ("http://127.0.0.1:9050", "socks5://", "socks5h://h:99999", "socks5h://h:1/path"):
        with pytest.raises(ProxyError):
            parse_socks5_proxy(bad)
    assert onion_target("https://abc.onion/") == ("abc.onion", 443)
    assert onion_target("http://abc.onion:8080") == ("abc.onion", 8080)
    assert onion_target("https://relay.example") is None
    check_proxy_for_relays(None, ("https://relay.example",))
    with pytest.raises(ProxyError, match="SOCKS5 proxy required"):
        check_proxy_for_relays(None, ("http://abc.onion",))
    with pytest.raises(ProxyError, match="socks5h"):
        check_proxy_for_relays("socks5://127.0.0.1:9050", ("http://abc.onion",))
    assert socks5_connect_request("abc.onion", 80) == b"\x05\x01\x00\x03\x09abc.onion\x00\x50"
