"""Atheris harness for the manual-signaling codec: pasted blocks, bare TRS1 payloads and the JSON messages.

Run: python fuzz/fuzz_manual_block.py -atheris_runs=2000
Anything but BlockError escaping (or a decoded value that does not re-encode to itself) is a bug.
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.blocks import (
        BlockError,
        BlockReader,
        ManualAnswer,
        ManualOffer,
        ManualReject,
        ManualRequest,
        decode_answer,
        decode_offer,
        decode_payload,
        encode_block,
        encode_payload,
    )


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        for decode, kind in ((decode_offer, "OFFER"), (decode_answer, "ANSWER")):
            try:
                message = decode(text)
            except BlockError:
                continue
            assert decode(encode_block(kind, message)) == message
    elif mode == 1:
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        reader = BlockReader("OFFER")
        try:
            for line in text.split("\n"):
                if reader.feed_line(line) is not None:
                    break
            else:
                reader.feed_eof()
        except BlockError:
            pass
    elif mode == 2:
        payload = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        try:
            raw = decode_payload(payload)
        except BlockError:
            return
        assert decode_payload(encode_payload(raw)) == raw
    else:
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        for cls in (ManualOffer, ManualAnswer, ManualRequest, ManualReject):
            try:
                message = cls.from_json(raw)
            except BlockError:
                continue
            assert cls.from_json(message.to_json()) == message
        # The same bytes wrapped in a valid payload must behave exactly like the bare JSON.
        try:
            decode_offer(encode_payload(raw))
        except BlockError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
