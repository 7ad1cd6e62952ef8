"""A real Nostr relay for the tests: nostr-sdk's in-process LocalRelay on 127.0.0.1, in its own thread and loop."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

#: nostr-sdk's relay refuses kind 24242 (Blossom's authorization kind) by default, so the e2e tests agree on
#: another ephemeral kind; kind 24242 itself is covered by the codec tests.
TEST_KIND = 24243


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Outside the ephemeral range, like the e2e helper (see tests/e2e/programs.free_port for why)."""
    from tests.e2e import programs

    return programs.free_port(tcp=kind == socket.SOCK_STREAM, udp=kind == socket.SOCK_DGRAM)


class LocalRelay:
    def __init__(self, port: int | None = None) -> None:
        import nostr_sdk

        self.port = port or free_port()  # a fixed port lets a test bring "the same" relay back after stopping it
        self.url = f"ws://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None

        def run() -> None:
            async def main() -> None:
                relay = nostr_sdk.LocalRelayBuilder().addr("127.0.0.1").port(self.port).build()
                await relay.run()
                self._ready.set()
                for _ in range(20 * 600):  # bounded: ten minutes at most
                    if self._stop.is_set():
                        break
                    await asyncio.sleep(0.05)
                relay.shutdown()

            try:
                asyncio.run(main())
            except BaseException as exc:  # pragma: no cover - reported by start()
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name="nostr-local-relay", daemon=True)

    def start(self) -> LocalRelay:
        self._thread.start()
        assert self._ready.wait(10), "LocalRelay did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="session")
def relay() -> Iterator[LocalRelay]:
    r = LocalRelay().start()
    yield r
    r.stop()


@pytest.fixture
def dead_relay_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    return f"ws://127.0.0.1:{free_port()}"
