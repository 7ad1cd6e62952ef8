"""The asyncio relay over real sockets on 127.0.0.1, driven by a Python client speaking the iroh protocol."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.relay.helpers import TestClient, eid, running_relay
from websockets.exceptions import InvalidStatus

from tunnel_core.iroh_relay import RelayOptions
from tunnel_core.iroh_relay import frames as fr
from tunnel_iroh_relay import RelayService

pytestmark = pytest.mark.timeout(60)


async def http_get(address: tuple[str, int], path: str, headers: str = "") -> tuple[int, str, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n{headers}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode(), body


async def test_http_routes() -> None:
    async with running_relay() as relay:
        assert relay.address is not None
        status, _, body = await http_get(relay.address, "/ping")
        assert status == 200 and body == b""
        status, head, _ = await http_get(relay.address, "/generate_204", "X-Iroh-Challenge: abc123\r\n")
        assert status == 204 and "x-iroh-response: response abc123" in head.lower()
        status, head, _ = await http_get(relay.address, "/generate_204", "X-Iroh-Challenge: bad value!\r\n")
        assert status == 204 and "x-iroh-response" not in head.lower()
        status, _, body = await http_get(relay.address, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert (await http_get(relay.address, "/nope"))[0] == 404
        assert (await http_get(relay.address, "/relay"))[0] == 426
        assert (await http_get(relay.address, "/robots.txt"))[2].startswith(b"User-agent")


async def test_keep_alive_requests_on_one_connection() -> None:
    async with running_relay() as relay:
        reader, writer = await asyncio.open_connection(*relay.address)  # type: ignore[misc]
        writer.write(b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\nGET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
        data = b""
        async with asyncio.timeout(5):
            while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
                data += await reader.read(4096)
        writer.close()
        assert data.count(b"HTTP/1.1 200") == 2


async def test_two_clients_exchange_and_version_negotiation() -> None:
    async with running_relay() as relay:
        a = await TestClient.joined(relay.url, 1)
        b = await TestClient.joined(relay.url, 2, protocols=("iroh-relay-v1",))
        assert a.ws.subprotocol == "iroh-relay-v2" and b.ws.subprotocol == "iroh-relay-v1"
        await a.send_to(2, b"ping from a")
        assert await b.recv() == fr.RelayToClientDatagram(eid(1), 0, b"ping from a")
        await b.ws.send(fr.encode_frame(fr.ClientToRelayDatagramBatch(eid(1), 2, 3, b"abcdefg")))
        assert await a.recv() == fr.RelayToClientDatagramBatch(eid(2), 2, 3, b"abcdefg")
        await b.ws.send(fr.encode_frame(fr.Ping(b"pingpong")))
        assert await b.recv() == fr.Pong(b"pingpong")
        await b.close()
        assert await a.recv() == fr.EndpointGone(eid(2))
        await a.close()


async def test_unknown_subprotocol_rejected() -> None:
    async with running_relay() as relay:
        with pytest.raises(InvalidStatus) as info:
            await TestClient.open(relay.url, 1, protocols=("chat",))
        assert info.value.response.status_code == 400


async def test_wrong_token_refused_right_token_accepted() -> None:
    async with running_relay(tokens=frozenset({"letmein"})) as relay:
        wrong = await TestClient.open(relay.url, 1, token="guess")
        deny = await wrong.handshake()
        assert isinstance(deny, fr.ServerDeniesAuth) and "not authorized" in deny.reason
        assert await wrong.close_code() == 1008
        anonymous = await TestClient.open(relay.url, 2)
        assert isinstance(await anonymous.handshake(), fr.ServerDeniesAuth)
        good = await TestClient.joined(relay.url, 3, token="letmein")
        await good.send_to(3, b"self")
        assert await good.recv() == fr.RelayToClientDatagram(eid(3), 0, b"self")
        await good.close()


async def test_garbage_and_oversize_close_only_the_offender() -> None:
    async with running_relay() as relay:
        a = await TestClient.joined(relay.url, 1)
        b = await TestClient.joined(relay.url, 2)
        garbage = await TestClient.joined(relay.url, 3)
        big = await TestClient.joined(relay.url, 4)
        huge = await TestClient.joined(relay.url, 5)
        await garbage.ws.send(b"\x3f\x00\x01garbage")
        await big.ws.send(b"\x04" + eid(1) + b"\x00" + bytes(fr.MAX_PACKET_SIZE))  # > 64 KiB of content
        await huge.ws.send(bytes(fr.MAX_FRAME_SIZE + 10))  # > 1 MiB WebSocket message
        assert await garbage.close_code() == 1002
        assert await big.close_code() == 1002
        assert await huge.close_code() == 1009
        await a.send_to(2, b"still fine")
        assert await b.recv() == fr.RelayToClientDatagram(eid(1), 0, b"still fine")
        assert relay.machine.client_count == 2
        await a.close()
        await b.close()


async def test_flood_is_bounded_by_the_queue() -> None:
    depth = 32
    async with running_relay(queue_depth=depth) as relay:
        sender = await TestClient.joined(relay.url, 1)
        sleeper = await TestClient.joined(relay.url, 2)
        sleeper.ws.transport.pause_reading()  # a client that stops reading
        sleeper_conn = relay.machine.active_connection(eid(2))
        assert sleeper_conn is not None
        packet = bytes(1200)
        worst = 0
        for i in range(8000):
            await sender.send_to(2, packet)
            if i % 100 == 0:
                worst = max(worst, relay.machine.pending(sleeper_conn))
        await sender.ws.send(fr.encode_frame(fr.Ping(b"stillok!")))
        assert await sender.recv() == fr.Pong(b"stillok!")
        assert worst <= depth
        assert relay.machine.stats.dropped_queue_full > 0
        sleeper.ws.transport.resume_reading()
        received = 0
        try:
            while True:
                frame = await sleeper.recv(timeout=0.5)
                received += isinstance(frame, fr.RelayToClientDatagram)
        except TimeoutError:
            pass
        assert 0 < received < 8000
        await sender.close()
        await sleeper.close()


async def test_reconnecting_id_replaces_old_connection() -> None:
    async with running_relay() as relay:
        a = await TestClient.joined(relay.url, 1)
        old = await TestClient.joined(relay.url, 2)
        new = await TestClient.joined(relay.url, 2)
        assert await old.recv() == fr.Status(fr.StatusCode.SAME_ENDPOINT_ID_CONNECTED)
        await a.send_to(2, b"to the newest")
        assert await new.recv() == fr.RelayToClientDatagram(eid(1), 0, b"to the newest")
        with pytest.raises(TimeoutError):
            await old.recv(timeout=0.2)
        for client in (a, old, new):
            await client.close()


async def test_rate_limit_notifies_and_slows_reading() -> None:
    async with running_relay(rate_limit=200_000) as relay:
        a = await TestClient.joined(relay.url, 1)
        b = await TestClient.joined(relay.url, 2)
        chunk = bytes(60_000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(24):  # 1.44 MB: the 1 MiB burst, then ~0.4 MB at 200 kB/s
            await a.send_to(2, chunk)
        assert await a.recv() == fr.Status(fr.StatusCode.RATE_LIMITED)
        received = 0
        while received < 24:
            frame = await b.recv()
            received += isinstance(frame, fr.RelayToClientDatagram)
        assert loop.time() - start > 1.0
        await a.close()
        await b.close()


async def test_shutdown_sends_restarting() -> None:
    relay = RelayService(RelayOptions(bind=("127.0.0.1", 0)))
    await relay.start()
    a = await TestClient.joined(relay.url, 1)
    closing = asyncio.create_task(relay.aclose(grace=2.0))
    assert await a.recv() == fr.Restarting(1000, 5000)
    assert await a.close_code() == 1001
    await closing


def _self_signed(tmp_path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_tls(tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    relay = RelayService(RelayOptions(bind=("127.0.0.1", 0), tls_cert=cert, tls_key=key, shutdown_grace=0.2))
    await relay.start()
    try:
        assert relay.url.startswith("https://")
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        a = await TestClient.joined(relay.url, 1, ssl_context=context)
        await a.send_to(1, b"over tls")
        assert await a.recv() == fr.RelayToClientDatagram(eid(1), 0, b"over tls")
        await a.close()
    finally:
        await relay.aclose()
