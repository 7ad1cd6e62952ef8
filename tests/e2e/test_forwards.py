"""Issue 17, "Must show" for several forwards in one tunnel (manual mode, real processes): one client carries an
sshd, an HTTP server and a UDP echo over a single ICE/QUIC connection at once; a forward the server's allowlist
refuses is reported by name while the others work; a mixed forward list in a config file is overridden from the
command line; one forward stays upstream's bytes.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from . import programs
from .harness import ManualTunnel
from .programs import LOOPBACK
from .test_manual_e2e import tunnel

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[int]:
    """A real HTTP server (python -m http.server) on 127.0.0.1 serving ``root``."""
    port = programs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", LOOPBACK, "--directory", str(root), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        programs.wait_tcp_listening(port, proc=proc)
        yield port
    finally:
        programs.stop_process(proc)


def curl(port: int, path: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", f"http://{LOOPBACK}:{port}{path}"],
                          capture_output=True, text=True, timeout=30)


def wait_listening(t: ManualTunnel, count: int, timeout: float = 30.0) -> None:
    """Wait until the client said ``Listening on`` ``count`` times (one line per forward)."""
    assert t.client is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.client.stderr.count("Listening on") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"client did not open {count} listeners\n{t.logs()}")


def test_three_forwards_over_one_connection(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello through forward 2\n")
    http_port_local = programs.free_port()
    udp_port_local = programs.free_port(tcp=False, udp=True)
    with (
        programs.Sshd(tmp_path) as sshd,
        http_server(tmp_path / "www") as http_port,
        programs.UdpEchoServer(prefix=b"echo:") as echo,
    ):
        with tunnel(
            f"tcp://{LOOPBACK}:{sshd.port}", allowed_tcp=("127.0.0.0/8",), allowed_udp=("127.0.0.0/8",),
            client_extra_args=(
                "--forward", f"{LOOPBACK}:{http_port_local}=tcp://{LOOPBACK}:{http_port}",
                "--forward", f"{LOOPBACK}:{udp_port_local}=udp://{LOOPBACK}:{echo.port}",
            ),
        ) as t:
            wait_listening(t, 3)

            def ssh() -> str:
                done = sshd.run(t.local_port, "echo", "hello")
                assert done.returncode == 0, f"ssh failed: {done.stderr}\n{t.logs()}"
                return done.stdout.strip()

            def web() -> str:
                done = curl(http_port_local, "/index.html")
                assert done.returncode == 0, f"curl failed: {done.stderr}\n{t.logs()}"
                return done.stdout.strip()

            def udp() -> bytes:
                with programs.udp_socket() as sock:
                    return programs.udp_exchange(sock, (LOOPBACK, udp_port_local), b"ping")

            with ThreadPoolExecutor(3) as pool:  # all three at once, over the one connection
                results = [pool.submit(fn) for fn in (ssh, web, udp)]
                assert [r.result(timeout=60) for r in results] == ["hello", "hello through forward 2", b"echo:ping"]
            assert t.server is not None and t.client is not None
            assert "Serving 3 of 3 forwards in one session" in t.server.stderr, t.logs()
            # One ICE/QUIC connection: the server reports exactly one QUIC client.
            assert t.server.stderr.count("Client connected over QUIC.") == 1, t.logs()
            assert t.offer and not any("extra_sources" in line for line in t.offer)  # the block is base64
            t.assert_alive()


def test_refused_forward_is_named_while_the_others_work(tmp_path: Path) -> None:
    with programs.TcpEchoServer() as echo:
        with tunnel(
            f"tcp://{LOOPBACK}:{echo.port}", allowed_tcp=("127.0.0.0/8",),
            client_extra_args=("--forward", f"{LOOPBACK}:{programs.free_port()}=tcp://10.99.0.1:80"),
        ) as t:
            assert t.client is not None and t.server is not None
            t.client.wait_stderr(r"Forward .*=tcp://10\.99\.0\.1:80 refused by the server", 20)
            with __import__("socket").create_connection((LOOPBACK, t.local_port), timeout=10) as sock:
                sock.sendall(b"still works")
                assert sock.recv(100) == b"still works", t.logs()
            assert "Client requests tcp://10.99.0.1:80 (refused" in t.server.stderr, t.logs()
            assert "Serving 1 of 2 forwards in one session" in t.server.stderr, t.logs()


def test_config_forward_list_overridden_from_the_command_line(tmp_path: Path) -> None:
    """The file names two forwards (TCP and UDP); ``--forward`` on the command line replaces them all."""
    from tunnel_cli.cli import build_options

    config = tmp_path / "client.toml"
    config.write_text(
        'role = "client"\nmode = "manual"\n'
        '[[forward]]\nlisten = "127.0.0.1:2222"\nsource = "tcp://127.0.0.1:22"\n'
        '[[forward]]\nlisten = "127.0.0.1:51820"\nsource = "udp://127.0.0.1:51820"\n'
    )
    _, from_file = build_options(["client", "manual", "-c", str(config)])
    assert (from_file.source, from_file.target) == ("tcp://127.0.0.1:22", "127.0.0.1:2222")
    assert [(f.listen, f.source) for f in from_file.extra_forwards] == [("127.0.0.1:51820", "udp://127.0.0.1:51820")]
    _, overridden = build_options(["client", "manual", "-c", str(config),
                                   "--forward", "127.0.0.1:8080=tcp://127.0.0.1:80"])
    assert (overridden.source, overridden.target, overridden.extra_forwards) == (
        "tcp://127.0.0.1:80", "127.0.0.1:8080", ())


def _as_old_server_sees_it(lines: list[str]) -> list[str]:
    """What an upstream (or older) server makes of the offer: it ignores the unknown ``extra_sources``."""
    import attrs

    from tunnel_core.blocks import decode_offer, encode_block

    offer = decode_offer("\n".join(lines))
    assert offer.extra_sources, "the client should have asked for its second forward"
    return encode_block("OFFER", attrs.evolve(offer, extra_sources=())).splitlines()


def test_several_forwards_against_an_older_server_is_one_clear_error(tmp_path: Path) -> None:
    from .harness import HarnessError

    with programs.TcpEchoServer() as echo:
        t = tunnel(
            f"tcp://{LOOPBACK}:{echo.port}",
            client_extra_args=("--forward", f"{LOOPBACK}:{programs.free_port()}=tcp://{LOOPBACK}:{echo.port}"),
            offer_filter=_as_old_server_sees_it,
        )
        with pytest.raises(HarnessError):
            t.start()
        assert t.client is not None
        code = t.client.wait_exit(20)
        t.stop()
        errors = [line for line in t.client.stderr.splitlines() if line.startswith("Error:")]
        assert errors == ["Error: The server does not support several forwards in one tunnel (upstream tunnel-rs "
                          "or an older tunnel); run one client per forward"], t.logs()
        assert code == 1


def test_one_forward_offer_is_upstream_bytes() -> None:
    """A one-forward client's OFFER and a one-forward server's ANSWER carry no new field (wire bytes unchanged)."""
    from tunnel_core.blocks import ManualAnswer, ManualOffer

    offer = ManualOffer("u", "p", ["c"], source="tcp://127.0.0.1:22")
    assert offer.to_json() == (b'{"version":1,"ice_ufrag":"u","ice_pwd":"p","candidates":["c"],'
                               b'"quic_fingerprint":"","source":"tcp://127.0.0.1:22"}')
    answer = ManualAnswer("u", "p", ["c"], quic_fingerprint="f")
    assert b"forward_verdicts" not in answer.to_json()
    both = ManualOffer.from_json(ManualOffer("u", "p", [], source="a", extra_sources=["b"]).to_json())
    assert both.extra_sources == ("b",)
    verdicts = ManualAnswer.from_json(ManualAnswer("u", "p", [], forward_verdicts=["", "no"]).to_json())
    assert verdicts.forward_verdicts == ("", "no")


def test_reverse_forward_serves_a_client_side_http_server_only_with_allow_listen(tmp_path: Path) -> None:
    import socket

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("from the client's side\n")
    granted, refused = programs.free_port(), programs.free_port()
    busy = socket.socket()  # granted, but the server cannot bind it: the client is told in one line
    busy.bind((LOOPBACK, 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    with http_server(tmp_path / "www") as http_port, busy:
        with tunnel(
            f"tcp://{LOOPBACK}:{http_port}", allowed_tcp=("127.0.0.0/8",),
            server_extra_args=("--allow-listen", f"{LOOPBACK}:{granted}", "--allow-listen", f"{LOOPBACK}:{busy_port}"),
            client_extra_args=("--reverse", f"{LOOPBACK}:{granted}=tcp://{LOOPBACK}:{http_port}",
                               "--reverse", f"{LOOPBACK}:{refused}=tcp://{LOOPBACK}:{http_port}",
                               "--reverse", f"{LOOPBACK}:{busy_port}=tcp://{LOOPBACK}:{http_port}"),
        ) as t:
            assert t.client is not None and t.server is not None
            t.server.wait_stderr(r"Listening on TCP .* for the client's reverse forward", 20)
            done = curl(granted, "/index.html")  # served on the server's side, by the client's HTTP server
            assert done.returncode == 0 and done.stdout == "from the client's side\n", done.stderr + t.logs()
            t.client.wait_stderr(rf"Forward reverse {LOOPBACK}:{refused}=.* refused by the server: Listening on "
                                 rf"'{LOOPBACK}:{refused}' is not allowed", 20)
            with pytest.raises(OSError):
                socket.create_connection((LOOPBACK, refused), timeout=2).close()
            t.client.wait_stderr(rf"Forward reverse {LOOPBACK}:{busy_port}=.* refused by the server: The server "
                                 rf"cannot listen on {LOOPBACK}:{busy_port}: Address already in use", 20)
            assert "Serving 2 of 4 forwards in one session" in t.server.stderr, t.logs()


def test_config_file_forward_list_runs_and_the_command_line_replaces_it(tmp_path: Path) -> None:
    """Real processes: a [[forward]] list (TCP + UDP) in the client's file is carried next to the command line's
    --source/--target; a --forward on the command line replaces the file's list."""
    import socket

    file_tcp, file_udp, cli_tcp = programs.free_port(), programs.free_port(tcp=False, udp=True), programs.free_port()
    with programs.TcpEchoServer() as echo, programs.UdpEchoServer(prefix=b"u:") as uecho:
        config = tmp_path / "client.toml"
        config.write_text(
            'role = "client"\nmode = "manual"\n'
            f'[[forward]]\nlisten = "{LOOPBACK}:{file_tcp}"\nsource = "tcp://{LOOPBACK}:{echo.port}"\n'
            f'[[forward]]\nlisten = "{LOOPBACK}:{file_udp}"\nsource = "udp://{LOOPBACK}:{uecho.port}"\n'
        )
        common = {"allowed_tcp": ("127.0.0.0/8",), "allowed_udp": ("127.0.0.0/8",)}
        with tunnel(f"tcp://{LOOPBACK}:{echo.port}", client_extra_args=("-c", str(config)), **common) as t:
            wait_listening(t, 3)
            with socket.create_connection((LOOPBACK, file_tcp), timeout=10) as sock:
                sock.sendall(b"from the file")
                assert sock.recv(100) == b"from the file", t.logs()
            with programs.udp_socket() as usock:
                assert programs.udp_exchange(usock, (LOOPBACK, file_udp), b"x") == b"u:x", t.logs()
        with tunnel(f"tcp://{LOOPBACK}:{echo.port}", **common, client_extra_args=(
            "-c", str(config), "--forward", f"{LOOPBACK}:{cli_tcp}=tcp://{LOOPBACK}:{echo.port}",
        )) as t:
            wait_listening(t, 2)
            with socket.create_connection((LOOPBACK, cli_tcp), timeout=10) as sock:
                sock.sendall(b"from the command line")
                assert sock.recv(100) == b"from the command line", t.logs()
            assert t.server is not None and "Serving 2 of 2 forwards" in t.server.stderr, t.logs()
            with pytest.raises(OSError):
                socket.create_connection((LOOPBACK, file_tcp), timeout=2).close()
