"""Issue 18 items 2, 3, 6, 7 and 8 with real processes: hostile OFFER/ANSWER blocks pasted into a real tunnel.

Each test plays the other side with a crafted block (built with the real codec, so only the field under test is
wrong) and checks the user contract: one escaped, capped ``Error:`` line, exit 2 (malformed block) or 3 (refused
source) at once, no traceback, no ANSWER for a bad OFFER, and nothing sent where it must not go.
"""

from __future__ import annotations

import os
import re
import socket
import time

import attrs
import pytest

from tunnel_core.blocks import ManualAnswer, ManualOffer, decode_offer, encode_block

from . import programs
from .harness import (
    ManualTunnel,
    TunnelProcess,
    cli_argv,
    client_manual_args,
    error_lines,
    server_manual_args,
    supervised,
)
from .programs import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RUNTIME = os.environ.get("TUNNEL_E2E_RUNTIME", "asyncio")
#: A malformed block must end the process promptly, not after a QUIC or ICE timeout (item 3 took 30 s).
PROMPT = 10.0
HUGE_UFRAG = "u" * 65_000
GOOD_PWD = "p" * 24


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, f"want one Error: line, got {lines}\n{stderr[-3000:]}"
    return lines[0]


def crafted_offer(**changes: object) -> str:
    offer = ManualOffer(
        ice_ufrag="abcd1234", ice_pwd=GOOD_PWD, candidates=(f"candidate:1 1 udp 2130706431 {LOOPBACK} 9 typ host",),
        quic_fingerprint="", source=f"tcp://{LOOPBACK}:9",
    )
    return encode_block("OFFER", attrs.evolve(offer, **changes))


def server_process(allowed: str = "127.0.0.0/8") -> TunnelProcess:
    return TunnelProcess("server", cli_argv(RUNTIME, *server_manual_args([allowed])))


def paste_offer_into_server(block: str, allowed: str = "127.0.0.0/8") -> tuple[int, TunnelProcess, float]:
    server = server_process(allowed)
    with supervised(server):
        server.wait_stderr("Paste client offer")
        started = time.monotonic()
        server.write(block + "\n")
        code = server.wait_exit(PROMPT + 10)
        return code, server, time.monotonic() - started


def paste_answer_into_client(make_answer: object) -> tuple[int, TunnelProcess, float]:
    source = f"tcp://{LOOPBACK}:{programs.free_port()}"
    client = TunnelProcess("client", cli_argv(RUNTIME, *client_manual_args(source, f"{LOOPBACK}:0")))
    with supervised(client):
        offer = decode_offer("\n".join(client.read_block("OFFER")))
        answer = make_answer(offer)  # type: ignore[operator]
        started = time.monotonic()
        client.write(encode_block("ANSWER", answer) + "\n")
        code = client.wait_exit(PROMPT + 30)
        return code, client, time.monotonic() - started


def good_answer(offer: ManualOffer, **changes: object) -> ManualAnswer:
    answer = ManualAnswer(
        ice_ufrag="wxyz9876", ice_pwd=GOOD_PWD, candidates=(f"candidate:1 1 udp 2130706431 {LOOPBACK} 9 typ host",),
        quic_fingerprint="ab" * 32,
    )
    return attrs.evolve(answer, **changes)


# ------------------------------------------------------------------------------------- items 2 and 7


def test_huge_ufrag_in_offer_is_one_error_and_no_answer() -> None:
    code, server, took = paste_offer_into_server(crafted_offer(ice_ufrag=HUGE_UFRAG))
    assert code == 2, server.describe()
    line = one_error_line(server.stderr)
    assert "ice_ufrag" in line and len(line) < 300, line
    assert took < PROMPT, f"took {took:.1f} s"
    assert "ANSWER" not in server.stdout, "a refused offer must not produce an answer (item 7)"


