"""A floor for the latency of any two-process Python forwarder: two plain asyncio TCP relays in a chain, no crypto.

Why it exists: the tunnel is two Python processes (client and server), each with a local socket and a socket
towards the other. This relay keeps exactly that shape (entry process -> exit process -> target) and drops
everything else (QUIC, encryption, ICE), so ``bench.py`` can show how much of the tunnel's added latency is the price
of Python processes on the path and how much is the protocol.

    python benchmarks/py_relay.py entry LISTEN_PORT NEXT_PORT   # accepts, connects to NEXT_PORT per connection
    python benchmarks/py_relay.py exit LISTEN_PORT TARGET_PORT  # the same; two of them make the chain

Both roles are the same program (a relay is a relay); they are named for readability in process lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

HOST = "127.0.0.1"


class _Half(asyncio.Protocol):
    """One socket of a relayed connection; writes what it reads into its partner, with backpressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.partner: _Half | None = None
        self.early: list[bytes] = []
        self.eof_early = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        partner = self.partner
        if partner is None or partner.transport is None:
            self.early.append(data)
            return
        partner.transport.write(data)

    def eof_received(self) -> bool:
        partner = self.partner
        if partner is None or partner.transport is None:
            self.eof_early = True
        elif partner.transport.can_write_eof():
            partner.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.close()


async def serve(listen_port: int, next_port: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> _Half:
        inbound = _Half()

        async def connect() -> None:
            try:
                _, outbound = await loop.create_connection(_Half, HOST, next_port)
            except OSError:
                if inbound.transport is not None:
                    inbound.transport.close()
                return
            inbound.partner, outbound.partner = outbound, inbound
            assert outbound.transport is not None
            for chunk in inbound.early:
                outbound.transport.write(chunk)
            inbound.early.clear()
            if inbound.eof_early:
                try:
                    outbound.transport.write_eof()
                except OSError:  # the far end already went away (iperf3's probe connections): nothing to relay
                    outbound.transport.close()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return inbound

    server = await loop.create_server(accepted, HOST, listen_port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("entry", "exit"):
        print("usage: py_relay.py entry|exit LISTEN_PORT NEXT_PORT", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(argv[1]), int(argv[2])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
