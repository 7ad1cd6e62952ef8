"""A small Python relay client for tests (websockets' asyncio client) plus relay start-up helpers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tunnel_core.iroh_relay import RelayOptions, RelayPolicy
from tunnel_core.iroh_relay import frames as fr
from tunnel_core.iroh_relay.handshake import sign_challenge
from tunnel_core.keys import endpoint_id_from_secret
from tunnel_iroh_relay import RelayService


def secret(n: int) -> bytes:
    return bytes([n] * 32)


def eid(n: int) -> bytes:
    return endpoint_id_from_secret(secret(n))


@contextlib.asynccontextmanager
async def running_relay(**policy) -> AsyncIterator[RelayService]:
    grace = policy.pop("shutdown_grace", 0.5)
    service = RelayService(RelayOptions(bind=("127.0.0.1", 0), policy=RelayPolicy(**policy), shutdown_grace=grace))
    await service.start()
    try:
        yield service
    finally:
        await service.aclose()


class TestClient:
    """Speaks the relay protocol the way an iroh client does (challenge, ClientAuth, datagram frames)."""

    __test__ = False

    def __init__(self, ws: ClientConnection, key: int) -> None:
        self.ws = ws
        self.key = key
        self.endpoint_id = eid(key)

    @classmethod
    async def open(cls, url: str, key: int, *, token: str | None = None,
                   protocols: tuple[str, ...] = ("iroh-relay-v2", "iroh-relay-v1"),
                   ssl_context: ssl.SSLContext | None = None, max_size: int = 4 << 20) -> TestClient:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        ws_url = url.replace("http", "ws", 1) + "/relay"
        ws = await connect(ws_url, subprotocols=list(protocols), additional_headers=headers,  # type: ignore[arg-type]
                           compression=None, proxy=None, ping_interval=None, ssl=ssl_context, max_size=max_size)
        return cls(ws, key)

    async def recv(self, timeout: float = 5.0) -> fr.Frame:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes)
        return fr.decode_frame(data)

    async def handshake(self) -> fr.Frame:
        challenge = await self.recv()
        assert isinstance(challenge, fr.ServerChallenge)
        await self.ws.send(fr.encode_frame(sign_challenge(secret(self.key), challenge)))
        return await self.recv()

    @classmethod
    async def joined(cls, url: str, key: int, **kwargs) -> TestClient:
        client = await cls.open(url, key, **kwargs)
        reply = await client.handshake()
        assert reply == fr.ServerConfirmsAuth(), reply
        return client

    async def send_to(self, key: int, data: bytes) -> None:
        await self.ws.send(fr.encode_frame(fr.ClientToRelayDatagram(eid(key), 0, data)))

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the relay closes us; the close code it sent."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()
