"""Host-candidate selection: explicit choices win, loopback only as the last resort."""

from __future__ import annotations

import pytest

from tunnel_core.hostaddr import HostCandidateError, select_host_addresses

IFACES = [
    ("lo", ["127.0.0.1", "::1"]),
    ("eth0", ["192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1%eth0"]),
    ("wg0", ["10.7.0.1"]),
]


def test_default_skips_loopback_and_link_local_and_puts_ipv4_first() -> None:
    assert select_host_addresses(IFACES) == ["192.0.2.2", "10.7.0.1", "fd00::2"]


def test_bare_container_falls_back_to_loopback() -> None:
    assert select_host_addresses([("lo", ["127.0.0.1", "::1"])]) == ["127.0.0.1", "::1"]


def test_explicit_ip_and_interface_names() -> None:
    assert select_host_addresses(IFACES, ["127.0.0.1"]) == ["127.0.0.1"]
    assert select_host_addresses(IFACES, ["wg0", "::1"]) == ["10.7.0.1", "::1"]
    assert select_host_addresses(IFACES, ["eth0"]) == ["192.0.2.2", "fd00::2"]


def test_duplicates_removed() -> None:
    assert select_host_addresses(IFACES, ["127.0.0.1", "lo", "127.0.0.1"]) == ["127.0.0.1", "::1"]


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(HostCandidateError, match="Invalid --host-candidate 'nope0'"):
        select_host_addresses(IFACES, ["nope0"])
