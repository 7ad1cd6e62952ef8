"""Atheris harness for the sans-IO WebSocket client against a hostile server, during and after the HTTP upgrade.

Four kinds of server byte streams, each fed in arbitrary chunks and maybe ended by EOF: raw bytes from the
first byte on, a plausible HTTP response (any status, a mix of right and wrong upgrade headers, a body), a valid
101 upgrade followed by raw bytes, and a valid upgrade followed by well-framed but hostile WebSocket frames (any
opcode, FIN and reserved bits, lying or huge lengths, masks, close payloads). The
adapter is played as RelayLink plays it: feed, drain messages, write, send a text while the state says OPEN.
Only WebSocketError may escape, only from a connection that has not opened yet, and it leaves the client CLOSED;
a CLOSED client ignores further input; an OPEN one accepts ``send_text``; messages are bounded by MAX_MESSAGE.

Run: python fuzz/fuzz_websocket.py -atheris_runs=2000
"""

import struct
import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.websocket import (
        MAX_MESSAGE,
        ClosedByPeer,
        Message,
        WebSocketClient,
        WebSocketError,
        WsState,
        accept_key,
        parse_ws_url,
    )

URL = parse_ws_url("ws://127.0.0.1:7777/")
KEY = bytes(range(16))
ACCEPT = accept_key("AAECAwQFBgcICQoLDA0ODw==")
UPGRADE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n")
OPCODES = (0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB)


def _frame(fdp: atheris.FuzzedDataProvider) -> bytes:
    """One server frame (unmasked, as servers send), sometimes with a lying or huge length field."""
    first = (0x80 if fdp.ConsumeBool() else 0) | OPCODES[fdp.ConsumeIntInRange(0, len(OPCODES) - 1)]
    if fdp.ConsumeIntInRange(0, 7) == 0:
        first |= 0x70  # reserved bits: no extension was negotiated
    op = first & 0x0F
    if op == 0x8 and fdp.ConsumeBool():
        payload = struct.pack(">H", fdp.ConsumeIntInRange(0, 5000)) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20))
    else:
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    size = len(payload)
    shape = fdp.ConsumeIntInRange(0, 9)
    if shape == 0:
        size = fdp.ConsumeIntInRange(0, 1 << 63)  # a length the payload does not have
    mask = b""
    if shape == 1:
        mask = fdp.ConsumeBytes(4).ljust(4, b"\0")  # servers must not mask
    bit = 0x80 if mask else 0
    if size < 126 and shape != 2:
        header = bytes((first, bit | size))
    elif size < 1 << 16 and shape != 3:
        header = bytes((first, bit | 126)) + struct.pack(">H", size)
    else:
        header = bytes((first, bit | 127)) + struct.pack(">Q", size)
    return header + mask + payload


HEADERS = (b"Upgrade: websocket", b"Upgrade: h2c", b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + ACCEPT.encode(),
           b"Sec-WebSocket-Accept: " + ACCEPT.encode().lower(), b"Sec-WebSocket-Accept: \xff\xfe",
           b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Sec-WebSocket-Protocol: x", b"X: \xc3\xa9")


def _response(fdp: atheris.FuzzedDataProvider) -> bytes:
    """An HTTP response that is well formed often enough to reach the upgrade checks: status, headers, body."""
    status = (101, 101, 100, 200, 301, 404, fdp.ConsumeIntInRange(0, 999))[fdp.ConsumeIntInRange(0, 6)]
    lines = [b"HTTP/1.%d %d Whatever" % (fdp.ConsumeIntInRange(0, 1), status)]
    lines += [HEADERS[fdp.ConsumeIntInRange(0, len(HEADERS) - 1)] for _ in range(fdp.ConsumeIntInRange(0, 6))]
    return b"\r\n".join(lines) + b"\r\n\r\n" + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))


def _check_message(msg: object) -> None:
    assert isinstance(msg, Message | ClosedByPeer), msg
    if isinstance(msg, Message):
        assert isinstance(msg.data, str | bytes)
        assert len(msg.data) <= MAX_MESSAGE
    else:
        assert msg.code is None or 1000 <= msg.code <= 4999, msg
        assert isinstance(msg.reason, str)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    eof = fdp.ConsumeIntInRange(0, 3) == 0
    if mode == 0:
        stream = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1000))
    elif mode == 3:
        stream = _response(fdp) + b"".join(_frame(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    elif mode == 1:
        stream = UPGRADE + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1000))
    else:
        stream = UPGRADE + b"".join(_frame(fdp) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    ws = WebSocketClient(URL, KEY)
    assert ws.data_to_send().startswith(b"GET / HTTP/1.1\r\n")
    chunks = []
    while stream:
        cut = fdp.ConsumeIntInRange(1, len(stream))
        chunks.append(stream[:cut])
        stream = stream[cut:]
    if eof:
        chunks.append(b"")
    for chunk in chunks:
        before = ws.state
        try:
            ws.receive_data(chunk)
        except WebSocketError:
            assert before is WsState.CONNECTING, before
            assert ws.state is WsState.CLOSED
        if before is WsState.CLOSED:
            assert ws.state is WsState.CLOSED  # a closed client stays closed and quiet
        assert isinstance(ws.data_to_send(), bytes)
        while (msg := ws.next_message()) is not None:
            _check_message(msg)
        if ws.state is WsState.OPEN:
            ws.send_text('["REQ","s",{}]')  # the pool may write at any time while the link says OPEN
            assert ws.data_to_send()
        if chunk == b"":
            assert ws.state is WsState.CLOSED, ws.state  # after EOF the link is finished
            break
    ws.close()
    ws.data_to_send()
    assert ws.state is WsState.CLOSED


if __name__ == "__main__":
    # Structured inputs need room from the first run: by default libFuzzer grows inputs slowly and would spend a
    # short run (CI does 3000) on inputs of a few bytes that never get past the first steps.
    argv = sys.argv if any(a.startswith("-len_control") for a in sys.argv) else [*sys.argv, "-len_control=0"]
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
