"""``--udp-over stream`` with real processes (issue 14, docs/datagrams.md): our own peer forced to the old behaviour.

Against a peer without datagram support (upstream tunnel-rs, older versions of ours) UDP must keep working on the
u16-framed stream. Here one side - either one, in manual and in iroh mode - runs with ``--udp-over stream``; UDP
from two local peers (100 to 30000-byte datagrams, echoed back) must arrive intact and each peer must get only its
own replies, and the close summaries must show that nothing travelled as a QUIC datagram. The control case (no
flag) must show datagrams, so the summaries cannot pass by accident. That the stream bytes stay upstream-exact
is shown in-process, where they can be read: tests/test_datagrams.py (an old peer on either side gets exactly
today's stream bytes and no DATAGRAM frame; SourceRequest bytes without the offer are upstream's).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.iroh_mode.tunnels import IrohClientProc, IrohServerProc, make_key

from . import programs
from .harness import ManualTunnel
from .programs import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SIZES = (100, 1452, 8192, 30000)
STREAM = ("--udp-over", "stream")


def _payload(size: int, tag: bytes) -> bytes:
    return (tag * size)[:size]


def _exchange_two_peers(target: tuple[str, int], logs: object) -> None:
    """Two local peers, every size each: each reply is the echo of exactly what that peer sent."""
    with programs.udp_socket() as a, programs.udp_socket() as b:
        for size in SIZES:
            for sock, tag in ((a, b"a"), (b, b"b")):
                data = _payload(size, tag)
                got = programs.udp_exchange(sock, target, data)
                assert got == b"echo:" + data, f"{len(got)} bytes back for {size} from {tag!r}\n{logs}"


def _summary(stderr: str) -> dict[str, int]:
    match = re.search(r"UDP over (?:QUIC datagrams|streams): (.*)", stderr)
    assert match, f"no datagram summary in:\n{stderr}"
    return {k: int(v) for k, v in (item.rsplit(" ", 1) for item in match.group(1).split(", "))}


def _over_streams_only(stats: dict[str, int]) -> bool:
    return stats["datagrams"] == stats["fragmented"] == stats["received"] == stats["reassembled"] == 0


@pytest.mark.parametrize("old", ["client", "server", "neither"])
def test_manual_mode_udp_over_the_stream_when_one_side_has_datagrams_off(old: str) -> None:
    with programs.UdpEchoServer(prefix=b"echo:") as echo:
        tunnel = ManualTunnel(f"udp://{LOOPBACK}:{echo.port}",
                              client_extra_args=STREAM if old == "client" else (),
                              server_extra_args=STREAM if old == "server" else ())
        with tunnel:
            _exchange_two_peers(tunnel.local_address, tunnel)
            tunnel.assert_alive()
            tunnel.stop()
            assert tunnel.client is not None and tunnel.server is not None
            client, server = _summary(tunnel.client.stderr), _summary(tunnel.server.stderr)
        assert len(echo.peers) == 2, echo.peers  # one server socket per local peer, as with datagrams
    if old == "neither":  # the control: two current peers do use datagrams
        assert client["datagrams"] + client["fragmented"] > 0 and server["received"] > 0, (client, server)
    else:
        assert _over_streams_only(client) and _over_streams_only(server), (client, server)
        # "streams": the session saw that datagrams were not negotiated (docs/datagrams.md, Counters).
        assert "UDP over streams" in tunnel.client.stderr and "UDP over streams" in tunnel.server.stderr
        assert client["stream"] > len(SIZES) and server["stream"] > len(SIZES), (client, server)


@pytest.mark.parametrize("old", ["client", "server"])
def test_iroh_mode_udp_over_the_stream_when_one_side_has_datagrams_off(tmp_path: Path, old: str) -> None:
    server_key, _ = make_key(tmp_path, "server.key", 1)
    client_key, client_id = make_key(tmp_path, "client.key", 2)
    with programs.UdpEchoServer(prefix=b"echo:") as echo, \
            IrohServerProc(server_key, "--allowed-udp", "127.0.0.0/8", "--allowed-clients", client_id,
                           *(STREAM if old == "server" else ())) as server:
        with IrohClientProc(server, client_key, f"udp://{LOOPBACK}:{echo.port}",
                            extra=STREAM if old == "client" else ()) as client:
            # Upstream's model on the stream: one flow, replies to the last sender; so one peer at a time here.
            with programs.udp_socket() as sock:
                for size in SIZES:
                    data = _payload(size, b"i")
                    assert programs.udp_exchange(sock, (LOOPBACK, client.port), data) == b"echo:" + data, \
                        f"{size}\n{client.stderr}\n{server.stderr}"
            client.stop()
        server.wait_for(r"Client [0-9a-f]+ disconnected")
    # Either end logs a datagram summary only when it counted something (its control, the same flow with datagrams,
    # is tests/iroh_mode/test_iroh_e2e.py::test_udp_travels_as_quic_datagrams_with_fragments_and_stream_fallback).
    assert "UDP over QUIC datagrams" not in client.stderr + server.stderr, client.stderr + server.stderr
