"""A real WireGuard tunnel carried by our tunnel, in network namespaces (issue 14, docs/datagrams.md).

Two parts, kept apart so the WireGuard part runs on either path unchanged. The path: ``PathLab`` - two namespaces
joined by one veth pair with a 1500-byte MTU, documentation addresses, nothing in the host namespace - or
``WanPath``, the WAN lab's impaired link (tests/wan; delay, jitter, loss, rate: the ``wifi`` profile). Both name
their sides "A" (tunnel client, WireGuard initiator) and "B" and give ``ns(side)``, ``ip(side)`` and ``workdir``.
``WireGuardPair`` puts a ``wireguard-go`` interface into the two namespaces, side A's peer endpoint being the tunnel
client's local UDP listener (or B's path address for plain WireGuard), side B listening where the tunnel server's
``--source`` points. ``ping`` and ``iperf`` measure over the WireGuard interface; tests/wireguard/tunnel.py runs
the real CLI pair inside the namespaces.

Every process started here lives in a namespace we created and is killed by pid on teardown; namespaces carry a
unique prefix and are always deleted. Needs root, iproute2, wireguard-go, wireguard-tools (wg), iperf3, ping.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from tests.nat.lab import lab_namespaces
from tests.wan.lab import Profile, WanLab

COMMAND_TIMEOUT = 30.0
#: The path between the two tunnel ends (TEST-NET-1) and the WireGuard inner network (benchmarking range).
PATH_IP = {"A": "192.0.2.1", "B": "192.0.2.2"}
WG_IP = {"A": "198.18.0.1", "B": "198.18.0.2"}
#: WireGuard's default MTU: inner packets up to 1420 bytes, so UDP payloads up to 1452 bytes on the outside.
WG_MTU = 1420
WG_PORT_B = 51820

_counter = itertools.count()


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


def tools_missing() -> list[str]:
    return [t for t in ("ip", "wireguard-go", "wg", "iperf3", "ping") if shutil.which(t) is None]


def run(argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()} {result.stdout}")
    return result.stdout


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@attrs.define
class PathLab:
    """Two namespaces ``<prefix>-A`` and ``<prefix>-B`` joined by a veth pair (MTU 1500)."""

    prefix: str = attrs.field(factory=lambda: f"wg{os.getpid() % 100000}x{next(_counter)}")
    mtu: int = 1500
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="tunnel-path-")))
    _created: list[str] = attrs.field(factory=list)

    def ns(self, side: str) -> str:
        return f"{self.prefix}-{side}"

    def ip(self, side: str) -> str:
        return PATH_IP[side]

    def __enter__(self) -> PathLab:
        try:
            for side in ("A", "B"):
                run(["ip", "netns", "add", self.ns(side)])
                self._created.append(self.ns(side))
                run(["ip", "-n", self.ns(side), "link", "set", "lo", "up"])
            run(["ip", "link", "add", "eth0", "netns", self.ns("A"), "mtu", str(self.mtu), "type", "veth",
                 "peer", "name", "eth0", "netns", self.ns("B"), "mtu", str(self.mtu)])
            for side in ("A", "B"):
                run(["ip", "-n", self.ns(side), "addr", "add", f"{PATH_IP[side]}/24", "dev", "eth0"])
                run(["ip", "-n", self.ns(side), "link", "set", "eth0", "up"])
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def pids(self) -> list[int]:
        pids: list[int] = []
        for name in self._created:
            out = run(["ip", "netns", "pids", name], check=False)
            pids += [int(p) for p in out.split() if p.isdigit()]
        return pids

    def down(self) -> None:
        """Kill what lives in our namespaces (by pid), then delete them. Idempotent."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2.0
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        for name in reversed(self._created):
            run(["ip", "netns", "del", name], check=False)
        self._created.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def namespaces(self) -> list[str]:
        out = run(["ip", "netns", "list"], check=False)
        return [line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-")]


@attrs.define
class WanPath:
    """The WAN lab's two hosts on one impaired link (tests/wan/lab.py), seen as sides "A" (its ``a``) and "B"."""

    profile: Profile
    lab: WanLab | None = None

    def __enter__(self) -> WanPath:
        self.lab = WanLab(profile=self.profile)
        self.lab.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lab is not None:
            self.lab.down()

    def _lab(self) -> WanLab:
        assert self.lab is not None, "use WanPath as a context manager"
        return self.lab

    def ns(self, side: str) -> str:
        return self._lab().ns(side.lower())

    def ip(self, side: str) -> str:
        return self._lab().addr[side.lower()]

    @property
    def workdir(self) -> Path:
        return self._lab().workdir

    def namespaces(self) -> list[str]:
        return lab_namespaces(self._lab().prefix)

    def link_stats(self) -> dict[str, Any]:
        link = self._lab().link
        assert link is not None
        return link.stats()


def wait_listening(ns: str, port: int, *, proto: str = "t") -> None:
    """Until something listens on ``port`` in ``ns`` (``proto`` "t" TCP, "u" UDP); bounded."""
    for _ in range(200):
        if f":{port} " in run(in_ns(ns, ["ss", f"-ln{proto}", f"sport = :{port}"]), check=False):
            return
        time.sleep(0.05)
    raise LabError(f"nothing listens on port {port} in {ns}")


def iperf(ns_client: str, ns_server: str, *extra: str, seconds: float = 3, port: int = 5201) -> dict[str, Any]:
    """One iperf3 run from ``ns_client`` to an iperf3 server started in ``ns_server`` on WireGuard's address."""
    server = subprocess.Popen(in_ns(ns_server, ["iperf3", "-s", "-1", "-B", WG_IP["B"], "-p", str(port)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(ns_server, port)
        out = run(in_ns(ns_client, ["iperf3", "-c", WG_IP["B"], "-p", str(port), "-t", f"{seconds:g}", "-J",
                                    "--connect-timeout", "10000", *extra]), check=False, timeout=seconds + 60)
    finally:
        server.terminate()
        server.wait(timeout=10)
    try:
        return dict(json.loads(out))
    except json.JSONDecodeError:
        return {"error": f"iperf3 printed no JSON: {out[-300:]}"}


def ping(ns: str, address: str, count: int, *, interval: float = 0.2, size: int | None = None,
         timeout: float = 60) -> dict[str, Any]:
    """``ping`` from ``ns``: round trips of the replies (ms), how many were sent, received, duplicated."""
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "5"]
    if size is not None:
        argv += ["-M", "do", "-s", str(size)]
    out = run(in_ns(ns, [*argv, address]), check=False, timeout=timeout)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
    summary = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", out)
    sent, received, dups = (int(summary.group(1)), int(summary.group(2)), int(summary.group(3) or 0)) if summary \
        else (count, 0, 0)
    return {"sent": sent, "received": received, "duplicates": dups, "rtts": rtts, "output": out}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _keypair() -> tuple[str, str]:
    key = x25519.X25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


@attrs.define
class WireGuardPair:
    """wireguard-go interfaces ``<tag>A`` in ``ns_a`` (peer endpoint ``endpoint_a``: the tunnel client's listener, or
    B's path address for plain WireGuard) and ``<tag>B`` in ``ns_b`` (listening on ``WG_PORT_B``, learning its
    peer's endpoint from the first handshake).

    The names are unique per pair (``tag``): wireguard-go's control socket is ``/var/run/wireguard/<name>.sock``,
    shared by every network namespace, so two pairs with the same names (two labs at once, two test runs) would
    configure each other's interfaces."""

    ns_a: str
    ns_b: str
    endpoint_a: tuple[str, int]
    mtu: int = WG_MTU
    tag: str = attrs.field(factory=lambda: f"w{os.getpid() % 100000}x{next(_counter)}")
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="tunnel-wg-")))
    _procs: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    def __enter__(self) -> WireGuardPair:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        keys = {"A": _keypair(), "B": _keypair()}
        # B first: A starts its handshake as soon as it is configured, and a first initiation that finds no
        # listener is retried only after 5 s (REKEY_TIMEOUT).
        for side, ns in (("B", self.ns_b), ("A", self.ns_a)):
            iface = f"{self.tag}{side}"
            env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="error")
            out = open(self.workdir / f"wireguard-go-{side}.log", "wb")
            self._procs.append(subprocess.Popen(in_ns(ns, ["wireguard-go", "-f", iface]), env=env,
                                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
            out.close()
            deadline = time.monotonic() + 10
            while run(["ip", "-n", ns, "link", "show", iface], check=False) == "":
                if time.monotonic() > deadline or self._procs[-1].poll() is not None:
                    raise LabError(f"wireguard-go did not create {iface} in {ns}: {self.log(side)}")
                time.sleep(0.05)
            key_file = self.workdir / f"{side}.key"
            key_file.write_text(keys[side][0] + "\n")
            key_file.chmod(0o600)
            other = "B" if side == "A" else "A"
            argv = ["wg", "set", iface, "private-key", str(key_file), "peer", keys[other][1],
                    "allowed-ips", f"{WG_IP[other]}/32"]
            if side == "A":
                argv += ["endpoint", f"{self.endpoint_a[0]}:{self.endpoint_a[1]}", "persistent-keepalive", "5"]
            else:
                argv[3:3] = ["listen-port", str(WG_PORT_B)]
            run(in_ns(ns, argv))
            run(["ip", "-n", ns, "addr", "add", f"{WG_IP[side]}/24", "dev", iface])
            run(["ip", "-n", ns, "link", "set", iface, "mtu", str(self.mtu), "up"])

    def log(self, side: str) -> str:
        path = self.workdir / f"wireguard-go-{side}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def show(self) -> str:
        return run(in_ns(self.ns_a, ["wg", "show"]), check=False) + run(in_ns(self.ns_b, ["wg", "show"]), check=False)

    def down(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
