"""Atheris harness for the durable-streams control stream, iroh mode's framed streams and resume openings
(docs/durable.md).

Run: python fuzz/fuzz_durable_control.py -atheris_runs=2000
Arbitrary bytes under arbitrary chunking may only raise DurableWireError; every decoded frame re-encodes to the
bytes it came from, and the decoder never buffers more than one frame's worth.
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.resume import (
        MAX_DATA,
        MAX_FRAME_BODY,
        RESUME_HEADER_SIZE,
        Ack,
        ControlDecoder,
        Data,
        DurableWireError,
        Fin,
        Hello,
        decode_resume,
        encode_ack,
        encode_data,
        encode_fin,
        encode_hello,
        encode_resume,
    )


def _encode(frame: object) -> bytes:
    if isinstance(frame, Hello):
        return encode_hello(frame)
    if isinstance(frame, Data):
        return b"".join(encode_data(frame.payload))
    if isinstance(frame, Fin):
        return encode_fin()
    assert isinstance(frame, Ack)
    return encode_ack(frame.offsets)


def _check(stream: bytes, cuts: list[int], decoder: ControlDecoder) -> None:
    """Decoded frames re-encode to exactly the bytes consumed; the rest is at most one frame."""
    frames: list[object] = []
    try:
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            frames.extend(decoder.feed(stream[start:end]))
    except DurableWireError:
        return
    consumed = b"".join(_encode(f) for f in frames)
    assert stream.startswith(consumed)
    assert len(consumed) + decoder.buffered == len(stream)
    assert decoder.buffered <= 5 + max(MAX_DATA, MAX_FRAME_BODY)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), 0, 4096))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [min(c, len(stream)) for c in cuts]
    _check(stream, cuts, ControlDecoder())
    _check(stream, cuts, ControlDecoder(stream=True))
    if len(stream) >= RESUME_HEADER_SIZE:
        try:
            key, offset = decode_resume(stream[:RESUME_HEADER_SIZE])
        except DurableWireError:
            return
        assert encode_resume(key, offset) == stream[:RESUME_HEADER_SIZE]


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
