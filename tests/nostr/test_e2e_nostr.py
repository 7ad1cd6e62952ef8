"""ice-nostr end to end through nostr-sdk's LocalRelay on 127.0.0.1: real WebSockets, real UDP sockets, real QUIC.

Server and clients run in this process on one asyncio loop (each its own NostrRunner), with host candidates on
127.0.0.1 only and no STUN. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tests.nostr.conftest import TEST_KIND, LocalRelay

from tunnel_asyncio.nostr import NostrRunner
from tunnel_asyncio.reactor import AsyncioReactor
from tunnel_asyncio.runner import Console
from tunnel_core.blocks import ManualRequest
from tunnel_core.dialogue import Stopped
from tunnel_core.dialogue_nostr import nostr_client_dialogue, nostr_server_dialogue
from tunnel_core.nostr.keys import SecretKey
from tunnel_core.nostr.messages import TYPE_REQUEST, Channel, NostrRequest
from tunnel_core.nostr.options import NostrClientOptions, NostrServerOptions
from tunnel_core.nostr.pool import RelayPool
from tunnel_core.options import ExitCode, IceOptions, TunnelError
from tunnel_io.nostr_relays import RelayConnections

ICE = IceOptions(stun_servers=(), host_candidates=("127.0.0.1",))
pytestmark = pytest.mark.timeout(60)


class Side:
    """One runner on the test loop, its console captured."""

    def __init__(self, flow: Any) -> None:
        self.err = io.StringIO()
        self.runner = NostrRunner(Console(stdin=io.StringIO(), stdout=io.StringIO(), stderr=self.err))
        self.task = asyncio.ensure_future(self.runner.run_nostr(flow))

    @property
    def text(self) -> str:
        return self.err.getvalue()

    async def stop(self) -> None:
        self.runner.stop()
        try:
            await asyncio.wait_for(self.task, 10)
        except (TunnelError, Stopped):
            pass

    async def wait_for_text(self, needle: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, f"{needle!r} not seen in:\n{self.text}"
            await asyncio.sleep(0.02)


def keys() -> tuple[SecretKey, SecretKey]:
    return SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)


def server_opts(server: SecretKey, client: SecretKey, relays: tuple[str, ...], **kw: Any) -> NostrServerOptions:
    return NostrServerOptions(nsec=server.nsec, peer_npub=client.public_key.npub, allowed_tcp=("127.0.0.0/8",),
                              allowed_udp=("127.0.0.0/8",), relays=relays, ice=ICE, event_kind=TEST_KIND, **kw)


def client_opts(client: SecretKey, server: SecretKey, relays: tuple[str, ...], source: str, target: str,
                **kw: Any) -> NostrClientOptions:
    return NostrClientOptions(nsec=client.nsec, peer_npub=server.public_key.npub, source=source, target=target,
                              relays=relays, ice=ICE, event_kind=TEST_KIND, **kw)


async def tcp_echo() -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def listening_port(side: Side, proto: str = "TCP") -> int:
    needle = f"Listening on {proto} 127.0.0.1:"
    await side.wait_for_text(needle)
    line = next(ln for ln in side.text.splitlines() if needle in ln)
    return int(line.split(needle)[1].split()[0])


async def echo_through(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.write(payload)
    await writer.drain()
    got = b""
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk
        got += chunk
    writer.close()
    return got


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 50))


def test_tcp_tunnel_with_a_dead_relay_in_the_list(relay: LocalRelay, dead_relay_url: str) -> None:
    relays = (dead_relay_url, relay.url)
    server_key, client_key = keys()

    async def scenario() -> None:
        echo, eport = await tcp_echo()
        server = Side(nostr_server_dialogue(server_opts(server_key, client_key, relays), os.urandom))
        await server.wait_for_text("Waiting for tunnel requests (max sessions: 10)...")
        started = time.monotonic()
        client = Side(nostr_client_dialogue(client_opts(client_key, server_key, relays, f"tcp://127.0.0.1:{eport}",
                                                    "127.0.0.1:0"), os.urandom))
        port = await listening_port(client)
        assert await echo_through(port, b"first byte") == b"first byte"
        connect_time = time.monotonic() - started
        print(f"\nnostr connect time (client start to first forwarded byte): {connect_time:.3f} s")
        assert connect_time < 2.0
        big = os.urandom(300_000)
        assert await echo_through(port, big) == big  # a second local connection multiplexed on the session
        assert "Connected to 1/2 relay(s)" in client.text
        assert "Client connected over QUIC." in server.text
        await client.stop()
        await server.stop()
        echo.close()

    run(scenario)


def test_udp_tunnel(relay: LocalRelay) -> None:
    server_key, client_key = keys()
    relays = (relay.url,)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.transport.sendto(data.upper(), addr)

        echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        eport = echo_transport.get_extra_info("sockname")[1]
        server = Side(nostr_server_dialogue(server_opts(server_key, client_key, relays), os.urandom))
        await server.wait_for_text("Waiting for tunnel requests")
        client = Side(nostr_client_dialogue(client_opts(client_key, server_key, relays, f"udp://127.0.0.1:{eport}",
                                                    "udp://127.0.0.1:0"), os.urandom))
        port = await listening_port(client, "UDP")
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Local(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                replies.put_nowait(data)

        local, _ = await loop.create_datagram_endpoint(Local, remote_addr=("127.0.0.1", port))
        got = None
        for _ in range(20):  # UDP: resend until the tunnel carries it (bounded)
            local.sendto(b"ping")
            try:
                got = await asyncio.wait_for(replies.get(), 0.5)
                break
            except TimeoutError:
                continue
        assert got == b"PING"
        local.close()
        echo_transport.close()
        await client.stop()
        await server.stop()

    run(scenario)


def test_three_sessions_then_capacity_reject(relay: LocalRelay) -> None:
    server_key, client_key = keys()
    relays = (relay.url,)

    async def scenario() -> None:
        echo, eport = await tcp_echo()
        server = Side(nostr_server_dialogue(server_opts(server_key, client_key, relays, max_sessions=3), os.urandom))
        await server.wait_for_text("Waiting for tunnel requests (max sessions: 3)...")
        clients = [Side(nostr_client_dialogue(client_opts(client_key, server_key, relays, f"tcp://127.0.0.1:{eport}",
                                                      "127.0.0.1:0"), os.urandom)) for _ in range(3)]
        ports = [await listening_port(c) for c in clients]
        results = await asyncio.gather(*(echo_through(p, f"session {i}".encode()) for i, p in enumerate(ports)))
        assert results == [b"session 0", b"session 1", b"session 2"]
        assert "(3 active)" in server.text
        fourth = Side(nostr_client_dialogue(client_opts(client_key, server_key, relays, f"tcp://127.0.0.1:{eport}",
                                                    "127.0.0.1:0"), os.urandom))
        with pytest.raises(TunnelError) as info:
            await asyncio.wait_for(fourth.task, 10)
        assert info.value.message == "Session rejected by server: Server at capacity (3/3 sessions)"
        assert info.value.exit_code == ExitCode.AUTH
        # A session ends; the server keeps serving and has room again.
        await clients[0].stop()
        await server.wait_for_text("ended (2 active)")
        again = Side(nostr_client_dialogue(client_opts(client_key, server_key, relays, f"tcp://127.0.0.1:{eport}",
                                                   "127.0.0.1:0"), os.urandom))
        assert await echo_through(await listening_port(again), b"again") == b"again"
        for side in (again, *clients[1:]):
            await side.stop()
        await server.stop()
        echo.close()

    run(scenario)


def test_wrong_key_stale_replay_and_tampered_requests_are_ignored(relay: LocalRelay) -> None:
    server_key, client_key = keys()
    intruder = SecretKey.generate(os.urandom)
    relays = (relay.url,)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = Side(nostr_server_dialogue(server_opts(server_key, client_key, relays), os.urandom))
        await server.wait_for_text("Waiting for tunnel requests")

        # 1. A client with the wrong key: the server never starts a session; the client gives up.
        wrong = Side(nostr_client_dialogue(client_opts(intruder, server_key, relays, "tcp://127.0.0.1:9",
                                                   "127.0.0.1:0", max_wait=1.5, republish_interval=0.5),
                                       os.urandom))
        with pytest.raises(TunnelError, match=r"Timeout waiting for offer from peer \(1.5s\)"):
            await asyncio.wait_for(wrong.task, 10)

        # A raw publisher with the *client's* key, to send crafted requests.
        channel = Channel(client_key, server_key.public_key, kind=TEST_KIND)
        pool = RelayPool(relays, filters=[{"kinds": [TEST_KIND], "ids": ["00" * 32]}], subscription_id="raw")
        conns = RelayConnections(AsyncioReactor(loop), pool, deliver=lambda _event: None, changed=lambda: None)
        conns.flush()
        for _ in range(100):
            if pool.open_count:
                break
            await asyncio.sleep(0.02)

        def request(sid: str, timestamp: int) -> NostrRequest:
            return NostrRequest(ManualRequest(ice_ufrag="abcd", ice_pwd="p" * 22, candidates=(), session_id=sid,
                                              timestamp=timestamp, source="tcp://127.0.0.1:9"),
                                quic_fingerprint="ab" * 32)

        # 2. A replayed stale request (timestamp 100 s old) is ignored.
        stale = channel.seal(request("5a1e5a1e5a1e5a1e", int(time.time()) - 100), created_at=int(time.time()),
                             rng=os.urandom)
        pool.publish(stale, loop.time())
        conns.flush()
        await server.wait_for_text("Ignoring stale request (age: 10")

        # 3. A tampered event (content changed after signing): the relay refuses it and we would too.
        fresh = channel.seal(request("7a3be7ed7a3be7ed", int(time.time())), created_at=int(time.time()),
                             rng=os.urandom)
        import attrs

        tampered = attrs.evolve(fresh, content=fresh.content[:-4] + "AAAA")
        pool.publish(tampered, loop.time())
        conns.flush()
        await asyncio.sleep(0.5)
        assert "7a3be7ed" not in server.text

        # 4. The genuine event, then the same event replayed: one session only (session-id dedup).
        pool.publish(fresh, loop.time())
        conns.flush()
        await server.wait_for_text("Session 7a3be7ed: request for tcp://127.0.0.1:9 (1 active)")
        replay = channel.seal(request("7a3be7ed7a3be7ed", int(time.time())), created_at=int(time.time()),
                              rng=os.urandom)
        pool.publish(replay, loop.time())
        conns.flush()
        await asyncio.sleep(0.5)
        assert server.text.count("Session 7a3be7ed: request") == 1
        assert intruder.public_key.npub[:12] not in server.text
        conns.close()
        await server.stop()

    run(scenario)
    assert TYPE_REQUEST == "tunnel-request"
