"""The peer's ICE side and fingerprint are checked before they reach a machine (issue 18 items 2, 3, 7, 8)."""

from __future__ import annotations

import pytest

from tunnel_core import manual
from tunnel_core.blocks import BlockError
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.ice.agent import IceAgent
from tunnel_core.ice.checklist import usable_remote_address
from tunnel_core.policy import AccessPolicy, parse_source

HOST = "candidate:1 1 udp 2130706431 192.0.2.7 5000 typ host"


def _rng(n: int) -> bytes:
    return bytes(range(n))


@pytest.mark.parametrize(("ufrag", "pwd"), [
    ("u" * 65_000, "p" * 24), ("abc", "p" * 24), ("ab:cd", "p" * 24), ("abcd", "short"), ("abcd", "p" * 300),
    ("abcd\x1b", "p" * 24),
])
def test_bad_credentials_are_a_signal_error(ufrag: str, pwd: str) -> None:
    with pytest.raises(BlockError, match="Invalid ICE credentials"):
        manual.remote_ice(ufrag, pwd, [HOST])


def test_good_side_parses() -> None:
    remote = manual.remote_ice("abcd", "p" * 22, [HOST])
    assert remote.candidates[0].address == ("192.0.2.7", 5000)


def test_agent_refuses_credentials_it_could_not_put_into_a_check() -> None:
    agent = IceAgent(controlling=True, rng=_rng)
    with pytest.raises(RemoteProtocolError):
        agent.set_remote("u" * 65_000, "p" * 24, [])


@pytest.mark.parametrize("text", [None, "", "ab" * 31, "zz" * 32, "ab" * 32 + "\x1b[2J", "\x07" * 5000])
def test_malformed_fingerprints_are_signal_errors(text: str | None) -> None:
    with pytest.raises(BlockError) as info:
        manual.peer_fingerprint(text)
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value) and len(str(info.value)) < 250


def test_fingerprint_spellings_normalise() -> None:
    assert manual.peer_fingerprint("AB" * 32) == "ab" * 32
    assert manual.peer_fingerprint(":".join(["ab"] * 32)) == "ab" * 32


@pytest.mark.parametrize(("host", "usable"), [
    ("0.0.0.0", False), ("::", False), ("::ffff:0.0.0.0", False), ("255.255.255.255", False), ("224.0.0.1", False),
    ("ff02::1", False), ("127.0.0.1", True), ("192.0.2.1", True), ("2001:db8::1", True), ("nonsense", False),
])
def test_which_candidate_addresses_can_be_a_peer(host: str, usable: bool) -> None:
    assert usable_remote_address(host) is usable


def test_agent_skips_wildcard_broadcast_and_multicast_candidates() -> None:
    agent = IceAgent(controlling=True, rng=_rng)
    texts = [f"candidate:{i} 1 udp 2130706431 {ip} 5000 typ host"
             for i, ip in enumerate(["0.0.0.0", "::", "255.255.255.255", "239.1.1.1", "192.0.2.7"])]
    agent.set_remote("abcd", "p" * 22, manual.remote_ice("abcd", "p" * 22, texts).candidates)
    assert [c.host for c in agent.remote_candidates] == ["192.0.2.7"]


@pytest.mark.parametrize("source", ["tcp://0.0.0.0:22", "tcp://[::]:22", "udp://0.0.0.0:53", "tcp://[::ffff:0.0.0.0]:22"])
def test_wildcard_sources_are_refused_whatever_the_allowlist(source: str) -> None:
    policy = AccessPolicy.from_strings(["0.0.0.0/0", "::/0"], ["0.0.0.0/0", "::/0"])
    decision = policy.decide(parse_source(source))
    assert not decision.allowed and "unspecified address" in (decision.reason or "")


def test_a_name_resolving_to_the_wildcard_is_refused() -> None:
    policy = AccessPolicy.from_strings(["0.0.0.0/0"], [])
    decision = policy.decide_resolved(parse_source("tcp://wild.example:22"), ["0.0.0.0"])
    assert not decision.allowed
