"""Atheris harness for the iroh relay frame codec and the server machine that consumes it.

Any WebSocket message must decode or raise FrameError; whatever decodes must re-encode to an equal frame; the
forwarding fast path must agree with the decoder; and the server machine fed the same bytes from an
authenticated client must never raise (bad input only closes that client).

Run: python fuzz/fuzz_relay_frames.py -atheris_runs=2000
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.iroh_relay import RelayServer
    from tunnel_core.iroh_relay import frames as fr
    from tunnel_core.iroh_relay.handshake import sign_challenge

SRC = bytes(range(32))


def _server_with_client() -> tuple[RelayServer, int]:
    server = RelayServer(rng=lambda n: bytes(n))
    conn = server.connect(0.0)
    (challenge,) = server.take_outgoing(conn)
    auth = sign_challenge(bytes([9] * 32), fr.decode_frame(challenge))  # type: ignore[arg-type]
    server.receive_frame(conn, fr.encode_frame(auth), 0.0)
    server.take_outgoing(conn)
    return server, conn


SERVER, CONN = _server_with_client()


def TestOneInput(data: bytes) -> None:
    global SERVER, CONN
    try:
        frame = fr.decode_frame(data)
    except fr.FrameError:
        frame = None
    if frame is not None:
        assert fr.decode_frame(fr.encode_frame(frame)) == frame
    try:
        dst, out = fr.forward_datagram(data, SRC)
    except fr.FrameError:
        pass
    else:
        forwarded = fr.decode_frame(out)
        assert frame is not None and dst == frame.dst  # type: ignore[union-attr]
        assert forwarded.contents == frame.contents  # type: ignore[union-attr]
    SERVER.receive_frame(CONN, data, 1.0)
    SERVER.take_outgoing(CONN)
    while SERVER.next_event() is not None:
        pass
    if SERVER.endpoint_of(CONN) is None or SERVER.client_count == 0:  # closed by bad input: start afresh
        SERVER, CONN = _server_with_client()


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
