"""tunnel_core.policy: source/target/CIDR parsing and the stricter-than-upstream access decision."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.errors import LocalProtocolError
from tunnel_core.policy import (
    AccessPolicy,
    Decision,
    NeedsResolution,
    PolicyError,
    Source,
    parse_cidr,
    parse_source,
    parse_target,
)

LOOPBACK = AccessPolicy.from_strings(["127.0.0.0/8", "::1/128"], ["127.0.0.1/32"])


# ---------------------------------------------------------------------------------------------- parse_source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:22", Source("tcp", "127.0.0.1", 22)),
        ("udp://127.0.0.1:53", Source("udp", "127.0.0.1", 53)),
        ("TCP://localhost:22", Source("tcp", "localhost", 22)),
        ("Udp://Example.COM:65535", Source("udp", "example.com", 65535)),
        ("tcp://[::1]:22", Source("tcp", "::1", 22)),
        ("tcp://[0:0::1]:22", Source("tcp", "::1", 22)),
        ("tcp://[::FFFF:127.0.0.1]:22", Source("tcp", str(ipaddress.ip_address("::ffff:127.0.0.1")), 22)),
        ("tcp://my_host.internal.:8080", Source("tcp", "my_host.internal", 8080)),
        ("  tcp://127.0.0.1:22\n", Source("tcp", "127.0.0.1", 22)),
    ],
)
def test_parse_source_valid(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "127.0.0.1:22", "tcp:/127.0.0.1:22", "http://127.0.0.1:22", "tcp://", "tcp://127.0.0.1",
        "tcp://127.0.0.1:", "tcp://:22", "tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://127.0.0.1:99999999",
        "tcp://127.0.0.1:22/path", "tcp://127.0.0.1:22?x", "tcp://user@127.0.0.1:22", "tcp://::1:22",
        "tcp://[::1]22", "tcp://[::1:22", "tcp://[127.0.0.1]:22", "tcp://[fe80::1%eth0]:22", "tcp://1.2.3.999:22",
        "tcp://0x7f.1:22", "tcp://host name:22", "tcp://-bad.example:22", "tcp://a..b:22", "tcp://127.0.0.1:+22",
        "tcp://127.0.0.1:2 2", "tcp://h\u00e9.example:22", "tcp://" + "a" * 64 + ".com:22",
    ],
)
def test_parse_source_invalid(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_source(text)
    assert str(info.value) == f"Invalid source '{text}'. Expected format: tcp://host:port or udp://host:port"


def test_source_url_brackets_ipv6_and_normalises() -> None:
    assert parse_source("TCP://[::1]:22").url() == "tcp://[::1]:22"
    assert parse_source("udp://LocalHost:53").url() == "udp://localhost:53"


@given(st.text(max_size=60))
def test_parse_source_arbitrary_text_raises_only_policy_error(text: str) -> None:
    try:
        source = parse_source(text)
    except PolicyError:
        return
    assert parse_source(source.url()) == source  # anything accepted is canonical after one pass


@given(
    protocol=st.sampled_from(["tcp", "udp"]),
    address=st.ip_addresses(),
    port=st.integers(1, 65535),
)
def test_parse_source_ip_round_trip(protocol: str, address: ipaddress.IPv4Address, port: int) -> None:
    source = Source(protocol, str(address), port)  # type: ignore[arg-type]
    assert parse_source(source.url()) == source


# ---------------------------------------------------------------------------------------------- parse_target


def test_parse_target() -> None:
    assert parse_target("localhost:2222") == ("localhost", 2222)
    assert parse_target("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_target("[::1]:2222") == ("::1", 2222)


@pytest.mark.parametrize("text", ["", "2222", "localhost", ":2222", "::1:2222", "host:port", "h:70000", "tcp://h:1"])
def test_parse_target_invalid(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_target(text)
    assert str(info.value) == (
        f"Invalid target '{text}'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)"
    )


@given(st.text(max_size=40))
def test_parse_target_arbitrary_text_raises_only_policy_error(text: str) -> None:
    try:
        parse_target(text)
    except PolicyError:
        pass


# ---------------------------------------------------------------------------------------------- parse_cidr


def test_parse_cidr_valid_and_host_bits_allowed() -> None:
    assert parse_cidr("192.168.0.0/16") == ipaddress.ip_network("192.168.0.0/16")
    assert parse_cidr("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_cidr("::1/128") == ipaddress.ip_network("::1/128")
    assert parse_cidr("fe80::1/10") == ipaddress.ip_network("fe80::/10")
    assert parse_cidr("0.0.0.0/0") == ipaddress.ip_network("0.0.0.0/0")


@pytest.mark.parametrize(
    "text", ["", "10.0.0.0", "10.0.0.0/33", "::/129", "10.0.0.0/255.0.0.0", "10.0.0/8", "x/8", "10.0.0.0/-1",
             "fe80::1%eth0/64", "10.0.0.0/8/8"],
)
def test_parse_cidr_invalid(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_cidr(text, "--allowed-udp")
    assert str(info.value) == f"Invalid CIDR '{text}' in --allowed-udp. Expected format: 192.168.0.0/16 or ::1/128"


def test_from_strings_names_the_option() -> None:
    with pytest.raises(PolicyError, match=r"in --allowed-tcp\."):
        AccessPolicy.from_strings(["bad"], [])
    with pytest.raises(PolicyError, match=r"in --allowed-udp\."):
        AccessPolicy.from_strings([], ["bad"])


@given(st.text(max_size=40))
def test_parse_cidr_arbitrary_text_raises_only_policy_error(text: str) -> None:
    try:
        parse_cidr(text)
    except PolicyError:
        pass


# ---------------------------------------------------------------------------------------------- decisions


def test_ip_literal_decided_at_once() -> None:
    assert LOOPBACK.decide(parse_source("tcp://127.0.0.5:22")) == Decision(True, (("127.0.0.5", 22),))
    assert LOOPBACK.decide(parse_source("tcp://[::1]:22")) == Decision(True, (("::1", 22),))


def test_ip_literal_outside_is_rejected_with_upstream_wording() -> None:
    decision = LOOPBACK.decide(parse_source("tcp://10.0.0.1:22"))
    assert decision == Decision(
        False, (), "Source 'tcp://10.0.0.1:22' (resolved to 10.0.0.1) not in allowed networks "
        '["127.0.0.0/8", "::1/128"]',
    )


def test_empty_list_denies_the_protocol() -> None:
    policy = AccessPolicy.from_strings(["127.0.0.0/8"], [])
    decision = policy.decide(parse_source("udp://127.0.0.1:53"))
    assert isinstance(decision, Decision)
    assert not decision.allowed
    assert decision.reason is not None and "udp forwarding is not allowed" in decision.reason
    assert not AccessPolicy().decide_resolved(parse_source("tcp://localhost:1"), ["127.0.0.1"]).allowed
    assert not AccessPolicy().decide(parse_source("tcp://localhost:1")).allowed  # type: ignore[union-attr]


def test_protocol_lists_are_separate() -> None:
    assert not LOOPBACK.decide(parse_source("udp://127.0.0.2:53")).allowed  # type: ignore[union-attr]
    assert LOOPBACK.decide(parse_source("udp://127.0.0.1:53")).allowed  # type: ignore[union-attr]


def test_hostname_needs_resolution() -> None:
    assert LOOPBACK.decide(parse_source("tcp://localhost:22")) == NeedsResolution("localhost", 22)


def test_hostname_all_addresses_must_match() -> None:
    source = parse_source("tcp://example.test:22")
    allowed = LOOPBACK.decide_resolved(source, ["127.0.0.1", "::1", "127.0.0.1"])
    assert allowed == Decision(True, (("127.0.0.1", 22), ("::1", 22)))
    denied = LOOPBACK.decide_resolved(source, ["127.0.0.1", "192.0.2.7"])
    assert not denied.allowed
    assert denied.addresses == ()
    assert denied.reason == (
        "Source 'tcp://example.test:22' (resolved to 127.0.0.1, 192.0.2.7) not in allowed networks "
        '["127.0.0.0/8", "::1/128"]'
    )


def test_no_addresses() -> None:
    decision = LOOPBACK.decide_resolved(parse_source("tcp://example.test:22"), [])
    assert decision == Decision(False, (), "Source 'tcp://example.test:22': DNS resolution returned no addresses")


def test_resolution_failed_reason() -> None:
    decision = LOOPBACK.resolution_failed(parse_source("tcp://nx.test:22"), "Name or service not known")
    assert decision == Decision(
        False, (), "Source 'tcp://nx.test:22': DNS resolution failed: Name or service not known"
    )


def test_ipv4_mapped_is_checked_as_ipv4() -> None:
    everything_v6 = AccessPolicy.from_strings(["::/0"], [])
    assert not everything_v6.decide(parse_source("tcp://[::ffff:10.0.0.1]:22")).allowed  # type: ignore[union-attr]
    assert not everything_v6.decide_resolved(parse_source("tcp://h.test:22"), ["::ffff:10.0.0.1"]).allowed
    decision = LOOPBACK.decide(parse_source("tcp://[::ffff:127.0.0.1]:22"))
    assert decision == Decision(True, (("127.0.0.1", 22),))  # dial what was checked


def test_ipv6_networks() -> None:
    policy = AccessPolicy.from_strings(["fd00::/8"], [])
    assert policy.decide(parse_source("tcp://[fd12::5]:80")).allowed  # type: ignore[union-attr]
    assert not policy.decide(parse_source("tcp://[fe80::5]:80")).allowed  # type: ignore[union-attr]
    assert not policy.decide(parse_source("tcp://127.0.0.1:80")).allowed  # type: ignore[union-attr]
    scoped = AccessPolicy.from_strings(["fe80::/10"], []).decide_resolved(
        parse_source("tcp://ll.test:80"), ["fe80::1%eth0"]
    )
    assert scoped.allowed


def test_bad_resolver_output_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        LOOPBACK.decide_resolved(parse_source("tcp://h.test:1"), ["not-an-ip"])


def test_reason_is_truncated() -> None:
    many = AccessPolicy.from_strings([f"10.{i}.0.0/16" for i in range(100)], [])
    decision = many.decide(parse_source("tcp://127.0.0.1:22"))
    assert not decision.allowed  # type: ignore[union-attr]
    assert len(decision.reason.encode()) == 512  # type: ignore[union-attr]
    assert decision.reason.endswith("...")  # type: ignore[union-attr]


@given(st.lists(st.ip_addresses(), min_size=1, max_size=6))
def test_decision_property_all_must_match(addresses: list[ipaddress.IPv4Address]) -> None:
    policy = AccessPolicy.from_strings(["10.0.0.0/8", "fd00::/8"], [])
    decision = policy.decide_resolved(parse_source("tcp://h.test:9"), [str(a) for a in addresses])

    def effective(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a

    inside = [any(effective(a) in n for n in policy.tcp) for a in addresses]
    assert decision.allowed == all(inside)
    if decision.allowed:
        assert {ip for ip, _ in decision.addresses} == {str(effective(a)) for a in addresses}
        assert all(port == 9 for _, port in decision.addresses)
    else:
        assert decision.addresses == ()
