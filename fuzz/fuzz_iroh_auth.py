"""Atheris harness for the E4 auth stream: message decoders and both machines fed arbitrary bytes in chunks.

Run: python fuzz/fuzz_iroh_auth.py -atheris_runs=2000
Decoders may raise only WireError; the server machine never raises (bad input becomes AuthDenied); the client
machine raises only WireError; a decoded message re-encodes to itself.
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.iroh_session.auth import (
        AuthClient,
        AuthServer,
        decode_auth_challenge,
        decode_auth_request,
        decode_auth_response,
        encode_auth_challenge,
        encode_auth_request,
        encode_auth_response,
    )
    from tunnel_core.wire import WireError

SEED = bytes([0x2A] * 32)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chunk = fdp.ConsumeIntInRange(1, 64)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())

    for decode, encode in (
        (decode_auth_challenge, encode_auth_challenge),
        (decode_auth_request, encode_auth_request),
        (decode_auth_response, encode_auth_response),
    ):
        try:
            message = decode(stream)
        except WireError:
            continue
        assert decode(encode(message)[4:]) == message  # type: ignore[arg-type]

    server = AuthServer([SEED], rng=lambda n: bytes(n), now=0.0)
    for i in range(0, len(stream), chunk):
        server.feed(stream[i : i + chunk])
    server.feed_eof()
    server.on_timer(100.0)
    assert server.finished

    client = AuthClient(SEED, now=0.0)
    try:
        for i in range(0, len(stream), chunk):
            if client.finished:
                break
            client.feed(stream[i : i + chunk])
        client.feed_eof()
    except WireError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
