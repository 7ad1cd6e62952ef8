"""Atheris harness for UDP-over-stream framing: arbitrary streams under arbitrary chunking.

Run: python fuzz/fuzz_udp_framing.py -atheris_runs=2000
The decoder may only raise WireError (at EOF mid-frame); re-encoding its output must reproduce the consumed bytes.
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.wire import UdpFrameDecoder, WireError, encode_udp_frame


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), 0, 1024))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [min(c, len(stream)) for c in cuts]
    decoder = UdpFrameDecoder()
    datagrams: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        datagrams.extend(decoder.feed(stream[start:end]))
    consumed = b"".join(encode_udp_frame(d) for d in datagrams)
    assert stream.startswith(consumed)
    assert len(consumed) + decoder.buffered == len(stream)
    try:
        decoder.feed_eof()
    except WireError:
        assert len(consumed) < len(stream)
    else:
        assert consumed == stream


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
