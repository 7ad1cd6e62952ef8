"""ICE candidate strings (upstream and aioice spellings), priorities, local preferences, foundations."""

from __future__ import annotations

import aioice
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_core.candidate import (
    TYPE_PREFERENCE,
    Candidate,
    CandidateError,
    CandidateType,
    compute_foundation,
    compute_priority,
    local_preference,
)
from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.peertext import quote_peer

UPSTREAM_EXAMPLES = [
    (
        "candidate:1a2b3c4d 1 udp 2130706431 192.168.1.20 51234 typ host",
        Candidate("1a2b3c4d", 1, "udp", 2130706431, "192.168.1.20", 51234, CandidateType.HOST),
    ),
    (
        "candidate:9f8e7d6c 1 udp 1694498559 203.0.113.7 40000 typ srflx raddr 0.0.0.0 rport 0",
        Candidate("9f8e7d6c", 1, "udp", 1694498559, "203.0.113.7", 40000, CandidateType.SRFLX, "0.0.0.0", 0),
    ),
    (
        "candidate:0011aabb 1 udp 1694498303 2001:db8::7 40001 typ srflx raddr :: rport 0",
        Candidate("0011aabb", 1, "udp", 1694498303, "2001:db8::7", 40001, CandidateType.SRFLX, "::", 0),
    ),
    (
        "candidate:77 1 udp 2130706175 fe80::1 5000 typ host ufrag Ab+/",
        Candidate("77", 1, "udp", 2130706175, "fe80::1", 5000, CandidateType.HOST, ufrag="Ab+/"),
    ),
]


@pytest.mark.parametrize(("text", "candidate"), UPSTREAM_EXAMPLES)
def test_upstream_examples_parse_and_print_identically(text: str, candidate: Candidate) -> None:
    assert Candidate.from_sdp(text) == candidate
    assert candidate.to_sdp() == text
    assert Candidate.from_sdp("a=" + text) == candidate
    assert Candidate.from_sdp(text.removeprefix("candidate:")) == candidate


def test_address_property() -> None:
    assert UPSTREAM_EXAMPLES[2][1].address == ("2001:db8::7", 40001)


def test_lenient_forms() -> None:
    text = "candidate:abc 1 UDP 100 10.0.0.1 9 typ relay raddr 10.0.0.2 rport 7 generation 0 network-id 1"
    parsed = Candidate.from_sdp(f"  {text}\r\n")
    assert parsed == Candidate("abc", 1, "udp", 100, "10.0.0.1", 9, CandidateType.RELAY, "10.0.0.2", 7)
    # Non-canonical IPv6 is stored the way the socket module reports addresses.
    assert Candidate.from_sdp("x 1 udp 1 2001:DB8:0:0::1 9 typ host").host == "2001:db8::1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "candidate:",
        "candidate:abc 1 udp 100 10.0.0.1 9 typ",  # no type
        "candidate:abc 1 udp 100 10.0.0.1 9 type host",
        "candidate:abc 1 udp 100 10.0.0.1 9 typ bogus",
        "candidate:abc 1 sctp 100 10.0.0.1 9 typ host",
        "candidate:abc 0 udp 100 10.0.0.1 9 typ host",  # component 0
        "candidate:abc 1 udp -5 10.0.0.1 9 typ host",
        "candidate:abc 1 udp 4294967296 10.0.0.1 9 typ host",
        "candidate:abc 1 udp 1_0 10.0.0.1 9 typ host",
        "candidate:abc 1 udp 100 example.com 9 typ host",  # hostnames are not allowed
        "candidate:abc 1 udp 100 [::1] 9 typ host",  # nor brackets
        "candidate:abc 1 udp 100 fe80::1%eth0 9 typ host",  # nor scope ids
        "candidate:abc 1 udp 100 abcd.local 9 typ host",  # nor mDNS names
        "candidate:abc 1 udp 100 10.0.0.1 65536 typ host",
        "candidate:abc 1 udp 100 10.0.0.1 9 typ srflx raddr nowhere rport 0",
        "candidate:abc 1 udp 100 10.0.0.1 9 typ srflx raddr 0.0.0.0 rport",  # dangling key
        "candidate:abc 1 udp 100 10.0.0.1 9 typ srflx raddr 0.0.0.0 rport x",
        "candidate:ab!c 1 udp 100 10.0.0.1 9 typ host",  # foundation outside ice-chars
        "candidate:" + "a" * 33 + " 1 udp 100 10.0.0.1 9 typ host",
        "candidate:abc 1 udp 100 10.0.0.1 9 typ host ufrag bad-ufrag",
    ],
)
def test_bad_candidates_raise_with_upstream_wording(text: str) -> None:
    with pytest.raises(CandidateError) as caught:
        Candidate.from_sdp(text)
    assert str(caught.value) == f"Invalid ICE candidate: {text}"
    assert isinstance(caught.value, RemoteProtocolError)


