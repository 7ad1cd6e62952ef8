"""The WAN lab: network namespaces joined by the user-space link of link.py (delay, jitter, loss, rate, cut).

Two shapes, both torn down by the NAT lab's pid-based ``down`` (and reaped by ``reap_stale_labs`` after a kill):

* ``WanLab``: two hosts on one impaired wire - the benchmark's and the functional tests' topology::

      <p>-a : wan 203.0.113.1/24  ==link==  <p>-b : wan 203.0.113.2/24
      (client side; the link process lives here)   (server side)

* ``NatWanLab``: the NAT lab (tests/nat/lab.py) with router A's and/or B's WAN cable replaced by a link, i.e. a lossy,
  delayed WAN between two NATed sites. The link is a wire (TAP at both ends), so the bridge, ARP, conntrack and the
  routers' nft rules are exactly the NAT lab's.

``WanLink`` is the controller of one link process: ``set`` (parameters per direction), ``cut``, ``stats``.
``Profile`` holds the named path profiles the benchmark and the tests share.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from tests.nat.lab import INET_IP, Lab, LabError

LINK = str(Path(__file__).with_name("link.py"))
NET = "203.0.113"
ADDR = {"a": f"{NET}.1", "b": f"{NET}.2"}
PREFIXLEN = 24
CONTROL_TIMEOUT = 10.0


@attrs.frozen
class Profile:
    """One path, symmetric: each value applies to each direction (the round trip is twice ``delay_ms``)."""

    name: str
    delay_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0  # per direction, 0..1
    rate_mbit: float = 0.0  # 0 = no limit
    queue_ms: float = 50.0  # bottleneck queue, in milliseconds of the rate (tail drop beyond)

    def params(self) -> dict[str, Any]:
        return {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms, "loss": self.loss,
                "rate_mbit": self.rate_mbit, "queue_ms": self.queue_ms}

    def describe(self) -> str:
        parts = [f"{self.delay_ms:g} ms each way"]
        if self.jitter_ms:
            parts.append(f"jitter {self.jitter_ms:g} ms")
        parts.append(f"{self.loss * 100:g} % loss each way")
        parts.append(f"{self.rate_mbit:g} Mbit/s, queue {self.queue_ms:g} ms" if self.rate_mbit else "no rate limit")
        return ", ".join(parts)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("lan", delay_ms=0.25),
    Profile("broadband", delay_ms=25, rate_mbit=100),
    Profile("wifi", delay_ms=25, jitter_ms=5, loss=0.01, rate_mbit=100),
    Profile("mobile", delay_ms=50, jitter_ms=15, loss=0.02, rate_mbit=20),
    Profile("satellite", delay_ms=300, loss=0.005, rate_mbit=50),
)}


class WanLink:
    """One link process between ``(namespace, ifname)`` ends; the devices are created by the process itself."""

    def __init__(self, end_a: tuple[str, str], end_b: tuple[str, str], *, seed: int = 1) -> None:
        self.end_a, self.end_b = end_a, end_b
        argv = ["ip", "netns", "exec", end_a[0], sys.executable, LINK, ":".join(end_a), ":".join(end_b),
                "--seed", str(seed)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""
        try:
            line = self._line(CONTROL_TIMEOUT)
        except LabError:
            self.stop()
            raise
        if line != "ready":
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.stop()
            raise LabError(f"link process did not start: {line!r} {err.strip()[-500:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not select.select([fd], [], [], 0)[0]):
                raise LabError(f"link process: no answer within {timeout} s (exit {self.proc.poll()})")
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                if not data:
                    raise LabError(f"link process exited ({self.proc.poll()})")
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise LabError(f"link process gone: {exc}") from exc
        answer = json.loads(self._line(CONTROL_TIMEOUT))
        if not answer.get("ok"):
            raise LabError(f"link refused {op}: {answer.get('error')}")
        return dict(answer)

    def set(self, direction: str = "both", **params: Any) -> dict[str, Any]:
        """Change parameters (delay_ms, jitter_ms, loss, rate_mbit, queue_ms | queue_bytes) while traffic runs."""
        return self.command("set", dir=direction, **params)

    def apply(self, profile: Profile) -> None:
        self.set("both", **profile.params())

    def cut(self, on: bool = True) -> dict[str, Any]:
        return self.command("cut", on=on)

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


def link_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the link did between two ``stats`` answers: its CPU share and packet counts (both directions)."""
    wall = max(1e-9, after["wall_s"] - before["wall_s"])
    counts = {k: sum(after[d][k] - before[d][k] for d in ("ab", "ba")) for k in after["ab"]}
    return {"cpu_share": (after["cpu_s"] - before["cpu_s"]) / wall, **counts}


def format_link(delta: dict[str, Any]) -> str:
    return (f"link cpu {delta['cpu_share'] * 100:.0f}%, fwd {delta['fwd']}, lost {delta['drop_loss']}, "
            f"queue-drop {delta['drop_queue']}, cut-drop {delta['drop_cut']}")


