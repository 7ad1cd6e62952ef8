"""tunnel_core.keys: secret key text, EndpointId text forms and allowed-clients files (reference 6.3, 7.1, 7.2)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.errors import LocalProtocolError
from tunnel_core.keys import (
    KeyFormatError,
    endpoint_id_from_secret,
    format_endpoint_id,
    format_secret_key,
    parse_allowed_client,
    parse_allowed_clients,
    parse_endpoint_id,
    parse_secret_key,
)

# RFC 8032 section 7.1, TEST 1.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
# The base32 id shown in upstream's docs, and the same key in hex.
DOC_BASE32_ID = "2xnbkpbc7izsilvewd7c62w7wnwziacmpfwvhcrya5nt76dqkpga"
DOC_HEX_ID = "d5da153c22fa33242ea4b0fe2f6adfb36d94004c796d538a38075b3ff87053cc"


def test_rfc8032_vector() -> None:
    assert endpoint_id_from_secret(RFC8032_SECRET) == RFC8032_PUBLIC
    assert format_endpoint_id(RFC8032_PUBLIC) == RFC8032_PUBLIC.hex()


def test_secret_key_text_form() -> None:
    text = format_secret_key(RFC8032_SECRET)
    assert text == "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
    assert len(text) == 44
    assert parse_secret_key(text) == RFC8032_SECRET
    assert parse_secret_key(f"  {text}\n") == RFC8032_SECRET


def test_secret_key_commented_file_layout() -> None:
    text = (
        "# tunnel-rs server secret key (iroh endpoint identity)\n# Created: 2025-01-01T00:00:00Z\n"
        f"# EndpointId: {RFC8032_PUBLIC.hex()}\n\n{format_secret_key(RFC8032_SECRET)}\n"
    )
    assert parse_secret_key(text) == RFC8032_SECRET


@given(st.binary(min_size=32, max_size=32))
def test_secret_key_round_trip(raw: bytes) -> None:
    assert parse_secret_key(format_secret_key(raw)) == raw
    assert len(endpoint_id_from_secret(raw)) == 32


@pytest.mark.parametrize(
    "text",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # url-safe alphabet is not the standard one
        format_secret_key(RFC8032_SECRET).rstrip("="),  # padding is required
        format_secret_key(RFC8032_SECRET)[:-2] + "B=",  # non-canonical trailing bits
        format_secret_key(RFC8032_SECRET) + "\n" + format_secret_key(RFC8032_SECRET),
        "====",
    ],
)
def test_secret_key_invalid_base64(text: str) -> None:
    with pytest.raises(KeyFormatError, match=r"^Invalid base64 in secret key$"):
        parse_secret_key(text)


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64])
def test_secret_key_wrong_length(raw: bytes) -> None:
    with pytest.raises(KeyFormatError, match=r"^Invalid secret key \(must be 32 bytes\)$"):
        parse_secret_key(base64.b64encode(raw).decode())


@given(st.text(max_size=80))
def test_parse_secret_key_arbitrary_text_raises_only_key_error(text: str) -> None:
    try:
        assert len(parse_secret_key(text)) == 32
    except KeyFormatError:
        pass


def test_format_rejects_wrong_lengths_locally() -> None:
    with pytest.raises(LocalProtocolError):
        format_secret_key(b"short")
    with pytest.raises(LocalProtocolError):
        endpoint_id_from_secret(b"short")
    with pytest.raises(LocalProtocolError):
        format_endpoint_id(b"short")


# ---------------------------------------------------------------------------------------------- EndpointId


def test_endpoint_id_hex_and_base32() -> None:
    assert parse_endpoint_id(DOC_BASE32_ID).hex() == DOC_HEX_ID
    assert parse_endpoint_id(DOC_HEX_ID).hex() == DOC_HEX_ID
    assert parse_endpoint_id(DOC_HEX_ID.upper()).hex() == DOC_HEX_ID
    assert parse_endpoint_id(DOC_BASE32_ID.upper()).hex() == DOC_HEX_ID
    assert parse_endpoint_id(f" {DOC_HEX_ID}\n").hex() == DOC_HEX_ID


@given(st.binary(min_size=32, max_size=32))
def test_endpoint_id_round_trips(raw: bytes) -> None:
    assert parse_endpoint_id(format_endpoint_id(raw)) == raw
    b32 = base64.b32encode(raw).decode().rstrip("=").lower()
    assert len(b32) == 52
    assert parse_endpoint_id(b32) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        DOC_HEX_ID[:-1],
        DOC_HEX_ID + "0",
        DOC_BASE32_ID[:-1],
        DOC_BASE32_ID + "a",
        DOC_BASE32_ID[:-1] + "b",  # non-zero spare bits
        DOC_BASE32_ID[:-1] + "1",  # not in the base32 alphabet
        "g" * 64,
    ],
)
def test_endpoint_id_invalid(text: str) -> None:
    with pytest.raises(KeyFormatError, match=r"^Invalid EndpointId format\. Should be a 52-character base32 string\.$"):
        parse_endpoint_id(text)


@given(st.text(max_size=70))
def test_parse_endpoint_id_arbitrary_text_raises_only_key_error(text: str) -> None:
    try:
        assert len(parse_endpoint_id(text)) == 32
    except KeyFormatError:
        pass


# ---------------------------------------------------------------------------------------------- allowed clients


def test_allowed_clients_file() -> None:
    text = (
        "# allowed clients\n"
        "\n"
        f"{DOC_BASE32_ID}   # laptop\n"
        f"  {RFC8032_PUBLIC.hex()}\n"
        f"{DOC_HEX_ID}# same key as the laptop, hex\n"
        "   # indented comment\n"
    )
    assert parse_allowed_clients(text, "clients.txt") == (bytes.fromhex(DOC_HEX_ID), RFC8032_PUBLIC)


def test_allowed_clients_empty_file_is_empty_set() -> None:
    assert parse_allowed_clients("# nobody\n\n", "f") == ()


def test_allowed_clients_error_names_file_and_line() -> None:
    text = f"{DOC_HEX_ID}\n# ok\nnot-a-node-id  # bad one\n"
    with pytest.raises(KeyFormatError) as info:
        parse_allowed_clients(text, "/etc/tunnel/allowed")
    assert str(info.value) == "Invalid NodeId at /etc/tunnel/allowed:3: not-a-node-id"


def test_allowed_client_cli_value() -> None:
    assert parse_allowed_client(DOC_BASE32_ID).hex() == DOC_HEX_ID
    with pytest.raises(KeyFormatError, match=r"^Invalid --allowed-clients value: nope$"):
        parse_allowed_client("nope")


@given(st.text(max_size=200))
def test_parse_allowed_clients_arbitrary_text_raises_only_key_error(text: str) -> None:
    try:
        ids = parse_allowed_clients(text, "f")
    except KeyFormatError:
        return
    assert all(len(i) == 32 for i in ids)
    assert len(set(ids)) == len(ids)
