"""tunnel_core.quic.speedups against the installed aioquic: the patches are in place, every container built before
them still finds its members, and a connection works with them (the QUIC and e2e tests exercise the rest)."""

from __future__ import annotations

import enum

from aioquic import tls
from aioquic.quic import connection as aioquic_connection

import tunnel_core.quic  # noqa: F401  (applies the patches)
from tunnel_core.quic import connection as our_connection
from tunnel_core.quic import speedups


def test_enums_hash_by_identity_and_still_compare_as_before() -> None:
    for cls in speedups.IDENTITY_HASHED:
        assert cls.__hash__ is object.__hash__
        assert "__eq__" not in vars(cls) and enum.Enum.__eq__ is object.__eq__  # identity equality: same answers
        members = list(cls)
        assert len({m: i for i, m in enumerate(members)}) == len(members)


def test_no_container_built_before_the_patch_loses_its_members() -> None:
    assert speedups.stale_containers() == []
    # the two frozensets the per-packet paths use, aioquic's and the copy our subclass imported
    for end_states in (aioquic_connection.END_STATES, our_connection.END_STATES):
        assert aioquic_connection.QuicConnectionState.TERMINATED in end_states
        assert aioquic_connection.QuicConnectionState.CONNECTED not in end_states


def test_apply_is_idempotent() -> None:
    before = aioquic_connection.END_STATES
    speedups.apply()
    assert aioquic_connection.END_STATES is before
    assert tls.Epoch.__hash__ is object.__hash__
