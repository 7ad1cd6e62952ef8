"""The sans-IO SOCKS5 server handshake (tunnel_core.socks5), byte by byte."""

from __future__ import annotations

import pytest

from tunnel_core import socks5
from tunnel_core.socks5 import ConnectRequest, Socks5Server


def _connect(atyp: int, addr: bytes, port: int = 80) -> bytes:
    return bytes([5, 1, 0, atyp]) + addr + port.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("addr", "atyp", "expected"),
    [
        (bytes([127, 0, 0, 1]), 1, ConnectRequest("127.0.0.1", 80)),
        (bytes(15) + b"\x01", 4, ConnectRequest("::1", 80)),
        (bytes([9]) + b"web.lab.x", 3, ConnectRequest("web.lab.x", 80)),
    ],
)
def test_connect_in_every_address_type_and_any_chunking(addr: bytes, atyp: int, expected: ConnectRequest) -> None:
    wire = b"\x05\x01\x00" + _connect(atyp, addr) + b"GET /"
    for step in (1, 3, len(wire)):
        s = Socks5Server()
        for i in range(0, len(wire), step):
            s.feed(wire[i : i + step])
        assert s.data_to_send() == b"\x05\x00"
        assert s.request == expected and s.remainder == b"GET /" and not s.failed
    assert ConnectRequest("::1", 22).url() == "tcp://[::1]:22"


def test_username_password() -> None:
    good = Socks5Server(("alice", "s3cret"))
    good.feed(b"\x05\x02\x00\x02" + b"\x01\x05alice\x06s3cret" + _connect(1, bytes([10, 0, 0, 1]), 22))
    assert good.data_to_send() == b"\x05\x02\x01\x00" and good.request == ConnectRequest("10.0.0.1", 22)
    bad = Socks5Server(("alice", "s3cret"))
    bad.feed(b"\x05\x01\x02" + b"\x01\x05alice\x05wrong")
    assert bad.failed and bad.data_to_send() == b"\x05\x02\x01\x01" and bad.request is None
    no_auth_offered = Socks5Server(("alice", "s3cret"))
    no_auth_offered.feed(b"\x05\x01\x00")
    assert no_auth_offered.failed and no_auth_offered.data_to_send() == b"\x05\xff"


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (bytes([5, 3, 0, 1, 127, 0, 0, 1, 0, 53]), socks5.COMMAND_NOT_SUPPORTED),  # UDP ASSOCIATE
        (bytes([5, 2, 0, 1, 127, 0, 0, 1, 0, 53]), socks5.COMMAND_NOT_SUPPORTED),  # BIND
        (bytes([5, 1, 0, 9, 1, 2, 3]), socks5.ADDRESS_TYPE_NOT_SUPPORTED),
        (bytes([5, 1, 0, 3, 3]) + b"a b" + b"\x00\x50", socks5.GENERAL_FAILURE),
    ],
)
def test_refusals_carry_their_reply_code(request_bytes: bytes, code: int) -> None:
    s = Socks5Server()
    s.feed(b"\x05\x01\x00" + request_bytes)
    assert s.failed and s.request is None
    assert s.data_to_send() == b"\x05\x00" + bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def test_not_socks_fails_without_a_reply() -> None:
    s = Socks5Server()
    s.feed(b"GET / HTTP/1.1\r\n")
    assert s.failed and s.data_to_send() == b"" and s.request is None
