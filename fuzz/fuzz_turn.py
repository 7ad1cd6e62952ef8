"""Atheris harness for the TURN client's input side: whatever a "server" sends, an allocated client must neither
raise nor lose its allocation (the client decides only on signed responses to its own transactions).

Run: python fuzz/fuzz_turn.py -atheris_runs=2000
"""

import random
import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core import stun
    from tunnel_core.turn import TurnClient, TurnServer, TurnState

SERVER = ("198.51.100.10", 3478)
KEY = stun.long_term_key("u", "r", "p")


def _allocated() -> TurnClient:
    r = random.Random(1)
    client = TurnClient(server=TurnServer(SERVER, "u", "p"), base=("10.0.0.2", 4000),
                        rng=lambda n: bytes(r.getrandbits(8) for _ in range(n)))
    client.allocate(0.0)
    (first,) = [stun.decode(t.data) for t in client.datagrams_to_send(0.0)]
    challenge = stun.StunMessage(first.method, stun.MessageClass.ERROR, first.transaction_id, (
        (stun.Attr.ERROR_CODE, stun.ErrorCode(401, "Unauthorized")), (stun.Attr.REALM, "r"), (stun.Attr.NONCE, "n")))
    client.receive_datagram(stun.encode(challenge), 0.0)
    (second,) = [stun.decode(t.data) for t in client.datagrams_to_send(0.0)]
    ok = stun.StunMessage(second.method, stun.MessageClass.SUCCESS, second.transaction_id,
                          ((stun.Attr.XOR_RELAYED_ADDRESS, ("198.51.100.10", 50000)),))
    client.receive_datagram(stun.encode(ok, integrity_key=KEY), 0.0)
    client.send(("198.51.100.20", 5000), b"x", 0.0)
    assert client.state is TurnState.ALLOCATED
    return client


def TestOneInput(data: bytes) -> None:
    client = _allocated()
    client.receive_datagram(data, 1.0)
    client.receive_datagram(b"\x40\x00" + data, 1.0)
    framed = data[:2] + len(data[2:]).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12) + data[2:]
    client.receive_datagram(framed, 1.0)
    while client.next_event() is not None:
        pass
    assert client.state is TurnState.ALLOCATED


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
