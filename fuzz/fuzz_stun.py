"""Atheris harness for the STUN codec: any datagram must decode or raise StunError, nothing else.

Run: python fuzz/fuzz_stun.py -atheris_runs=2000
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core import stun


def _framed(data: bytes) -> bytes:
    """The input as the body of a message with a valid header, so the fuzzer reaches the attribute parser."""
    body = data[2:]
    body += bytes(-len(body) % 4)
    message_type = int.from_bytes(data[:2].ljust(2, b"\0"), "big") & 0x3FFF
    return message_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12) + body


def _check_stun(data: bytes) -> None:
    try:
        msg = stun.decode(data)
    except stun.StunError:
        return
    msg.check_integrity(b"key")
    msg.unknown_required()
    # Whatever decoded must encode back to something that decodes to the same message.
    again = stun.decode(stun.encode(msg, integrity_key=b"k" if msg.has_integrity else None,
                                    fingerprint=msg.has_fingerprint))
    assert again == msg


def TestOneInput(data: bytes) -> None:
    _check_stun(data)
    framed = _framed(data)
    if len(framed) <= 0xFFFF + 20:
        assert stun.is_stun(framed)
        _check_stun(framed)
    stun.is_stun(data)
    try:
        channel, payload = stun.decode_channel_data(data)
    except stun.StunError:
        pass
    else:
        assert stun.decode_channel_data(stun.encode_channel_data(channel, payload)) == (channel, payload)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
