"""Identity and configuration helpers: certificate shape, fingerprint format, the aioquic fields we set."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st

from test_quic_pair import NOT_AFTER, NOT_BEFORE, Pair, cached_identity
from tunnel_core.errors import LocalProtocolError
from tunnel_core.quic import (
    MAX_PACKET_SIZE,
    MIN_PACKET_SIZE,
    clamp_packet_size,
    fingerprint,
    make_configuration,
    make_identity,
    normalize_fingerprint,
)


def test_fingerprint_is_lowercase_hex_sha256_of_der() -> None:
    ident = cached_identity(0)
    der = ident.certificate.public_bytes(serialization.Encoding.DER)
    assert ident.fingerprint == hashlib.sha256(der).hexdigest()
    assert len(ident.fingerprint) == 64 and ident.fingerprint == ident.fingerprint.lower()
    assert fingerprint(der) == fingerprint(ident.certificate) == ident.fingerprint
    assert ident.certificate_der == der


def test_certificate_is_self_signed_with_san_and_given_validity() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ident = make_identity(key, not_before=NOT_BEFORE, not_after=NOT_AFTER, name="example.tunnel")
    cert = ident.certificate
    assert cert.subject == cert.issuer
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.tunnel"]
    assert cert.not_valid_before_utc == NOT_BEFORE and cert.not_valid_after_utc == NOT_AFTER
    cert.verify_directly_issued_by(cert)  # the signature checks out against its own key
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.serial_number > 0


def test_default_name_matches_upstream_and_serial_is_stable() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    a = make_identity(key, not_before=NOT_BEFORE, not_after=NOT_AFTER)
    b = make_identity(key, not_before=NOT_BEFORE, not_after=NOT_AFTER)
    san = a.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["manual.tunnel"]
    assert a.certificate.serial_number == b.certificate.serial_number  # no randomness needed


def test_ed25519_identity_signs() -> None:
    ident = cached_identity(5, "ed25519")
    assert isinstance(ident.certificate.public_key(), ed25519.Ed25519PublicKey)
    ident.certificate.verify_directly_issued_by(ident.certificate)


def test_validity_must_be_positive() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(LocalProtocolError):
        make_identity(key, not_before=NOT_AFTER, not_after=NOT_BEFORE)


def test_identity_repr_hides_private_key() -> None:
    assert "private_key" not in repr(cached_identity(0))


def test_normalize_fingerprint_accepts_upper_case_and_colons() -> None:
    fp = cached_identity(0).fingerprint
    assert normalize_fingerprint(fp.upper()) == fp
    assert normalize_fingerprint(":".join(fp[i : i + 2] for i in range(0, 64, 2))) == fp
    for bad in ("", fp[:-1], fp + "0", "g" * 64):
        with pytest.raises(LocalProtocolError):
            normalize_fingerprint(bad)


@given(st.text(max_size=80))
def test_normalize_fingerprint_only_raises_its_own_error(text: str) -> None:
    try:
        out = normalize_fingerprint(text)
    except LocalProtocolError:
        return
    assert len(out) == 64 and all(c in "0123456789abcdef" for c in out)


@pytest.mark.parametrize(
    ("given_size", "expected"),
    [(0, MIN_PACKET_SIZE), (1199, 1200), (1350, 1350), (16000, 16000), (16384, MAX_PACKET_SIZE), (65535, 16000)],
)
def test_clamp_packet_size(given_size: int, expected: int) -> None:
    assert clamp_packet_size(given_size) == expected


def test_configuration_matches_upstream_ice_modes() -> None:
    ident = cached_identity(0)
    server = make_configuration(is_client=False, identity=ident, packet_size=50_000)
    client = make_configuration(is_client=True)
    for cfg in (server, client):
        assert cfg.alpn_protocols is None
        assert cfg.server_name == "manual"
        assert cfg.verify_mode == ssl.CERT_NONE
        assert cfg.idle_timeout == 300.0
        assert cfg.max_data == cfg.max_stream_data == 8 * 1024 * 1024
        assert cfg.congestion_control_algorithm == "bbr"  # ours since session 5 (upstream: quinn's cubic)
    assert server.max_datagram_size == 16000  # clamped below aioquic's varint bug
    assert client.max_datagram_size == 1350
    assert server.certificate is ident.certificate and server.private_key is ident.private_key
    assert client.certificate is None


def test_configuration_rejects_server_without_identity_and_bad_values() -> None:
    with pytest.raises(LocalProtocolError):
        make_configuration(is_client=False)
    with pytest.raises(LocalProtocolError):
        make_configuration(is_client=True, window=0)
    with pytest.raises(LocalProtocolError):
        make_configuration(is_client=True, idle_timeout=0)


def test_ed25519_server_identity_handshakes() -> None:
    pair = Pair(server_identity=cached_identity(6, "ed25519"))
    pair.handshake()
    assert pair.client.peer_fingerprint == cached_identity(6, "ed25519").fingerprint


def test_certificate_dates_are_not_checked_by_the_client() -> None:
    """Only the pin matters (upstream's verifier skips chain, name and validity): an expired cert still works."""
    key = ec.generate_private_key(ec.SECP256R1())
    old = make_identity(
        key,
        not_before=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2001, 1, 1, tzinfo=dt.UTC),
    )
    pair = Pair(server_identity=old)
    pair.handshake()
    assert pair.client.peer_verified
