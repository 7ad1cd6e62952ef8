"""Our STUN codec against a real, independent server: coturn on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from helpers.coturn import CoturnServer, run_coturn
from tunnel_core import stun
from tunnel_core.stun import Attr, MessageClass, Method, StunMessage

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoturnServer]:
    with run_coturn(tmp_path_factory.mktemp("coturn")) as server:
        yield server


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def exchange(sock: socket.socket, server: CoturnServer, request: bytes) -> StunMessage:
    """One request, one reply; a few resends cover a lost datagram, and each wait is bounded."""
    sent_tid = request[8:20]
    for _ in range(3):
        sock.sendto(request, server.address)
        try:
            data, source = sock.recvfrom(4096)
        except TimeoutError:
            continue
        assert source == server.address
        reply = stun.decode(data)
        assert reply.transaction_id == sent_tid
        return reply
    pytest.fail("coturn did not answer")


def test_binding_reports_our_own_address(coturn: CoturnServer, udp: socket.socket) -> None:
    tid = stun.transaction_id(os.urandom)
    request = stun.encode(StunMessage(Method.BINDING, MessageClass.REQUEST, tid), fingerprint=True)
    reply = exchange(udp, coturn, request)
    assert reply.method == Method.BINDING
    assert reply.message_class == MessageClass.SUCCESS
    assert reply.transaction_id == tid
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == udp.getsockname()
    assert reply.has_fingerprint  # decode() verified it, so our CRC agrees with coturn's


def test_unauthenticated_allocate_is_challenged(coturn: CoturnServer, udp: socket.socket) -> None:
    tid = stun.transaction_id(os.urandom)
    request = stun.encode(
        StunMessage(Method.ALLOCATE, MessageClass.REQUEST, tid, ((Attr.REQUESTED_TRANSPORT, 17),)),
        fingerprint=True,
    )
    reply = exchange(udp, coturn, request)
    assert reply.method == Method.ALLOCATE
    assert reply.message_class == MessageClass.ERROR
    assert reply.get(Attr.ERROR_CODE).code == 401
    assert reply.get(Attr.REALM) == coturn.realm
    nonce = reply.get(Attr.NONCE)
    assert isinstance(nonce, str) and nonce


def test_authenticated_allocate_and_release(coturn: CoturnServer, udp: socket.socket) -> None:
    """The long-term key and MESSAGE-INTEGRITY agree with coturn's in both directions."""
    challenge = exchange(udp, coturn, stun.encode(
        StunMessage(Method.ALLOCATE, MessageClass.REQUEST, stun.transaction_id(os.urandom),
                    ((Attr.REQUESTED_TRANSPORT, 17),))))
    nonce = challenge.get(Attr.NONCE)
    key = stun.long_term_key(coturn.user, coturn.realm, coturn.password)
    credentials = ((Attr.USERNAME, coturn.user), (Attr.REALM, coturn.realm), (Attr.NONCE, nonce))
    allocate = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, stun.transaction_id(os.urandom),
                           ((Attr.REQUESTED_TRANSPORT, 17), *credentials))
    reply = exchange(udp, coturn, stun.encode(allocate, integrity_key=key, fingerprint=True))
    assert reply.message_class == MessageClass.SUCCESS, reply.get(Attr.ERROR_CODE)
    assert reply.check_integrity(key)
    assert not reply.check_integrity(stun.long_term_key(coturn.user, coturn.realm, "wrong"))
    relay_ip, relay_port = reply.get(Attr.XOR_RELAYED_ADDRESS)
    assert relay_ip == "127.0.0.1"
    assert coturn.min_relay_port <= relay_port <= coturn.max_relay_port
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == udp.getsockname()
    assert reply.get(Attr.LIFETIME) > 0

    release = StunMessage(Method.REFRESH, MessageClass.REQUEST, stun.transaction_id(os.urandom),
                          ((Attr.LIFETIME, 0), *credentials))
    released = exchange(udp, coturn, stun.encode(release, integrity_key=key, fingerprint=True))
    assert released.message_class == MessageClass.SUCCESS, released.get(Attr.ERROR_CODE)
    assert released.check_integrity(key)


def test_wrong_password_is_rejected(coturn: CoturnServer, udp: socket.socket) -> None:
    challenge = exchange(udp, coturn, stun.encode(
        StunMessage(Method.ALLOCATE, MessageClass.REQUEST, stun.transaction_id(os.urandom),
                    ((Attr.REQUESTED_TRANSPORT, 17),))))
    key = stun.long_term_key(coturn.user, coturn.realm, coturn.password + "x")
    allocate = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, stun.transaction_id(os.urandom),
                           ((Attr.REQUESTED_TRANSPORT, 17), (Attr.USERNAME, coturn.user),
                            (Attr.REALM, coturn.realm), (Attr.NONCE, challenge.get(Attr.NONCE))))
    reply = exchange(udp, coturn, stun.encode(allocate, integrity_key=key))
    assert reply.message_class == MessageClass.ERROR
    assert reply.get(Attr.ERROR_CODE).code == 401


def test_missing_turnserver_fails_instead_of_skipping(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("helpers.coturn.shutil.which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y coturn"), run_coturn(tmp_path):
        pass
