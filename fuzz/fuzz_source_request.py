"""Atheris harness for SourceRequest/SourceResponse: whole-buffer, incremental and JSON-body decoding.

Run: python fuzz/fuzz_source_request.py -atheris_runs=2000
Anything but WireError escaping, or a decoded message that does not re-encode to itself, is a bug.
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.wire import (
        MessageReader,
        WireError,
        decode_source_request,
        decode_source_response,
        encode_source_request,
        encode_source_response,
        split_message,
    )


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    version = fdp.ConsumeIntInRange(0, 5)
    chunk = fdp.ConsumeIntInRange(1, 64)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())

    # Whole-buffer decoding (upstream's decode_length_prefixed).
    for name, decode, encode in (
        ("SourceRequest", decode_source_request, encode_source_request),
        ("SourceResponse", decode_source_response, encode_source_response),
    ):
        try:
            message = decode(split_message(stream, name), expected_version=version)
        except WireError:
            pass
        else:
            assert decode(split_message(encode(message), name), expected_version=version) == message
        try:
            decode(stream, expected_version=version)  # the stream as a bare JSON body
        except WireError:
            pass

    # Incremental decoding must agree with whole-buffer decoding, whatever the chunk size.
    reader = MessageReader("SourceRequest")
    body = None
    try:
        for i in range(0, len(stream), chunk):
            body = reader.feed(stream[i : i + chunk])
            if body is not None:
                break
        else:
            reader.feed_eof()
    except WireError:
        return
    assert body is not None
    assert body == split_message(stream, "SourceRequest")
    assert stream.startswith(len(body).to_bytes(4, "big") + body + reader.remainder)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
