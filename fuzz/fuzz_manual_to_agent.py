"""Atheris harness for the whole manual-block -> machines path: what a pasted OFFER or ANSWER can make the tunnel do.

Issue 18 items 2 and 3 were found by hand: a 65 KB ``ice_ufrag`` passed every check and blew up inside the ICE
agent's STUN encoder (a traceback, then a hang), and a malformed ``quic_fingerprint`` blew up when QUIC was built.
This harness builds OFFER and ANSWER blocks whose fields are fuzzed - ordinary, oversized (up to 20,000
characters), control characters, near-miss fingerprints, hostile candidates - runs them through exactly the steps
the flows take (decode, source / ICE side / fingerprint checks), and then, for whatever was accepted, drives the
machines: ICE agent ``set_remote`` / ``connect`` / timers / outgoing checks, and the QUIC client pinned to the
fingerprint. The rule: the checks may refuse with a ``RemoteProtocolError`` whose message is one printable, capped
line; anything they accept must never make a machine raise.

Run: python fuzz/fuzz_manual_to_agent.py -atheris_runs=2000
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core import assembly, manual
    from tunnel_core.blocks import ManualAnswer, ManualOffer, decode_answer, decode_offer, encode_block
    from tunnel_core.errors import RemoteProtocolError
    from tunnel_core.ice.agent import IceAgent

ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: Oversized first: when the input runs out, the fuzzer's defaults pick the first choices (item 2 was a 65 KB
#: ufrag; anything past 513 bytes overflows a STUN USERNAME).
SIZES = (20_000, 600, 513, 257, 256, 255, 24, 22, 8, 4, 3, 0, 1000, 300)
HOSTS = ("192.0.2.7", "0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1", "::ffff:192.0.2.7", "127.0.0.1",
         "2001:db8::1", "bad host", "1.2.3.4.5")
#: An error message is one line a person reads: no control characters, bounded.
MAX_MESSAGE = 1000


def _rng(n: int) -> bytes:
    return bytes((i * 37 + 11) % 256 for i in range(n))


def field(fdp: atheris.FuzzedDataProvider) -> str:
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    size = SIZES[fdp.ConsumeIntInRange(0, len(SIZES) - 1)]
    if kind == 0:
        return (ICE_CHARS * (size // len(ICE_CHARS) + 1))[:size]
    if kind == 1:
        return "ab" * (size // 2) + fdp.ConsumeUnicodeNoSurrogates(2)
    return fdp.ConsumeUnicodeNoSurrogates(2) * size


def candidate(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeBool():
        return field(fdp)
    host = HOSTS[fdp.ConsumeIntInRange(0, len(HOSTS) - 1)]
    port = fdp.ConsumeIntInRange(0, 70_000)
    kind = ("host", "srflx", "prflx", "relay", "x")[fdp.ConsumeIntInRange(0, 4)]
    return f"candidate:{fdp.ConsumeIntInRange(0, 9)} 1 udp {fdp.ConsumeIntInRange(0, 2**32)} {host} {port} typ {kind}"


def check_message(exc: Exception) -> None:
    text = str(exc)
    assert text.isprintable() and len(text) <= MAX_MESSAGE, repr(text[:300])


def drive_agent(remote: manual.RemoteIce, controlling: bool) -> None:
    agent = IceAgent(controlling=controlling, rng=_rng)
    agent.add_local_address(("192.0.2.1", 5000))
    agent.add_local_address(("2001:db8::2", 5000))
    agent.set_remote(remote.ufrag, remote.pwd, remote.candidates)
    now = 1.0
    agent.connect(now)
    for _ in range(12):
        agent.handle_timer(now)
        agent.datagrams_to_send(now)
        while agent.next_event() is not None:
            pass
        timer = agent.get_timer()
        if timer is None:
            break
        now = max(now + 0.01, timer)


def server_side(fdp: atheris.FuzzedDataProvider) -> None:
    offer = ManualOffer(ice_ufrag=field(fdp), ice_pwd=field(fdp), candidates=[candidate(fdp) for _ in range(3)],
                        quic_fingerprint="", source=field(fdp) if fdp.ConsumeBool() else "tcp://127.0.0.1:22")
    try:
        decoded = decode_offer(encode_block("OFFER", offer))
        manual.offer_source(decoded)
        remote = manual.remote_ice(decoded.ice_ufrag, decoded.ice_pwd, decoded.candidates)
    except RemoteProtocolError as exc:
        check_message(exc)
        return
    drive_agent(remote, controlling=False)


def client_side(fdp: atheris.FuzzedDataProvider) -> None:
    fingerprint = field(fdp) if fdp.ConsumeBool() else "ab" * 32
    answer = ManualAnswer(ice_ufrag=field(fdp), ice_pwd=field(fdp), candidates=[candidate(fdp) for _ in range(3)],
                          quic_fingerprint=fingerprint)
    try:
        decoded = decode_answer(encode_block("ANSWER", answer))
        pin = manual.answer_fingerprint(decoded)
        remote = manual.remote_ice(decoded.ice_ufrag, decoded.ice_pwd, decoded.candidates)
    except RemoteProtocolError as exc:
        check_message(exc)
        return
    quic = assembly.new_quic(is_client=True, odcid=None, identity=None, expected_fingerprint=pin, packet_size=1200)
    quic.connect(("peer", 0), 1.0)
    quic.datagrams_to_send(1.0)
    drive_agent(remote, controlling=True)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        server_side(fdp)
    else:
        client_side(fdp)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
