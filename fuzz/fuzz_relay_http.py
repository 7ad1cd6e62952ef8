"""Atheris harness for the relay's HTTP front (the asyncio relay's connection before the WebSocket upgrade).

Issue 18 item 4: ~330 pipelined ``GET /ping`` on one connection ended in a RecursionError traceback. The input is a
stream a hostile client writes: a mix of fuzzed bytes and well-formed requests (every route, HEAD/GET/POST, odd
headers, challenges, upgrade attempts), optionally pipelined hundreds of times, cut into arbitrary chunks, with
the client sometimes not reading (the transport reports a full write buffer). The connection runs on a real event
loop with a recording transport, no sockets. It must never raise, must answer only with well-formed HTTP/1.1
responses (or a 101 upgrade), must answer every complete request on a connection that stays open, and must stop
reading while its answers are not being read.

Run: python fuzz/fuzz_relay_http.py -atheris_runs=2000
"""

import asyncio
import sys

import atheris

# Dependencies are imported uninstrumented first (h11, websockets, and tunnel_core.iroh_relay with its cryptography):
# the coverage feedback comes from the relay's HTTP front, and instrumenting everything made inputs ten times slower.
import h11  # noqa: F401
import websockets.exceptions
import websockets.frames
import websockets.protocol
import websockets.utils  # noqa: F401

import tunnel_core.iroh_relay  # noqa: F401

with atheris.instrument_imports():
    from tunnel_core.iroh_relay import RelayOptions
    from tunnel_iroh_relay.server import RelayService, _RelayConnection

ROUTES = (b"/ping", b"/generate_204", b"/healthz", b"/", b"/index.html", b"/robots.txt", b"/nope", b"/relay",
          b"/ping?x=1", b"/%00", b"*")
METHODS = (b"GET", b"HEAD", b"POST", b"OPTIONS", b"G\x00T")
HEADERS = (b"", b"X-Iroh-Challenge: abc123\r\n", b"X-Iroh-Challenge: bad value!\r\n", b"Connection: close\r\n",
           b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
           b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
           b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: iroh-relay-v2\r\n")
BODIES = (b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n")


class RecordingTransport:
    """What _RelayConnection uses of an asyncio transport; records writes and reading pauses."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        assert not self.closing or not data, "write after close"
        self.out += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return False


def request(fdp: atheris.FuzzedDataProvider) -> bytes:
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
    route = ROUTES[fdp.ConsumeIntInRange(0, len(ROUTES) - 1)]
    header = HEADERS[fdp.ConsumeIntInRange(0, len(HEADERS) - 1)]
    body = BODIES[fdp.ConsumeIntInRange(0, len(BODIES) - 1)] if b"Content" in header or b"Transfer" in header else b""
    return method + b" " + route + b" HTTP/1.1\r\nHost: r\r\n" + header + b"\r\n" + body


def run(fdp: atheris.FuzzedDataProvider, loop: asyncio.AbstractEventLoop) -> None:
    service = RelayService(RelayOptions())
    service._loop = loop
    conn = _RelayConnection(service)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    stream = bytearray()
    pipelined = 0
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        choice = fdp.ConsumeIntInRange(0, 2)
        if choice == 0:
            stream += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
        else:
            one = request(fdp)
            count = 400 - fdp.ConsumeIntInRange(0, 399) if choice == 2 else 1  # item 4 needed ~330
            stream += one * count
            if one.startswith(b"GET /ping HTTP"):
                pipelined += count
    pause_at = fdp.ConsumeIntInRange(0, len(stream) + 1)
    offset = 0
    paused_once = False
    while offset < len(stream) and not transport.closing:
        size = 65536 - fdp.ConsumeIntInRange(0, 65535)  # big reads when the input runs out, as asyncio's
        if offset >= pause_at and not paused_once:
            paused_once = True
            conn.pause_writing()  # the client stops reading our answers for a while
            assert not transport.reading, "reading went on while answers were not being read"
        if transport.reading:
            conn.data_received(bytes(stream[offset : offset + size]))
            offset += size
        elif conn.paused:
            conn.resume_writing()
        else:
            break  # paused by the rate limit (after an upgrade): the rest of the stream waits
    if conn.paused:
        conn.resume_writing()
    if not transport.closing and conn.http is not None:
        conn.eof_received()
    out = bytes(transport.out)
    assert not out or out.startswith(b"HTTP/1.1 "), out[:80]
    if transport.out.count(b"HTTP/1.1 101") == 0 and stream == b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\n" * pipelined:
        assert out.count(b"HTTP/1.1 200") == pipelined, (out.count(b"HTTP/1.1 200"), pipelined)
    conn.connection_lost(None)
    if conn._timeout is not None:
        conn._timeout.cancel()


LOOP = asyncio.new_event_loop()


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    LOOP.run_until_complete(_main(fdp, LOOP))


async def _main(fdp: atheris.FuzzedDataProvider, loop: asyncio.AbstractEventLoop) -> None:
    run(fdp, loop)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