def test_bad_candidate_in_offer_gets_no_answer() -> None:
    code, server, _ = paste_offer_into_server(crafted_offer(candidates=("candidate:1 1 udp 1 not-an-ip 9 typ host",)))
    assert code == 2, server.describe()
    assert "Invalid ICE candidate" in one_error_line(server.stderr)
    assert "ANSWER" not in server.stdout, "the ANSWER used to be printed before the candidates were checked (item 7)"


def test_huge_ufrag_in_answer_is_one_error_at_once() -> None:
    code, client, took = paste_answer_into_client(lambda o: good_answer(o, ice_ufrag=HUGE_UFRAG))
    assert code == 2, client.describe()
    assert "ice_ufrag" in one_error_line(client.stderr)
    assert took < PROMPT, f"took {took:.1f} s"


# ------------------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("fingerprint", ["ab" * 31, "ab" * 32 + "\x1b[2J", "zz" * 32, "\x07" * 5000])
def test_malformed_fingerprint_in_answer_is_one_error_at_once(fingerprint: str) -> None:
    code, client, took = paste_answer_into_client(lambda o: good_answer(o, quic_fingerprint=fingerprint))
    assert code == 2, client.describe()
    line = one_error_line(client.stderr)
    assert line.startswith("Error: Invalid QUIC fingerprint"), line
    assert "\x1b" not in line and "\x07" not in line and len(line) < 400, repr(line)
    assert took < PROMPT, f"took {took:.1f} s (used to wait for the 30 s QUIC handshake timeout)"


# ------------------------------------------------------------------------------------- item 6


def test_escape_sequences_and_length_of_a_peer_source_are_neutralised() -> None:
    hostile = "tcp://\x1b]0;owned\x07\x1b[2J" + "A" * 100_000 + ":22"
    code, server, _ = paste_offer_into_server(crafted_offer(source=hostile))
    assert code == 2, server.describe()
    line = one_error_line(server.stderr)
    assert "\x1b" not in server.stderr and "\x07" not in server.stderr, repr(server.stderr[:500])
    assert "\\x1b]0;owned\\x07" in line, line[:300]
    assert len(line) < 400, f"{len(line)} characters (was 100,089)"


# ------------------------------------------------------------------------------------- item 8


def test_wildcard_source_is_refused_even_when_the_allowlist_contains_it() -> None:
    with socket.socket() as service:
        service.bind((LOOPBACK, 0))
        service.listen()
        service.settimeout(0.5)
        port = service.getsockname()[1]
        code, server, _ = paste_offer_into_server(crafted_offer(source=f"tcp://0.0.0.0:{port}"), allowed="0.0.0.0/0")
        assert code == 3, server.describe()
        assert re.search(r"unspecified address 0\.0\.0\.0", one_error_line(server.stderr))
        with pytest.raises(TimeoutError):
            service.accept()


def test_wildcard_candidate_in_offer_sends_no_check_to_this_machine() -> None:
    """A candidate at 0.0.0.0:P used to make the server send its checks to 127.0.0.1:P (any local service)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as service, programs.TcpEchoServer() as echo:
        service.bind((LOOPBACK, 0))
        service.settimeout(0.2)
        port = service.getsockname()[1]

        def add_wildcard(lines: list[str]) -> list[str]:
            offer = decode_offer("\n".join(lines))
            wild = f"candidate:9 1 udp 2130706431 0.0.0.0 {port} typ host"
            return encode_block("OFFER", attrs.evolve(offer, candidates=(wild, *offer.candidates))).strip().split("\n")

        with ManualTunnel(f"tcp://{LOOPBACK}:{echo.port}", runtime=RUNTIME, offer_filter=add_wildcard) as t:
            with socket.create_connection((LOOPBACK, t.local_port), timeout=10) as conn:
                conn.sendall(b"ping")
                assert conn.recv(4) == b"ping", t.logs()
            received = 0
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    service.recvfrom(2048)
                    received += 1
                except TimeoutError:
                    pass
            assert received == 0, f"{received} datagrams reached the local service\n{t.logs()}"
