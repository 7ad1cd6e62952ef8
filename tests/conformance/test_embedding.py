"""docs/embedding.md, executed: a program runs a manual-mode server and client in-process on its own event loop.

Both sides run in one process on the same runtime, the blocks travel through in-memory consoles (the doc's
Inbox/Outbox pattern), the client's local port carries a TCP echo, and ``stop()`` ends the client, after which the
server's dialogue ends by itself ("Connection closed."). Loopback only.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from e2e.programs import LOOPBACK, TcpEchoServer, free_port
from tunnel_core.dialogue import manual_client_dialogue, manual_server_dialogue
from tunnel_core.options import IceOptions, ManualClientOptions, ManualServerOptions

pytestmark = [pytest.mark.timeout(60)]

ICE = IceOptions(stun_servers=(), host_candidates=(LOOPBACK,))
WAIT = 20.0


class Inbox:
    """stdin for a tunnel: lines arrive through ``put_block`` (the doc's signaling channel stand-in)."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()

    def put_block(self, text: str) -> None:
        for line in text.splitlines():
            self.lines.put(line + "\n")

    def readline(self) -> str:
        try:
            return self.lines.get(timeout=WAIT)
        except queue.Empty:
            return ""


class Outbox:
    """stdout for a tunnel: hands each complete block to ``deliver``."""

    def __init__(self, deliver: Callable[[str], None]) -> None:
        self.deliver = deliver
        self.buffer = ""

    def write(self, text: str) -> int:
        self.buffer += text
        if "-----END" in self.buffer:
            self.deliver(self.buffer)
            self.buffer = ""
        return len(text)

    def flush(self) -> None:
        pass


def consoles(console_cls: type[Any]) -> tuple[Any, Any]:
    """A client and a server console wired to each other (client's OFFER -> server, server's ANSWER -> client)."""

    class Recording(console_cls):  # type: ignore[misc, valid-type]
        def __init__(self, inbox: Inbox, deliver: Callable[[str], None]) -> None:
            super().__init__(stdin=inbox, stdout=Outbox(deliver), stderr=io.StringIO())
            self.lines: list[str] = []
            self.listening = threading.Event()

        def say(self, line: str) -> None:
            self.lines.append(line)
            if line.startswith("Listening on"):
                self.listening.set()

    client_in, server_in = Inbox(), Inbox()
    client = Recording(client_in, server_in.put_block)
    server = Recording(server_in, client_in.put_block)
    return client, server


def options(echo_port: int) -> tuple[ManualServerOptions, ManualClientOptions, int]:
    port = free_port()
    server = ManualServerOptions(allowed_tcp=("127.0.0.0/8",), ice=ICE)
    client = ManualClientOptions(source=f"tcp://{LOOPBACK}:{echo_port}", target=f"{LOOPBACK}:{port}", ice=ICE)
    return server, client, port


def echo_round_trip(port: int) -> None:
    """Blocking client for the tunnel's local port (run in a worker thread by each runtime)."""
    payload = os.urandom(512 << 10)
    with socket.create_connection((LOOPBACK, port), timeout=WAIT) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while data := sock.recv(1 << 20):
            got += data
        sender.join(WAIT)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), f"echoed {len(got)} bytes"


def check_transcripts(client: Any, server: Any) -> None:
    assert "Connected to server over QUIC." in client.lines, client.lines
    assert "Client connected over QUIC." in server.lines, server.lines
    assert server.lines[-1] == "Connection closed.", server.lines


def test_trio_program_runs_both_sides() -> None:
    import trio

    from tunnel_trio.runner import Console, TrioRunner

    client_console, server_console = consoles(Console)
    with TcpEchoServer() as echo:
        server_opts, client_opts, port = options(echo.port)

        async def main() -> None:
            client = TrioRunner(client_console, handle_signals=False)
            server = TrioRunner(server_console, handle_signals=False)
            with trio.fail_after(WAIT * 2):
                await run_pair(client, server)

        async def run_pair(client: TrioRunner, server: TrioRunner) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.run, manual_client_dialogue(client_opts, os.urandom))
                nursery.start_soon(server.run, manual_server_dialogue(server_opts, os.urandom))
                assert await trio.to_thread.run_sync(client_console.listening.wait, WAIT), client_console.lines
                await trio.to_thread.run_sync(echo_round_trip, port)
                client.stop()

        trio.run(main)
    check_transcripts(client_console, server_console)


def run_gevent_program(wait_listening: Callable[[Any], bool], exchange: Callable[[int], None]) -> None:
    """The gevent embedding of docs/embedding.md; the caller says how to wait and talk (thread pool or greenlet)."""
    import gevent

    from tunnel_gevent.runner import Console, GeventRunner

    client_console, server_console = consoles(Console)
    with TcpEchoServer() as echo:
        server_opts, client_opts, port = options(echo.port)
        client = GeventRunner(client_console, handle_signals=False)
        server = GeventRunner(server_console, handle_signals=False)
        tasks = [
            gevent.spawn(client.run, manual_client_dialogue(client_opts, os.urandom)),
            gevent.spawn(server.run, manual_server_dialogue(server_opts, os.urandom)),
        ]
        assert wait_listening(client_console), client_console.lines
        exchange(port)
        client.stop()
        gevent.joinall(tasks, timeout=WAIT)
        for task in tasks:
            assert task.ready(), "runner did not return after stop()"
            task.get()  # re-raises a failure
    check_transcripts(client_console, server_console)


def test_gevent_program_runs_both_sides() -> None:
    import gevent

    pool = gevent.get_hub().threadpool
    run_gevent_program(
        lambda console: bool(pool.apply(console.listening.wait, (WAIT,))),
        lambda port: pool.apply(echo_round_trip, (port,)),
    )


def test_asyncio_program_runs_both_sides() -> None:
    from tunnel_asyncio.runner import AsyncioRunner, Console

    client_console, server_console = consoles(Console)
    with TcpEchoServer() as echo:
        server_opts, client_opts, port = options(echo.port)

        async def main() -> None:
            client = AsyncioRunner(client_console)
            server = AsyncioRunner(server_console)
            tasks = [
                asyncio.create_task(client.run(manual_client_dialogue(client_opts, os.urandom))),
                asyncio.create_task(server.run(manual_server_dialogue(server_opts, os.urandom))),
            ]
            assert await asyncio.to_thread(client_console.listening.wait, WAIT), client_console.lines
            await asyncio.to_thread(echo_round_trip, port)
            client.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

        asyncio.run(main())
    check_transcripts(client_console, server_console)