def change_address(lab: Lab, node: str, iface: str, old: str, new: str, *, gateway: str | None = None) -> None:
    """Roaming: the new address first, then the old one removed, then the default route (if any) put back.

    ``promote_secondaries``: without it, deleting the old (primary) address deletes the new one with it."""
    lab.nx(node, "sysctl", "-qw", f"net.ipv4.conf.{iface}.promote_secondaries=1")
    lab.nx(node, "ip", "addr", "add", f"{new}/{PREFIXLEN}", "dev", iface)
    lab.nx(node, "ip", "addr", "del", f"{old}/{PREFIXLEN}", "dev", iface)
    if gateway is not None:
        lab.nx(node, "ip", "route", "replace", "default", "via", gateway, "dev", iface)


ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


@contextlib.contextmanager
def congestion_controls_allowed(*names: str) -> Iterator[None]:
    """Let lab namespaces choose ``names`` as their default, restoring the host's list afterwards.

    Only the initial namespace may make a "restricted" algorithm a namespace's default; an algorithm is
    unrestricted when it is in ``tcp_allowed_congestion_control`` (a host-wide list, typically just the host's
    default and reno). Adding one to it changes nothing for existing sockets or for the host's default."""
    before = ALLOWED_CC.read_text().split()
    added = [n for n in names if n not in before]
    if added:
        ALLOWED_CC.write_text(" ".join(before + added))
    try:
        yield
    finally:
        if added:  # take back only what this run added: another run may have changed the list meanwhile
            now = ALLOWED_CC.read_text().split()
            ALLOWED_CC.write_text(" ".join(n for n in now if n not in added))


def set_congestion_control(lab: Lab, cc: str) -> None:
    """The kernel's TCP congestion control is per namespace: set it in every namespace of the lab.

    ``cc`` must be allowed (``congestion_controls_allowed``) unless it is the host's default or reno."""
    for name in lab._created:
        lab.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={cc}"])


@attrs.define
class WanLab(Lab):
    """Two namespaces, ``a`` and ``b``, on one link. ``with WanLab(profile=PROFILES['wifi']) as lab: ...``."""

    nat_a: str = "-"
    nat_b: str = "-"
    profile: Profile = PROFILES["lan"]
    seed: int = 1
    link: WanLink | None = None
    addr: dict[str, str] = attrs.Factory(lambda: dict(ADDR))

    def up(self) -> None:
        for node in ("a", "b"):
            name = self.ns(node)
            self.run(["ip", "netns", "add", name])
            self._created.append(name)
            self.run(["ip", "-n", name, "link", "set", "lo", "up"])
            self.nx(node, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")
        self.link = WanLink((self.ns("a"), "wan"), (self.ns("b"), "wan"), seed=self.seed)
        self.link.apply(self.profile)
        for node in ("a", "b"):
            self.run(["ip", "-n", self.ns(node), "addr", "add", f"{self.addr[node]}/{PREFIXLEN}", "dev", "wan"])
            self.run(["ip", "-n", self.ns(node), "link", "set", "wan", "up"])
        self.wait_path()

    def wait_path(self, timeout: float = 10.0) -> None:
        """ARP + one TCP connect across (bounded), so the first measured packet does not pay for neighbour discovery.

        Nothing listens on port 9 of ``b``: a refused connection proves the round trip (no ping on these machines)."""
        probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 9), timeout=1)\n"
                 "except ConnectionRefusedError:\n sys.exit(0)\nexcept OSError:\n sys.exit(1)\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run(self.in_ns("a", [sys.executable, "-c", probe, self.addr["b"]]),
                              capture_output=True, timeout=5, check=False).returncode == 0:
                return
        raise LabError(f"no path from {self.ns('a')} to {self.addr['b']} within {timeout} s")

    def move(self, node: str, new: str) -> None:
        """Give ``node`` a new address on its WAN interface and remove the old one (roaming)."""
        change_address(self, node, "wan", self.addr[node], new)
        self.addr[node] = new

    def down(self) -> None:
        if self.link is not None:
            self.link.stop()
            self.link = None
        super().down()


@attrs.define
class NatWanLab(Lab):
    """The NAT lab with the WAN cable of router A and/or B replaced by an impaired link (``links[side]``)."""

    wan_profiles: dict[str, Profile] = attrs.Factory(dict)  # side ("A"/"B") -> profile of its WAN cable
    links: dict[str, WanLink] = attrs.Factory(dict)

    def _veth(self, node1: str, if1: str, node2: str, if2: str) -> None:
        side = node2[1:] if node1 == "inet" and node2.startswith("r") else ""
        if side not in self.wan_profiles:
            super()._veth(node1, if1, node2, if2)
            return
        link = WanLink((self.ns(node2), if2), (self.ns(node1), if1), seed=len(self.links) + 1)
        self.links[side] = link
        link.apply(self.wan_profiles[side])
        self.run(["ip", "-n", self.ns(node1), "link", "set", if1, "up"])
        self.run(["ip", "-n", self.ns(node2), "link", "set", if2, "up"])

    def move_router(self, side: str, new: str) -> None:
        """Router ``side`` gets a new public address (its ISP renumbered it); the default route is restored."""
        from tests.nat.lab import WAN

        change_address(self, f"r{side}", "wan", WAN[side], new, gateway=INET_IP)
        self.nx(f"r{side}", "conntrack", "-F", check=False)

    def down(self) -> None:
        for link in self.links.values():
            link.stop()
        self.links.clear()
        super().down()
