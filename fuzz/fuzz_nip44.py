"""Atheris harness for NIP-44 v2 decryption and NIP-01 relay->client message parsing, both fed by relays.

A MAC forged by chance is out of reach for a fuzzer, so besides raw payload text the harness also seals fuzzed
bytes the way a peer holding the conversation key would: arbitrary padded plaintext (length prefix and padding
may lie) under a correct MAC, and payloads whose version, size or base64 is then bent. ``decrypt`` may only
raise Nip44Error, and whatever it returns must re-encrypt to a payload of the same size under the same nonce. Relay
messages (text or bytes) may only raise RelayMessageError; whatever parses must be one of the documented shapes.

Run: python fuzz/fuzz_nip44.py -atheris_runs=2000
"""

import base64
import hashlib
import hmac
import json
import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.nostr import nip44
    from tunnel_core.nostr.event import Event
    from tunnel_core.nostr.keys import SecretKey
    from tunnel_core.nostr.relay import (
        ClosedMessage,
        EoseMessage,
        EventMessage,
        NoticeMessage,
        OkMessage,
        RelayMessageError,
        Unknown,
        parse_relay_message,
    )

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

ALICE = SecretKey(bytes.fromhex("11" * 32))
BOB = SecretKey(bytes.fromhex("22" * 32))
CONV = nip44.conversation_key(ALICE, BOB.public_key)
assert CONV == nip44.conversation_key(BOB, ALICE.public_key)
VERBS = ("EVENT", "OK", "EOSE", "CLOSED", "NOTICE", "AUTH", "")
HEX = "0123456789abcdef"


def _seal(nonce: bytes, padded: bytes) -> bytes:
    """Version byte, nonce, ChaCha20(padded) and a correct MAC: what only a holder of CONV can produce."""
    chacha_key, chacha_nonce, hmac_key = nip44.message_keys(CONV, nonce)
    encryptor = Cipher(algorithms.ChaCha20(chacha_key, b"\0" * 4 + chacha_nonce), mode=None).encryptor()
    ciphertext = encryptor.update(padded)
    return bytes([nip44.VERSION]) + nonce + ciphertext + hmac.new(hmac_key, nonce + ciphertext, hashlib.sha256).digest()


def _payload(fdp: atheris.FuzzedDataProvider) -> str:
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 0:  # raw text as a relay could put in an event's content
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 400))
    nonce = fdp.ConsumeBytes(32).ljust(32, b"\0")
    if mode == 1:  # a correct MAC over an arbitrary padded plaintext: the unpadding and UTF-8 checks decide
        size = (32, 64, 96, 128, 192, 256, 320, 384, 512, fdp.ConsumeIntInRange(0, 600))[fdp.ConsumeIntInRange(0, 9)]
        head = fdp.ConsumeBytes(2) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, size + 2).to_bytes(2, "big")
        padded = (head + fdp.ConsumeBytes(size)).ljust(size + 2, b"\0")
        return base64.b64encode(_seal(nonce, padded)).decode()
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 300)) or "x"
    payload = nip44.encrypt_with_nonce(text, CONV, nonce)
    if mode == 2:
        assert nip44.decrypt(payload, CONV) == text
        return payload
    raw = bytearray(base64.b64decode(payload))
    if mode == 3:  # a bent byte (version, nonce, ciphertext or MAC) or a cut
        if fdp.ConsumeBool():
            index = fdp.ConsumeIntInRange(0, len(raw) - 1)
            raw[index] ^= fdp.ConsumeIntInRange(1, 255)
        else:
            del raw[fdp.ConsumeIntInRange(0, len(raw)) :]
        return base64.b64encode(raw).decode()
    encoded = base64.b64encode(raw).decode()  # bent base64: padding, alphabet, whitespace, non-ASCII
    index = fdp.ConsumeIntInRange(0, len(encoded))
    return encoded[:index] + fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 4)) + encoded[index + 1 :]


