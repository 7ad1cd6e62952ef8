"""Starting the tunnel's modes across a ``WanLab`` (client in ``a``, server in ``b``), plus the lab's services.

The client's local end listens on a's loopback and forwards to a service on b's loopback, so whatever reaches the
service went through the tunnel and over the link. Manual mode pipes OFFER/ANSWER across (tests/nat/modes.py's
``Proc`` does the plumbing); nostr mode runs the NAT lab's Nostr relay in ``b`` on its WAN address (signaling
crosses the impaired link, as it would cross the internet); iroh mode dials the server's direct address (no relay,
no discovery). ICE uses host candidates only (``--no-stun --host-candidate <wan address>``): nothing outside the lab.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
from tests.nat.lab import Lab, LabError
from tests.nat.modes import NOSTR_KIND, NOSTR_RELAY, Proc

PROBE = str(Path(__file__).with_name("probe.py"))
PYTHON = sys.executable
RUNTIMES = {"asyncio": "tunnel_asyncio.cli", "trio": "tunnel_trio.cli", "gevent": "tunnel_gevent.cli"}
CONNECT_TIMEOUT = 60.0


def cli(runtime: str = "asyncio") -> list[str]:
    return [PYTHON, "-m", RUNTIMES[runtime]]


def service(lab: Lab, node: str, kind: str, host: str, port: int) -> Proc:
    """A probe.py service (``tcp-echo``, ``udp-echo``, ``tcp-hash``) in ``node``, started and answering."""
    proc = Proc(kind, lab.in_ns(node, [PYTHON, PROBE, kind, host, str(port)]))
    proc.wait_ready(f"{kind} in {node}", 20)
    return proc


def probe(lab: Lab, node: str, kind: str, host: str, port: int, *args: str, timeout: float = 120.0) -> dict:
    """Run a probe.py client in ``node`` to completion; its JSON verdict (an ``error`` key if it printed none)."""
    argv = lab.in_ns(node, [PYTHON, PROBE, kind, host, str(port), *args])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    lines = result.stdout.strip().splitlines()
    if not lines:
        return {"error": f"{kind} printed nothing: {result.stderr.strip()[-300:]}"}
    return dict(json.loads(lines[-1]))


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of one process (its threads included) from /proc/<pid>/stat; 0 once it is gone.

    ``reaped_children`` adds cutime + cstime: what its children that have exited (and were waited for) used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


@attrs.define
class Pair:
    """Both ends of one running tunnel; ``processes`` are the ones whose CPU the benchmark charges to the path."""

    client: Proc
    server: Proc
    listen_port: int
    started_at: float  # wall clock time the client was started
    helpers: list[Proc] = attrs.Factory(list)

    @property
    def processes(self) -> dict[str, int]:
        return {"client": self.client.proc.pid, "server": self.server.proc.pid}

    def alive(self) -> bool:
        return self.client.proc.poll() is None and self.server.proc.poll() is None

    def describe(self) -> str:
        return (f"--- client (exit {self.client.proc.poll()}) ---\n{self.client.stderr[-3000:]}\n"
                f"--- server (exit {self.server.proc.poll()}) ---\n{self.server.stderr[-3000:]}")

    def wait_listening(self, timeout: float = CONNECT_TIMEOUT) -> None:
        if self.client.wait_line(r"Listening on ", timeout) is None:
            report = self.describe()
            self.close()
            raise LabError(f"tunnel did not come up within {timeout} s\n{report}")

    def close(self) -> None:
        for proc in (self.client, self.server, *self.helpers):
            proc.stop()


def _source(proto: str, port: int, *, target_scheme: bool = False) -> list[str]:
    """The client's --source/--target; nostr mode's client wants the scheme on the target too (upstream's rule)."""
    target = f"{proto}://127.0.0.1:{port}" if target_scheme else f"127.0.0.1:{port}"
    return ["--source", f"{proto}://127.0.0.1:{port}", "--target", target]


def start_manual(lab: Lab, addr: dict[str, str], service_port: int, *, proto: str = "tcp", runtime: str = "asyncio",
                 listen_port: int | None = None, extra: Sequence[str] = (), client_host: str | None = None) -> Pair:
    """``tunnel server|client manual`` with the blocks piped across; returns once the OFFER/ANSWER are exchanged.

    ``client_host``: the client's ``--host-candidate`` (default its WAN address; an interface name lets it roam)."""
    listen = listen_port or service_port
    server = Proc("server", lab.in_ns("b", [*cli(runtime), "server", "manual", "--allowed-tcp", "127.0.0.0/8",
                                            "--allowed-udp", "127.0.0.0/8", "--no-stun", "--host-candidate",
                                            addr["b"], *extra]))
    started = time.time()
    client = Proc("client", lab.in_ns("a", [*cli(runtime), "client", "manual", "--source",
                                            f"{proto}://127.0.0.1:{service_port}", "--target",
                                            f"127.0.0.1:{listen}", "--no-stun", "--host-candidate",
                                            client_host or addr["a"], *extra]))
    pair = Pair(client=client, server=server, listen_port=listen, started_at=started)
    try:
        server.paste(client.read_block("OFFER", 30))
        client.paste(server.read_block("ANSWER", 30))
    except BaseException:
        report = pair.describe()
        pair.close()
        raise LabError(f"manual mode: blocks not exchanged\n{report}") from None
    return pair


def start_nostr(lab: Lab, addr: dict[str, str], service_port: int, *, proto: str = "tcp",
                relay_port: int = 7700, client_host: str | None = None, extra: tuple[str, ...] = ()) -> Pair:
    """``tunnel server|client nostr`` through a Nostr relay in ``b``; the server subscribes before the client asks.
    ``extra`` flags go to both ends (e.g. ``--congestion bbr``)."""
    from tunnel_core.nostr.keys import SecretKey

    keys = {side: SecretKey.generate(os.urandom) for side in "ab"}
    files = {}
    for side, key in keys.items():
        files[side] = lab.workdir / f"nostr-{side}-{service_port}.nsec"
        files[side].write_text(key.nsec)
        files[side].chmod(0o600)
    signaling = ["--relay", f"ws://{addr['b']}:{relay_port}", "--event-kind", NOSTR_KIND]
    ice = ["--no-stun"]
    relay = Proc("nostr-relay", lab.in_ns("b", [PYTHON, NOSTR_RELAY, addr["b"], str(relay_port)]))
    relay.wait_ready("Nostr relay", 30)
    server = Proc("server", lab.in_ns("b", [*cli(), "server", "nostr", "--nsec-file", str(files["b"]), "--peer-npub",
                                            keys["a"].public_key.npub, "--allowed-tcp", "127.0.0.0/8",
                                            "--allowed-udp", "127.0.0.0/8", *signaling, *ice,
                                            "--host-candidate", addr["b"], *extra]))
    if server.wait_line(r"Waiting for tunnel requests", 30) is None:
        server.stop()
        relay.stop()
        raise LabError(f"nostr server did not subscribe\n{server.stderr[-2000:]}")
    started = time.time()
    client = Proc("client", lab.in_ns("a", [*cli(), "client", "nostr", "--nsec-file", str(files["a"]),
                                            "--peer-npub", keys["b"].public_key.npub,
                                            *_source(proto, service_port, target_scheme=True),
                                            *signaling, *ice, "--host-candidate", client_host or addr["a"],
                                            *extra]))
    return Pair(client=client, server=server, listen_port=service_port, started_at=started, helpers=[relay])


def start_iroh(lab: Lab, addr: dict[str, str], service_port: int, *, proto: str = "tcp",
               client_bind: str | None = None) -> Pair:
    """``tunnel server|client iroh``, the client dialing the server's logged direct address (no relay, no DNS)."""
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

    files, ids = {}, {}
    for side in "ab":
        secret = os.urandom(32)
        files[side] = lab.workdir / f"iroh-{side}-{service_port}.key"
        files[side].write_text(format_secret_key(secret))
        files[side].chmod(0o600)
        ids[side] = format_endpoint_id(endpoint_id_from_secret(secret))
    offline = ["--no-relay", "--dns-server", "none"]
    server = Proc("server", lab.in_ns("b", [*cli(), "server", "iroh", "--secret-file", str(files["b"]),
                                            "--allowed-tcp", "127.0.0.0/8", "--allowed-udp", "127.0.0.0/8",
                                            "--allowed-clients", ids["a"], *offline,
                                            "--bind-addr", f"{addr['b']}:0"]))
    found = server.wait_line(r"Listening on (" + re.escape(addr["b"]) + r":\d+)", 30)
    if found is None:
        server.stop()
        raise LabError(f"iroh server did not start\n{server.stderr[-2000:]}")
    started = time.time()
    client = Proc("client", lab.in_ns("a", [*cli(), "client", "iroh", "--secret-file", str(files["a"]), "-n",
                                            ids["b"], "--server-addr", found.group(1), *offline,
                                            "--bind-addr", client_bind or f"{addr['a']}:0",
                                            *_source(proto, service_port)]))
    return Pair(client=client, server=server, listen_port=service_port, started_at=started)
