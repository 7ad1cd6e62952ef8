"""Atheris harness for what a Nostr relay can hand us: relay frames, events, NIP-44 payloads and tunnel messages.
Any input must parse or raise NostrError, nothing else; a frame the pool accepts must carry a verified event.

Run: python fuzz/fuzz_nostr_event.py -atheris_runs=2000
"""

import json
import os
import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.nostr import nip44
    from tunnel_core.nostr.errors import NostrError
    from tunnel_core.nostr.event import parse_event, sign_event
    from tunnel_core.nostr.keys import SecretKey
    from tunnel_core.nostr.messages import TYPE_ANSWER, TYPE_OFFER, TYPE_REJECT, TYPE_REQUEST, Channel
    from tunnel_core.nostr.pool import EventReceived, RelayPool
    from tunnel_core.nostr.relay import parse_relay_message

CLIENT = SecretKey(bytes.fromhex("11" * 32))
SERVER = SecretKey(bytes.fromhex("22" * 32))
RECEIVER = Channel(SERVER, CLIENT.public_key)
SENDER = Channel(CLIENT, SERVER.public_key)
CONV = nip44.conversation_key(SERVER, CLIENT.public_key)
TYPES = (TYPE_REQUEST, TYPE_OFFER, TYPE_ANSWER, TYPE_REJECT)


def _pool() -> RelayPool:
    pool = RelayPool(["ws://127.0.0.1:1"], filters=[{}], subscription_id="s")
    pool.connections_wanted(0.0)
    pool.connected("ws://127.0.0.1:1", 0.0)
    return pool


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, 4)
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    try:
        if choice == 0:
            parse_relay_message(text)
        elif choice == 1:
            parse_event(text)
        elif choice == 2:
            nip44.decrypt(text, CONV)
        elif choice == 3:
            # A genuinely signed event whose content is fuzzed: only the tunnel message checks stand in the way.
            event = sign_event(CLIENT, created_at=1, kind=24242,
                               tags=[["t", RECEIVER.transfer_id], ["p", SERVER.public_key.hex],
                                     ["type", TYPES[len(text) % 4]]],
                               content=nip44.encrypt(text or "x", CONV, os.urandom) if len(text) % 2 else text,
                               rng=os.urandom)
            RECEIVER.open(event, TYPES)
        else:
            pool = _pool()
            pool.receive_text("ws://127.0.0.1:1", json.dumps(["EVENT", "s", text]) if len(text) % 2 else text, 0.0)
            while (ev := pool.next_event()) is not None:
                if isinstance(ev, EventReceived):
                    ev.event.verify()
    except NostrError:
        pass
    except UnicodeEncodeError:
        pass  # lone surrogates cannot be JSON-dumped by the harness itself; not the codec's input


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
