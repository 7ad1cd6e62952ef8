"""A NAT lab in network namespaces, driven from Python: two peers behind NAT routers plus coturn on a fake internet.

Why namespaces and not a simulator: the product's promise is crossing real NAT behaviour, so the kernel's own
conntrack and nftables do the translating here (the in-memory network of ``tunnel_core.testing`` covers the
algorithmic cases). The topology and the nft rules follow /work/shared/natlab (its README explains each choice)::

    <p>-inet : bridge br0 198.51.100.1/24 (the "internet"; routes nowhere else)
     |- <p>-srv : 198.51.100.10 + .11   coturn (STUN + TURN) on :3478
     |- <p>-rA  : wan 198.51.100.101 | lan 10.0.1.1  -- <p>-pA : 10.0.1.2   (the client side)
     `- <p>-rB  : wan 198.51.100.102 | lan 10.0.2.1  -- <p>-pB : 10.0.2.2   (the server side)

Every lab gets a unique prefix, so several labs run side by side; nothing is connected to the host's own
namespace (no veth end lives there), addresses are documentation ranges, and ``down`` kills only processes living
inside the lab's namespaces (by pid) before deleting them. Needs root, iproute2, nftables, conntrack and coturn.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from tunnel_core import stun

NAT_TYPES: tuple[str, ...] = ("fullcone", "rcone", "prc", "sym")
INET_IP = "198.51.100.1"
SRV_IP = "198.51.100.10"
SRV_IP2 = "198.51.100.11"
WAN = {"A": "198.51.100.101", "B": "198.51.100.102"}
LAN = {"A": "10.0.1", "B": "10.0.2"}
STUN_PORT = 3478
TURN_USER = "natlab"
TURN_PASSWORD = "natlab-secret"
TURN_REALM = "natlab.test"
NODES = ("inet", "srv", "rA", "rB", "pA", "pB")
COMMAND_TIMEOUT = 20.0

_counter = itertools.count()


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def tools_missing() -> list[str]:
    return [t for t in ("ip", "nft", "conntrack", "turnserver") if shutil.which(t) is None]


def is_root() -> bool:
    return os.geteuid() == 0


def unique_prefix() -> str:
    """Short (namespace names show up in error messages) yet unique across concurrent runs and labs."""
    return f"tn{os.getpid() % 100000}x{next(_counter)}"


def nat_rules(nat: str) -> str:
    """The nft script for one router (flush + tables), exactly the shared lab's construction."""
    if nat not in NAT_TYPES:
        raise ValueError(f"unknown NAT type {nat!r}")
    snat = "masquerade fully-random" if nat == "sym" else "masquerade"
    rules = """flush ruleset
table inet natlab_filter {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" counter drop
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    ct state established,related accept
    ct status dnat accept
  }
}
table ip natlab_nat {
"""
    if nat in ("fullcone", "rcone"):
        match = ("meta l4proto udp" if nat == "fullcone" else "meta l4proto udp udp dport . ip saddr @seen")
        rules += f"""  map cone {{ type inet_service : ipv4_addr; flags dynamic, timeout; timeout 300s; }}
  set seen {{ type inet_service . ipv4_addr; flags dynamic, timeout; timeout 300s; }}
  chain cone_track {{
    type filter hook forward priority filter - 10; policy accept;
    iifname "lan" oifname "wan" meta l4proto udp update @cone {{ udp sport timeout 300s : ip saddr }}
    iifname "lan" oifname "wan" meta l4proto udp update @seen {{ udp sport . ip daddr timeout 300s }}
  }}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan" {match} dnat ip to udp dport map @cone
  }}
"""
    rules += f"""  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" {snat}
  }}
}}
"""
    return rules


def loss_rules(percent: int) -> str:
    """Random loss in both directions on a router's WAN side (the kernel has no netem; nft numgen does it)."""
    if not 0 <= percent <= 100:
        raise ValueError("loss percent must be 0..100")
    return f"""table inet natlab_impair {{
  chain loss_in {{
    type filter hook prerouting priority -300; policy accept;
    iifname "wan" numgen random mod 100 < {percent} counter drop
  }}
  chain loss_out {{
    type filter hook postrouting priority 300; policy accept;
    oifname "wan" numgen random mod 100 < {percent} counter drop
  }}
}}
"""