def test_non_string_input_raises_candidate_error() -> None:
    with pytest.raises(CandidateError):
        Candidate.from_sdp(None)  # type: ignore[arg-type]


# --- priorities and foundations ------------------------------------------------------------------------


def test_first_ipv4_host_priority_matches_upstream_example() -> None:
    assert compute_priority(CandidateType.HOST, local_preference(CandidateType.HOST, False, 0)) == 2130706431
    assert 126 * 2**24 + 65535 * 2**8 + 255 == 2130706431


@pytest.mark.parametrize(
    ("ctype", "start"),
    [(CandidateType.HOST, 65535), (CandidateType.PRFLX, 49151), (CandidateType.SRFLX, 32767),
     (CandidateType.RELAY, 16383)],
)
def test_local_preference_table(ctype: CandidateType, start: int) -> None:
    assert local_preference(ctype, False, 0) == start
    assert local_preference(ctype, True, 0) == start - 1
    assert local_preference(ctype, False, 3) == start - 6
    assert local_preference(ctype, True, 3) == start - 7


def test_priorities_order_by_type_then_family_then_index() -> None:
    def prio(ctype: CandidateType, v6: bool, index: int) -> int:
        return compute_priority(ctype, local_preference(ctype, v6, index))

    assert TYPE_PREFERENCE == {CandidateType.HOST: 126, CandidateType.PRFLX: 110, CandidateType.SRFLX: 100,
                               CandidateType.RELAY: 0}
    assert prio(CandidateType.HOST, True, 100) > prio(CandidateType.PRFLX, False, 0)
    assert prio(CandidateType.PRFLX, True, 100) > prio(CandidateType.SRFLX, False, 0)
    assert prio(CandidateType.SRFLX, True, 100) > prio(CandidateType.RELAY, False, 0)
    host = CandidateType.HOST
    assert prio(host, False, 0) > prio(host, True, 0) > prio(host, False, 1) > prio(host, True, 1)
    assert compute_priority(CandidateType.SRFLX, 32767) == 100 * 2**24 + 32767 * 2**8 + 255
    assert compute_priority(CandidateType.HOST, 65535, component=2) == 2130706430


def test_priority_and_preference_argument_checks() -> None:
    for call in (
        lambda: local_preference(CandidateType.HOST, False, -1),
        lambda: local_preference(CandidateType.RELAY, False, 9000),
        lambda: compute_priority(CandidateType.HOST, 65536),
        lambda: compute_priority(CandidateType.HOST, 1, component=0),
    ):
        with pytest.raises(LocalProtocolError):
            call()


def test_foundation_is_stable_and_distinguishes_inputs() -> None:
    a = compute_foundation(CandidateType.HOST, "192.168.1.2")
    assert a == compute_foundation(CandidateType.HOST, "192.168.1.2")
    assert len(a) <= 32 and all(c in "0123456789abcdef" for c in a)
    others = {
        compute_foundation(CandidateType.HOST, "192.168.1.3"),
        compute_foundation(CandidateType.SRFLX, "192.168.1.2", "127.0.0.1:3478"),
        compute_foundation(CandidateType.SRFLX, "192.168.1.2", "127.0.0.1:3479"),
        compute_foundation(CandidateType.RELAY, "192.168.1.2", "127.0.0.1:3478"),
    }
    assert a not in others and len(others) == 4
    # A foundation is always a valid candidate-string token.
    text = f"candidate:{a} 1 udp 1 192.168.1.2 9 typ host"
    assert Candidate.from_sdp(text).foundation == a


