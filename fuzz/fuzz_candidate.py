"""Atheris harness for ICE candidate strings: any text must parse or raise CandidateError, nothing else.

Run: python fuzz/fuzz_candidate.py -atheris_runs=2000
"""

import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.candidate import Candidate, CandidateError
    from tunnel_core.peertext import quote_peer

# Plausible fields, so most inputs reach the field checks instead of failing the field count.
VOCABULARY = [
    "candidate:1a2b", "a=candidate:x", "1", "0", "256", "udp", "UDP", "tcp", "2130706431", "4294967296",
    "10.0.0.1", "::", "::1", "fe80::1%1", "[::1]", "1.2.3", "typ", "host", "srflx", "prflx", "relay", "raddr",
    "rport", "ufrag", "generation", "65535", "65536", "-1", "+1", "1_0",
]


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        parts = []
        for _ in range(fdp.ConsumeIntInRange(0, 14)):
            if fdp.ConsumeIntInRange(0, 3):
                parts.append(VOCABULARY[fdp.ConsumeIntInRange(0, len(VOCABULARY) - 1)])
            else:
                parts.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)))
        text = " ".join(parts)
    else:
        text = fdp.ConsumeUnicodeNoSurrogates(len(data))
    try:
        candidate = Candidate.from_sdp(text)
    except CandidateError as exc:
        assert str(exc) == f"Invalid ICE candidate: {quote_peer(text)}"  # escaped and capped (issue 18 item 6)
        return
    assert Candidate.from_sdp(candidate.to_sdp()) == candidate


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