@attrs.define
class Lab:
    """One topology. Use as a context manager: ``up`` on enter, ``down`` on exit (also after failures)."""

    nat_a: str
    nat_b: str
    prefix: str = attrs.field(factory=unique_prefix)
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="tunnel-nat-")))
    turn: bool = True
    _coturn: subprocess.Popen[bytes] | None = None
    _created: list[str] = attrs.field(factory=list)

    # ------------------------------------------------------------------------------------------ naming

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    @property
    def stun_server(self) -> str:
        return f"{SRV_IP}:{STUN_PORT}"

    @property
    def turn_url(self) -> str:
        return f"turn:{SRV_IP}:{STUN_PORT}"

    def lan_ip(self, side: str) -> str:
        return f"{LAN[side]}.2"

    def peer_ns(self, side: str) -> str:
        return self.ns(f"p{side}")

    def in_ns(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv that runs inside the namespace of ``node`` (``ip netns exec`` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.ns(node), *argv]

    # ------------------------------------------------------------------------------------------ commands

    def run(self, argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
        result = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def nx(self, node: str, *argv: str, input_text: str | None = None, check: bool = True) -> str:
        return self.run(self.in_ns(node, argv), input_text=input_text, check=check)

    # ------------------------------------------------------------------------------------------ life cycle

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        for node in NODES:
            name = self.ns(node)
            self.run(["ip", "netns", "add", name])
            self._created.append(name)
            self.run(["ip", "-n", name, "link", "set", "lo", "up"])
            self.nx(node, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0")
        inet = self.ns("inet")
        self.run(["ip", "-n", inet, "link", "add", "br0", "type", "bridge"])
        self.run(["ip", "-n", inet, "link", "set", "br0", "up"])
        self.run(["ip", "-n", inet, "addr", "add", f"{INET_IP}/24", "dev", "br0"])
        self._veth("inet", "p-srv", "srv", "eth0")
        self._veth("inet", "p-rA", "rA", "wan")
        self._veth("inet", "p-rB", "rB", "wan")
        for port in ("p-srv", "p-rA", "p-rB"):
            self.run(["ip", "-n", inet, "link", "set", port, "master", "br0"])
        srv = self.ns("srv")
        self.run(["ip", "-n", srv, "addr", "add", f"{SRV_IP}/24", "dev", "eth0"])
        self.run(["ip", "-n", srv, "addr", "add", f"{SRV_IP2}/24", "dev", "eth0"])
        self.run(["ip", "-n", srv, "route", "add", "default", "via", INET_IP])
        for side in ("A", "B"):
            router, peer = self.ns(f"r{side}"), self.ns(f"p{side}")
            self._veth(f"r{side}", "lan", f"p{side}", "eth0")
            self.run(["ip", "-n", router, "addr", "add", f"{WAN[side]}/24", "dev", "wan"])
            self.run(["ip", "-n", router, "addr", "add", f"{LAN[side]}.1/24", "dev", "lan"])
            self.run(["ip", "-n", router, "route", "add", "default", "via", INET_IP])
            self.nx(f"r{side}", "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.run(["ip", "-n", peer, "addr", "add", f"{LAN[side]}.2/24", "dev", "eth0"])
            self.run(["ip", "-n", peer, "route", "add", "default", "via", f"{LAN[side]}.1"])
        self.set_nat("A", self.nat_a)
        self.set_nat("B", self.nat_b)
        self._start_coturn()

    def _veth(self, node1: str, if1: str, node2: str, if2: str) -> None:
        # Created directly inside the two namespaces: no device ever appears in the host namespace.
        self.run(["ip", "link", "add", if1, "netns", self.ns(node1), "type", "veth", "peer", "name", if2,
                  "netns", self.ns(node2)])
        self.run(["ip", "-n", self.ns(node1), "link", "set", if1, "up"])
        self.run(["ip", "-n", self.ns(node2), "link", "set", if2, "up"])

    def set_nat(self, side: str, nat: str) -> None:
        """Replace a router's whole ruleset in one nft transaction, then forget old conntrack state."""
        self.nx(f"r{side}", "nft", "-f", "-", input_text=nat_rules(nat))
        self.nx(f"r{side}", "conntrack", "-F", check=False)
        if side == "A":
            self.nat_a = nat
        else:
            self.nat_b = nat

    def impair_loss(self, side: str, percent: int) -> None:
        self.nx(f"r{side}", "nft", "-f", "-", input_text=loss_rules(percent))

    def _start_coturn(self) -> None:
        conf = self.workdir / "turnserver.conf"
        conf.write_text("\n".join([
            f"listening-ip={SRV_IP}", f"listening-ip={SRV_IP2}", f"relay-ip={SRV_IP}",
            f"listening-port={STUN_PORT}", f"alt-listening-port={STUN_PORT + 1}",
            "min-port=49152", "max-port=49651", "fingerprint", "lt-cred-mech",
            f"user={TURN_USER}:{TURN_PASSWORD}", f"realm={TURN_REALM}", "no-tls", "no-dtls", "no-cli",
            "no-multicast-peers", f"userdb={self.workdir / 'turndb'}", f"pidfile={self.workdir / 'turn.pid'}",
            f"log-file={self.workdir / 'turnserver.log'}", "simple-log", "",
        ]))
        with open(self.workdir / "turnserver.out", "wb") as out:
            self._coturn = subprocess.Popen(self.in_ns("srv", ["turnserver", "-c", str(conf)]),
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._coturn_answers():
            if self._coturn.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"coturn did not start in {self.ns('srv')}: see {self.workdir}/turnserver.log")
            time.sleep(0.05)

    def _coturn_answers(self) -> bool:
        """One STUN Binding from inside the server namespace (the only place that can reach it besides the lab)."""
        request = stun.encode(stun.StunMessage(stun.Method.BINDING, stun.MessageClass.REQUEST, b"natlab-probe"))
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3)\n"
            f"s.sendto(bytes.fromhex('{request.hex()}'),('{SRV_IP}',{STUN_PORT}))\n"
            "try:\n s.recvfrom(2048)\nexcept OSError:\n sys.exit(1)\n"
        )
        result = subprocess.run(self.in_ns("srv", ["python3", "-c", code]), capture_output=True, timeout=5,
                                check=False)
        return result.returncode == 0

    def pids(self) -> list[int]:
        pids: list[int] = []
        for name in self._created:
            out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False,
                                 timeout=COMMAND_TIMEOUT).stdout
            pids += [int(p) for p in out.split() if p.isdigit()]
        return pids

    def down(self) -> None:
        """Kill what lives in our namespaces (by pid), delete them, remove the work dir. Idempotent."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            if pids and sig == signal.SIGTERM:
                deadline = time.monotonic() + 1.0
                while self.pids() and time.monotonic() < deadline:
                    time.sleep(0.05)
        if self._coturn is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._coturn.wait(timeout=2)
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False, timeout=COMMAND_TIMEOUT)
        self._created.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


_PREFIX = re.compile(r"^(tn(\d+)x\d+)-")


def reap_stale_labs() -> list[str]:
    """Tear down labs left behind by a killed run (their creator's pid is gone); returns their prefixes.

    Only namespaces named by ``unique_prefix`` whose pid no longer exists are touched."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    stale: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = _PREFIX.match(line)
        if m is None or int(m.group(2)) == os.getpid() % 100000 or _pid_alive(int(m.group(2))):
            continue
        stale.setdefault(m.group(1), []).append(line.split()[0])
    for prefix, names in stale.items():
        lab = Lab("prc", "prc", prefix=prefix)
        lab._created = names
        lab.down()
    return sorted(stale)


def _pid_alive(pid: int) -> bool:
    """The prefix holds pid mod 100000, so a live process with that remainder counts as alive (never reap it)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) % 100000 == pid:
            return True
    return False


def lab_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with ``prefix-`` (to check that teardown left nothing behind)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def free_port_hint() -> int:
    """A port number for a lab namespace's loopback (namespaces are fresh, so almost anything is free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
