"""The QUIC server's TLS identity in ICE modes: a self-signed certificate whose SHA-256 is the pin.

Upstream (reference 3.3) makes a fresh rcgen certificate per session and sends its fingerprint through signalling;
the client trusts exactly that fingerprint, never a chain or a name. So the certificate only has to be well formed:
the key and the validity period come from the caller (an adapter), because the core owns no randomness and reads no
clock. The serial number is derived from the public key for the same reason.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from tunnel_core.errors import LocalProtocolError

#: The name upstream's rcgen certificate carries (``generate_simple_self_signed(["manual.tunnel"])``).
DEFAULT_CERT_NAME = "manual.tunnel"

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | rsa.RSAPrivateKey


@attrs.frozen
class QuicIdentity:
    """What one QUIC endpoint presents: certificate, its private key, and the fingerprint peers pin."""

    certificate: x509.Certificate
    private_key: SigningKey = attrs.field(repr=False)
    fingerprint: str

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """Lowercase hex SHA-256 of the DER certificate (64 chars, no separators), exactly upstream's format."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Upstream lowercases the expected value before comparing; also tolerate the common ``aa:bb:..`` spelling."""
    cleaned = text.strip().replace(":", "").lower()
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise LocalProtocolError(f"not a SHA-256 fingerprint: {text!r}")
    return cleaned


def _serial_from_key(private_key: SigningKey) -> int:
    """A stable positive serial (< 2**159, RFC 5280 allows 20 octets) without asking for randomness."""
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (int.from_bytes(hashlib.sha256(public_der).digest()[:19], "big") >> 1) | 1


def make_identity(
    private_key: SigningKey,
    *,
    not_before: datetime,
    not_after: datetime,
    name: str = DEFAULT_CERT_NAME,
) -> QuicIdentity:
    """Build a self-signed certificate (CN and DNS SAN ``name``) for ``private_key``.

    ECDSA P-256 matches what upstream's rcgen makes; Ed25519 also works with aioquic on both sides.
    """
    if not_after <= not_before:
        raise LocalProtocolError("certificate validity must end after it starts")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private_key.public_key())
        .serial_number(_serial_from_key(private_key))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    algorithm: hashes.HashAlgorithm | None
    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        algorithm = None  # EdDSA hashes internally
    else:
        algorithm = hashes.SHA256()
    certificate = builder.sign(private_key, algorithm)
    return QuicIdentity(certificate=certificate, private_key=private_key, fingerprint=fingerprint(certificate))