def _event_obj(fdp: atheris.FuzzedDataProvider) -> object:
    """An event object whose fields are each either well-shaped or a hostile JSON value."""
    def field(good: object) -> object:
        pick = fdp.ConsumeIntInRange(0, 9)
        if pick < 7:
            return good
        return (None, fdp.ConsumeUnicodeNoSurrogates(70), fdp.ConsumeIntInRange(-2, 1 << 64))[pick - 7]

    def hexstr(n: int) -> str:
        return "".join(HEX[b % 16] for b in fdp.ConsumeBytes(n)).ljust(n, "0")

    return {
        "id": field(hexstr(64)), "pubkey": field(hexstr(64)), "sig": field(hexstr(128)),
        "created_at": field(fdp.ConsumeIntInRange(0, 1 << 40)), "kind": field(fdp.ConsumeIntInRange(0, 70000)),
        "content": field(fdp.ConsumeUnicodeNoSurrogates(40)),
        "tags": field([[fdp.ConsumeUnicodeNoSurrogates(3) for _ in range(fdp.ConsumeIntInRange(0, 3))]
                       for _ in range(fdp.ConsumeIntInRange(0, 3))]),
    }


def _relay_text(fdp: atheris.FuzzedDataProvider) -> str | bytes:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 400))
    if mode == 1:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    if mode == 2:  # deep nesting: the parser must refuse, not overflow the stack
        depth = fdp.ConsumeIntInRange(0, 200_000)
        return '["NOTICE",' * depth + fdp.ConsumeUnicodeNoSurrogates(8) + "]" * fdp.ConsumeIntInRange(0, depth)
    verb = VERBS[fdp.ConsumeIntInRange(0, len(VERBS) - 1)]
    args: list[object] = [verb]
    if verb == "EVENT" and fdp.ConsumeBool():  # the one shape that reaches the event parser
        args += [fdp.ConsumeUnicodeNoSurrogates(4), _event_obj(fdp)]
        return json.dumps(args)
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        kind = fdp.ConsumeIntInRange(0, 4)
        args.append((fdp.ConsumeUnicodeNoSurrogates(10), fdp.ConsumeBool(), fdp.ConsumeIntInRange(-5, 5), None,
                     _event_obj(fdp))[kind])
    return json.dumps(args, ensure_ascii=fdp.ConsumeBool())


def _check_relay_message(msg: object) -> None:
    if isinstance(msg, EventMessage):
        assert isinstance(msg.subscription_id, str) and isinstance(msg.event, Event)
        assert len(msg.event.id) == 64 and len(msg.event.pubkey) == 64 and len(msg.event.sig) == 128
        assert all(isinstance(v, str) for tag in msg.event.tags for v in tag)
    elif isinstance(msg, OkMessage):
        assert isinstance(msg.event_id, str) and isinstance(msg.accepted, bool) and isinstance(msg.message, str)
    elif isinstance(msg, EoseMessage):
        assert isinstance(msg.subscription_id, str)
    elif isinstance(msg, ClosedMessage):
        assert isinstance(msg.subscription_id, str) and isinstance(msg.message, str)
    elif isinstance(msg, NoticeMessage):
        assert isinstance(msg.message, str)
    else:
        assert isinstance(msg, Unknown) and isinstance(msg.verb, str), msg


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        payload = _payload(fdp)
        try:
            plain = nip44.decrypt(payload, CONV)
        except nip44.Nip44Error:
            return
        assert isinstance(plain, str)
        raw = base64.b64decode(payload)
        again = base64.b64decode(nip44.encrypt_with_nonce(plain, CONV, raw[1:33]))
        # Same nonce, same padded size; padding bytes themselves are not checked on decryption (NIP-44 spec).
        assert again[:33] == raw[:33] and len(again) == len(raw)
    else:
        try:
            msg = parse_relay_message(_relay_text(fdp))
        except RelayMessageError:
            return
        _check_relay_message(msg)


if __name__ == "__main__":
    # Structured inputs need room from the first run: by default libFuzzer grows inputs slowly and would spend a
    # short run (CI does 3000) on inputs of a few bytes that never get past the first steps.
    argv = sys.argv if any(a.startswith("-len_control") for a in sys.argv) else [*sys.argv, "-len_control=0"]
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
