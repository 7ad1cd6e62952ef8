"""The e2e building blocks, proven without a tunnel: if one of these fails, an e2e failure is not the tunnel's."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from . import programs
from .programs import LOOPBACK

pytestmark = pytest.mark.e2e


def test_sshd_accepts_key_login_directly(tmp_path: Path) -> None:
    with programs.Sshd(tmp_path) as sshd:
        done = sshd.run(sshd.port, "echo", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"


def test_ssh_forward_and_socat_relay_reach_an_echo_server(tmp_path: Path) -> None:
    with programs.TcpEchoServer() as echo, programs.Sshd(tmp_path) as sshd:
        forward_port = programs.free_port()
        relay_port = programs.free_port()
        with sshd.forward(forward_port, echo.port), programs.SocatRelay(tmp_path, relay_port, echo.port):
            for port in (forward_port, relay_port):
                rtts = programs.tcp_ping_pong(port, 20)
                assert len(rtts) == 20
                assert all(0 < rtt < 5 for rtt in rtts)


def test_iperf3_tcp_and_udp_direct(tmp_path: Path) -> None:
    with programs.Iperf3Server(tmp_path) as server:
        tcp = programs.run_iperf3_client(server.port, seconds=1)
    assert tcp.bytes > 0
    assert tcp.mib_per_second > 10
    with programs.Iperf3Server(tmp_path) as server:
        udp = programs.run_iperf3_client(server.port, seconds=1, udp=True, bitrate="10M")
    assert udp.bytes > 0
    assert 0.0 <= udp.lost_percent < 5.0


def test_dnsmasq_answers_dig_directly(tmp_path: Path) -> None:
    with programs.Dnsmasq(tmp_path) as dns:
        assert programs.dig(dns.port, "tunnel.test") == "10.9.8.7"
        # No upstream resolvers: other names get no answer, so nothing can leak off the machine.
        assert programs.dig(dns.port, "example.com") == ""


def test_python_servers_echo_sink_source_and_udp_prefix() -> None:
    payload = programs.deterministic_bytes(3 << 20)
    with programs.TcpSinkServer() as sink:
        assert programs.tcp_transfer_upload(sink.port, payload) == (
            len(payload),
            hashlib.sha256(payload).hexdigest(),
        )
    with programs.TcpSourceServer(payload) as source:
        assert programs.tcp_download_digest(source.port) == (
            len(payload),
            hashlib.sha256(payload).hexdigest(),
        )
    with programs.TcpEchoServer() as echo, socket.create_connection((LOOPBACK, echo.port), timeout=5) as sock:
        sock.sendall(b"abc")
        sock.shutdown(socket.SHUT_WR)
        assert programs.recv_all(sock) == b"abc"
    with (
        programs.UdpEchoServer(prefix=b"echo:") as udp,
        programs.udp_socket() as a,
        programs.udp_socket() as b,
    ):
        assert programs.udp_exchange(a, (LOOPBACK, udp.port), b"from-a") == b"echo:from-a"
        assert programs.udp_exchange(b, (LOOPBACK, udp.port), b"from-b") == b"echo:from-b"
        assert udp.peers == {a.getsockname(), b.getsockname()}


def test_free_port_for_tcp_and_udp_is_bindable_for_both() -> None:
    port = programs.free_port(tcp=True, udp=True)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind((LOOPBACK, port))
        udp.bind((LOOPBACK, port))