# --- interop with aioice and properties ----------------------------------------------------------------

ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda ip: ip.compressed))
ice_tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/", min_size=1,
                     max_size=32)
ports = st.integers(0, 65535)


@st.composite
def candidates(draw: st.DrawFn) -> Candidate:
    ctype = draw(st.sampled_from(CandidateType))
    related = ctype is not CandidateType.HOST and draw(st.booleans())
    return Candidate(
        foundation=draw(ice_tokens),
        component=draw(st.integers(1, 256)),
        transport=draw(st.sampled_from(["udp", "tcp"])),
        priority=draw(st.integers(0, 2**32 - 1)),
        host=draw(ips),
        port=draw(ports),
        type=ctype,
        related_address=draw(ips) if related else None,
        related_port=draw(ports) if related else None,
        ufrag=draw(st.none() | ice_tokens),
    )


@settings(max_examples=300)
@given(candidates())
def test_round_trip(candidate: Candidate) -> None:
    text = candidate.to_sdp()
    assert Candidate.from_sdp(text) == candidate
    assert Candidate.from_sdp("a=" + text) == candidate


@settings(max_examples=200)
@given(candidates(), st.none() | st.integers(0, 10))
def test_aioice_strings_parse(candidate: Candidate, generation: int | None) -> None:
    theirs = aioice.Candidate(
        foundation=candidate.foundation, component=candidate.component, transport=candidate.transport,
        priority=candidate.priority, host=candidate.host, port=candidate.port, type=candidate.type.value,
        related_address=candidate.related_address, related_port=candidate.related_port, generation=generation,
    )
    text = theirs.to_sdp()
    assert not text.startswith("candidate:")
    assert Candidate.from_sdp(text) == attrs.evolve(candidate, ufrag=None)  # aioice has no ufrag field


@settings(max_examples=200)
@given(candidates())
def test_aioice_parses_ours(candidate: Candidate) -> None:
    theirs = aioice.Candidate.from_sdp(candidate.to_sdp().removeprefix("candidate:"))
    assert (theirs.foundation, theirs.component, theirs.transport, theirs.priority, theirs.host, theirs.port,
            theirs.type, theirs.related_address, theirs.related_port) == (
        candidate.foundation, candidate.component, candidate.transport, candidate.priority, candidate.host,
        candidate.port, candidate.type.value, candidate.related_address, candidate.related_port)


def test_aioice_real_gathering_shape() -> None:
    """A string built the way aioice builds srflx candidates (md5 foundation, generation) parses."""
    theirs = aioice.Candidate(
        foundation=aioice.candidate.candidate_foundation("srflx", "udp", "192.0.2.10"), component=1,
        transport="udp", priority=aioice.candidate.candidate_priority(1, "srflx"), host="198.51.100.4",
        port=61000, type="srflx", related_address="192.0.2.10", related_port=50000, generation=0,
    )
    ours = Candidate.from_sdp(theirs.to_sdp())
    assert ours.type is CandidateType.SRFLX
    assert ours.address == ("198.51.100.4", 61000)
    assert (ours.related_address, ours.related_port) == ("192.0.2.10", 50000)
    assert ours.priority == theirs.priority and ours.foundation == theirs.foundation


@settings(max_examples=500)
@given(st.text(max_size=120))
def test_arbitrary_text_raises_only_candidate_error(text: str) -> None:
    try:
        Candidate.from_sdp(text)
    except CandidateError as exc:
        # Peer text is escaped and capped in messages (issue 18 item 6).
        assert str(exc) == f"Invalid ICE candidate: {quote_peer(text)}"


@settings(max_examples=500)
@given(st.lists(st.sampled_from(["candidate:a", "1", "udp", "UDP", "0", "99999999999", "10.0.0.1", "::",
                                 "typ", "host", "srflx", "raddr", "rport", "ufrag", "x", "-1", "generation",
                                 "1.2.3", "65535", "fe80::1%1"]), max_size=14))
def test_token_soup_raises_only_candidate_error(tokens: list[str]) -> None:
    text = " ".join(tokens)
    try:
        parsed = Candidate.from_sdp(text)
    except CandidateError as exc:
        assert str(exc) == f"Invalid ICE candidate: {text}"
        return
    assert Candidate.from_sdp(parsed.to_sdp()) == parsed
