"""What issue 17 asks every mode to show for dynamic (SOCKS5) and reverse forwards, written once so the nostr and
iroh tests assert exactly what the manual-mode tests do (tests/e2e/test_socks.py, test_forwards.py).

The server runs in a private mount namespace with its own /etc/hosts (``hosts_wrapper``), so a name resolves on
the server's side only; ``Targets`` holds the services and the counting listeners that prove what was (not)
dialled. ``old_tunnel`` is a real older tunnel (this repository before the forwards work, from git) for the
"server without the capability" checks.
"""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from . import programs
from .test_forwards import http_server
from .test_socks import BOTH, NAME, CountingListener

#: The last commit before several forwards, SOCKS5 and reverse forwards existed: its servers are "an older tunnel".
OLD_COMMIT = "273ff69"
REPO = Path(__file__).resolve().parents[2]
#: ``git archive 273ff69 src | xz -9``: the older tunnel, frozen like a release.
OLD_SOURCES = REPO / "tests" / "fixtures" / f"older-tunnel-{OLD_COMMIT}-src.tar.xz"


def hosts_wrapper(tmp_path: Path) -> list[str]:
    """argv prefix: run the rest with an /etc/hosts where NAME and BOTH resolve (BOTH to an allowed 127.0.0.1 and a
    forbidden 127.0.0.2); the client's resolver does not know them."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 {NAME}\n127.0.0.1 {BOTH}\n127.0.0.2 {BOTH}\n")
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]


@attrs.define
class Targets:
    server_http: int  # a service on the server's side (reached through SOCKS5)
    client_http: int  # a service on the client's side (reached through a reverse forward)
    forbidden: CountingListener  # outside the allowlist
    both_allowed: CountingListener  # BOTH's allowed address ...
    both_forbidden: CountingListener  # ... and its forbidden one, on the same port


@contextlib.contextmanager
def targets(tmp_path: Path) -> Iterator[Targets]:
    for side in ("server", "client"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "index.html").write_text(f"{side} side page\n")
    forbidden = CountingListener("127.0.0.3")
    both_allowed = CountingListener("127.0.0.1")
    both_forbidden = CountingListener("127.0.0.2", both_allowed.port)
    try:
        with http_server(tmp_path / "server") as server_http, http_server(tmp_path / "client") as client_http:
            yield Targets(server_http, client_http, forbidden, both_allowed, both_forbidden)
    finally:
        for listener in (forbidden, both_allowed, both_forbidden):
            listener.close()


def curl(url: str, proxy: str | None = None) -> subprocess.CompletedProcess[str]:
    via = ["--proxy", proxy] if proxy else []
    return subprocess.run(["curl", "-sS", "--max-time", "20", *via, url], capture_output=True, text=True, timeout=30)


def check_socks(proxy: str, t: Targets, server_log: Callable[[], str]) -> None:
    """curl --socks5-hostname reaches a name only the server resolves; a target outside the allowlist and a name
    resolving to an allowed and a forbidden address get SOCKS reply 2, and nothing is dialled."""
    assert subprocess.run(["getent", "hosts", NAME], capture_output=True).returncode != 0  # the client can't
    by_name = curl(f"http://{NAME}:{t.server_http}/index.html", proxy)
    assert by_name.returncode == 0 and by_name.stdout == "server side page\n", by_name.stderr + server_log()
    outside = curl(f"http://127.0.0.3:{t.forbidden.port}/", proxy)
    assert outside.returncode != 0 and "(2)" in outside.stderr, outside.stderr  # not allowed by ruleset
    mixed = curl(f"http://{BOTH}:{t.both_allowed.port}/", proxy)
    assert mixed.returncode != 0 and "(2)" in mixed.stderr, mixed.stderr
    assert (t.forbidden.accepted, t.both_allowed.accepted, t.both_forbidden.accepted) == (0, 0, 0)
    # The refusals are logged by the server; the SOCKS reply may reach curl before the line reaches the log file.
    deadline = time.monotonic() + 5
    while not ("tcp://127.0.0.3" in (log := server_log()) and f"tcp://{BOTH}" in log) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "tcp://127.0.0.3" in log and f"tcp://{BOTH}" in log, log


def check_reverse(port: int, t: Targets) -> None:
    """The reverse forward serves the client-side HTTP server on the server's side."""
    page = curl(f"http://127.0.0.1:{port}/index.html")
    assert page.returncode == 0 and page.stdout == "client side page\n", page.stderr


def reverse_ports() -> tuple[int, int, int, programs.socket.socket]:
    """Three ports for reverse forwards: granted, granted but in use on the server (the returned socket holds it),
    and not named by --allow-listen."""
    granted, busy, refused = programs.free_port(), programs.free_port(), programs.free_port()
    holder = programs.socket.socket()
    holder.setsockopt(programs.socket.SOL_SOCKET, programs.socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", busy))
    holder.listen()
    return granted, busy, refused, holder


def reverse_refusals(granted: int, busy: int, refused: int, target: int) -> list[str]:
    """The lines (substrings) a client prints for ``reverse_ports``' three forwards."""
    return [
        f"The server listens on 127.0.0.1:{granted} for reverse forward to tcp://127.0.0.1:{target}",
        f"Forward reverse 127.0.0.1:{busy}=tcp://127.0.0.1:{target} refused by the server: The server cannot listen "
        f"on 127.0.0.1:{busy}: Address already in use",
        f"Forward reverse 127.0.0.1:{refused}=tcp://127.0.0.1:{target} refused by the server: Listening on "
        f"'127.0.0.1:{refused}' is not allowed",
    ]


def old_tunnel(directory: Path) -> dict[str, str]:
    """An older tunnel (OLD_COMMIT's src, kept as tests/fixtures/older-tunnel-<commit>-src.tar.xz so the test needs
    no git history: CI may clone shallow) as the environment that runs it: ``PYTHONPATH`` first, ahead of the
    editable install of the current code."""
    with tarfile.open(OLD_SOURCES) as tar:
        tar.extractall(directory, filter="data")
    return {"PYTHONPATH": str(directory / "src")}
