"""Issue 18 item 1 with real processes: the two-packet path hijack against a running manual-mode tunnel, and a
spray of garbage and forged datagrams.

An attacker on the same host who saw both pasted blocks sends the forged nomination (and answers any check the
server sends it) while a download runs through the tunnel. The download completes intact, the attacker receives
no QUIC, and the server logs the attempt once.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
from tests.helpers.hijack import forged_nomination, forged_success

from tunnel_core.blocks import decode_answer, decode_offer
from tunnel_core.candidate import Candidate

from . import programs
from .harness import ManualTunnel
from .programs import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

RUNTIME = os.environ.get("TUNNEL_E2E_RUNTIME", "asyncio")
PAYLOAD_MIB = 48


def test_forged_nomination_during_a_transfer_changes_nothing() -> None:
    payload = os.urandom(1 << 20) * PAYLOAD_MIB
    expected = (len(payload), hashlib.sha256(payload).hexdigest())
    with programs.TcpSourceServer(payload) as source, ManualTunnel(
        f"tcp://{LOOPBACK}:{source.port}", runtime=RUNTIME
    ) as t:
        offer = decode_offer("\n".join(t.offer))
        answer = decode_answer("\n".join(t.answer))
        server_addr = next(
            (c.host, c.port) for c in map(Candidate.from_sdp, answer.candidates) if c.host == LOOPBACK
        )
        started = threading.Event()
        result: dict[str, object] = {}

        def download() -> None:
            digest = hashlib.sha256()
            count = 0
            try:
                with socket.create_connection((LOOPBACK, t.local_port), timeout=60) as sock:
                    while data := sock.recv(1 << 16):
                        digest.update(data)
                        count += len(data)
                        if count > (1 << 20):
                            started.set()
                result["got"] = (count, digest.hexdigest())
            except OSError as exc:
                result["error"] = exc
            finally:
                started.set()

        reader = threading.Thread(target=download, daemon=True)
        reader.start()
        assert started.wait(30), t.logs()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.bind((LOOPBACK, 0))
            attacker.settimeout(0.1)
            attacker_port = attacker.getsockname()[1]
            nomination = forged_nomination(answer.ice_ufrag, offer.ice_ufrag, answer.ice_pwd)
            checks = quic = 0
            for _ in range(3):  # repeated: the server still logs one line
                attacker.sendto(nomination, server_addr)
                until = time.monotonic() + 1.0
                while time.monotonic() < until:
                    try:
                        data, sender = attacker.recvfrom(65536)
                    except TimeoutError:
                        continue
                    reply = forged_success(data, offer.ice_pwd, sender)
                    if reply is not None:
                        checks += 1
                        attacker.sendto(reply, sender)
                    elif data and data[0] > 3:
                        quic += 1
        reader.join(90)
        assert result.get("got") == expected, f"{result}\n{t.logs()}"
        assert quic == 0, t.logs()
        t.assert_alive()
        assert t.server is not None
        lines = [line for line in t.server.stderr.splitlines() if "Ignored an ICE nomination" in line]
        assert len(lines) == 1, t.logs()
        assert f"{LOOPBACK}:{attacker_port}" in lines[0], lines
        print(f"attacker saw {checks} checks from the server and {quic} QUIC datagrams")


def test_garbage_and_forged_datagrams_during_a_transfer_change_nothing() -> None:
    """Random bytes, STUN with a wrong password, STUN without integrity and QUIC-looking packets, 6000 in all,
    sprayed at the server's socket while a download runs: it completes intact and both processes stay up."""
    payload = os.urandom(1 << 20) * 16
    expected = (len(payload), hashlib.sha256(payload).hexdigest())
    with programs.TcpSourceServer(payload) as source, ManualTunnel(
        f"tcp://{LOOPBACK}:{source.port}", runtime=RUNTIME
    ) as t:
        offer = decode_offer("\n".join(t.offer))
        answer = decode_answer("\n".join(t.answer))
        server_addr = next(
            (c.host, c.port) for c in map(Candidate.from_sdp, answer.candidates) if c.host == LOOPBACK
        )
        wrong_password = forged_nomination(answer.ice_ufrag, offer.ice_ufrag, "x" * 24)
        shapes = (
            lambda: os.urandom(int.from_bytes(os.urandom(2), "big") % 1400),
            lambda: wrong_password,
            lambda: wrong_password[:20] + os.urandom(40),
            lambda: bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + os.urandom(1100),  # QUIC short header
            lambda: bytes([0xC0]) + os.urandom(1250),  # QUIC long header
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sprayer:
            sprayer.bind((LOOPBACK, 0))
            got: dict[str, object] = {}

            def download() -> None:
                got["digest"] = programs.tcp_download_digest(t.local_port, timeout=60)

            reader = threading.Thread(target=download, daemon=True)
            reader.start()
            for i in range(6000):
                sprayer.sendto(shapes[i % len(shapes)](), server_addr)
                if i % 200 == 0:
                    time.sleep(0.005)
            reader.join(90)
        assert got.get("digest") == expected, f"{got}\n{t.logs()}"
        t.assert_alive()
        assert t.server is not None and "Traceback" not in t.server.stderr, t.logs()
