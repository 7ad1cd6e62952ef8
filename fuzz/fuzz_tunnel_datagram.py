"""Atheris harness for the tunnel-datagram decoder and reassembly (docs/datagrams.md).

Run: python fuzz/fuzz_tunnel_datagram.py -atheris_runs=2000
decode_datagram may only raise DatagramError; what it accepts re-encodes to the same bytes (a whole datagram) or
carries a valid fragment header; a Reassembler fed any sequence of fragments stays within its bounds and only
ever returns datagrams of at most 64 KiB.
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.datagram import (
        MAX_FRAGMENTS,
        MAX_PARTIALS,
        DatagramError,
        Fragment,
        Reassembler,
        Whole,
        decode_datagram,
        encode_whole,
    )
    from tunnel_core.wire import MAX_UDP_DATAGRAM


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    reassembler = Reassembler(max_partials=fdp.ConsumeIntInRange(1, MAX_PARTIALS))
    now = 0.0
    for _ in range(fdp.ConsumeIntInRange(1, 32)):
        frame = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))
        now += fdp.ConsumeIntInRange(0, 2000) / 1000
        try:
            item = decode_datagram(frame)
        except DatagramError:
            continue
        if isinstance(item, Whole):
            # Varints have several encodings; ours is the shortest, so compare after a round trip of ours.
            assert decode_datagram(encode_whole(item.flow_id, item.payload)) == item
            continue
        assert isinstance(item, Fragment)
        assert 2 <= item.count <= MAX_FRAGMENTS and 0 <= item.index < item.count and item.payload
        reassembler.handle_timer(now)
        whole = reassembler.add(item, now)
        assert whole is None or len(whole) <= MAX_UDP_DATAGRAM
        assert len(reassembler) <= MAX_PARTIALS


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
