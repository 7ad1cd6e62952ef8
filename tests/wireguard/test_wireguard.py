"""WireGuard through the tunnel in manual, nostr and iroh mode (issue 14): wireguard-go in two namespaces on a
1500-MTU path, WireGuard's UDP endpoint being the tunnel client's local listener. ping (full-size packets too) and
iperf3 over the WireGuard interface must work, 1452-byte WireGuard packets must have travelled as fragmented QUIC
datagrams, and an 8 KB UDP datagram must pass.

Root only (namespaces). The lab's path is plain here; moving it onto the WAN lab's profiles only swaps PathLab.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.harness import HarnessError, TunnelProcess
from tests.iroh_mode.tunnels import make_key

from .lab import PATH_IP, WG_IP, WG_PORT_B, PathLab, WireGuardPair, in_ns, run, tools_missing

pytestmark = pytest.mark.nat

CLIENT_LISTEN = ("127.0.0.1", 51821)
TIMEOUT = 30.0
CLI = [sys.executable, "-m", "tunnel_asyncio.cli"]
NOSTR_RELAY = str(Path(__file__).parent.parent / "nat" / "nostr_relay.py")
NOSTR_KIND = "24243"  # nostr-sdk's LocalRelay refuses 24242 (see tests/nat/nostr_relay.py)
NOSTR_PORT = 7777


class TunnelInNamespaces:
    """The real CLI pair, server in namespace B and client in namespace A, host candidates on the veth only.

    manual: the OFFER/ANSWER blocks go through pipes. nostr: signaling through a Nostr relay (nostr-sdk's, as the
    NAT lab runs it: tests/nat/nostr_relay.py, event kind 24243) listening on B's path address."""

    def __init__(self, lab: PathLab, source: str, *, mode: str = "manual") -> None:
        self.lab = lab
        self.source = source
        self.mode = mode
        self.server: TunnelProcess | None = None
        self.client: TunnelProcess | None = None
        self.relay: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TunnelInNamespaces:
        try:
            {"manual": self._start_manual, "nostr": self._start_nostr, "iroh": self._start_iroh}[self.mode]()
            assert self.client is not None
            self.client.wait_stderr(r"Listening on UDP", TIMEOUT)
        except HarnessError as exc:
            self.stop()
            raise HarnessError(f"{self.mode} tunnel did not come up: {exc}\n{self.logs()}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _ice(self, side: str) -> list[str]:
        return ["--no-stun", "--host-candidate", PATH_IP[side]]

    def _client_args(self) -> list[str]:
        # nostr mode (like upstream's) names the protocol on the target too.
        scheme = "udp://" if self.mode == "nostr" else ""
        return ["--source", self.source, "--target", f"{scheme}{CLIENT_LISTEN[0]}:{CLIENT_LISTEN[1]}",
                *self._ice("A")]

    def _start_manual(self) -> None:
        self.server = TunnelProcess("server", in_ns(self.lab.ns("B"), [
            *CLI, "server", "manual", "--allowed-udp", "127.0.0.0/8", *self._ice("B")]))
        self.client = TunnelProcess("client", in_ns(self.lab.ns("A"), [
            *CLI, "client", "manual", *self._client_args()]))
        offer = self.client.read_block("OFFER", TIMEOUT)
        self.server.write("\n".join(offer) + "\n")
        answer = self.server.read_block("ANSWER", TIMEOUT)
        self.client.write("\n".join(answer) + "\n")

    def _start_nostr(self) -> None:
        from tunnel_core.nostr.keys import SecretKey

        keys = {side: SecretKey.generate(os.urandom) for side in "AB"}
        files = {}
        for side, key in keys.items():
            files[side] = self.lab.workdir / f"nostr-{side}.nsec"
            files[side].write_text(key.nsec)
            files[side].chmod(0o600)
        self.relay = subprocess.Popen(in_ns(self.lab.ns("B"), [sys.executable, NOSTR_RELAY, PATH_IP["B"],
                                                                str(NOSTR_PORT), "--lifetime", "600"]),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.lab, "B", NOSTR_PORT)
        signaling = ["--relay", f"ws://{PATH_IP['B']}:{NOSTR_PORT}", "--event-kind", NOSTR_KIND]
        self.server = TunnelProcess("server", in_ns(self.lab.ns("B"), [
            *CLI, "server", "nostr", "--nsec-file", str(files["B"]), "--peer-npub", keys["A"].public_key.npub,
            "--allowed-udp", "127.0.0.0/8", *signaling, *self._ice("B")]))
        self.server.wait_stderr(r"Waiting for tunnel requests", TIMEOUT)
        self.client = TunnelProcess("client", in_ns(self.lab.ns("A"), [
            *CLI, "client", "nostr", "--nsec-file", str(files["A"]), "--peer-npub", keys["B"].public_key.npub,
            *signaling, *self._client_args()]))

    def _start_iroh(self) -> None:
        """iroh mode offline: no relay, no discovery, each endpoint bound on its namespace's path address."""
        keys = {side: make_key(self.lab.workdir, f"iroh-{side}.key", seed) for side, seed in (("A", 5), ("B", 6))}

        def offline(side: str) -> list[str]:
            return ["--no-relay", "--dns-server", "none", "--bind-addr", f"{PATH_IP[side]}:0"]

        self.server = TunnelProcess("server", in_ns(self.lab.ns("B"), [
            *CLI, "server", "iroh", "--secret-file", str(keys["B"][0]), *offline("B"), "--allowed-udp", "127.0.0.0/8",
            "--allowed-clients", keys["A"][1]]))
        addr = self.server.wait_stderr(r"Listening on (192\.0\.2\.2:\d+)", TIMEOUT).group(1)
        self.client = TunnelProcess("client", in_ns(self.lab.ns("A"), [
            *CLI, "client", "iroh", "-n", keys["B"][1], "-s", self.source,
            "-t", f"{CLIENT_LISTEN[0]}:{CLIENT_LISTEN[1]}", "--server-addr", addr,
            "--secret-file", str(keys["A"][0]), *offline("A")]))

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in (self.client, self.server):
            if proc is not None and proc.running():
                proc.stop(timeout=5.0)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(timeout=5)
            except subprocess.TimeoutExpired:  # nostr-sdk's relay can ignore SIGTERM on a busy machine
                self.relay.kill()
                self.relay.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(p.describe() for p in (self.server, self.client) if p is not None)


def _wait_listening(lab: PathLab, side: str, port: int) -> None:
    for _ in range(200):
        if "LISTEN" in run(in_ns(lab.ns(side), ["ss", "-ltn", f"sport = :{port}"]), check=False):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on TCP {port} in {lab.ns(side)}")


@pytest.fixture
def lab() -> Iterator[PathLab]:
    missing = tools_missing()
    assert not missing, f"install {missing} (scripts/install.sh --test)"
    with PathLab() as path:
        yield path
    assert path.namespaces() == [], "lab namespaces left behind"


def _stats(stderr: str) -> dict[str, int]:
    match = re.search(r"UDP over QUIC datagrams: (.*)", stderr)
    assert match, f"no datagram summary in:\n{stderr}"
    return {k.replace(" ", "_"): int(v) for k, v in (item.rsplit(" ", 1) for item in match.group(1).split(", "))}


def _iperf(lab: PathLab, *extra: str) -> dict:
    server = ["iperf3", "-s", "-1", "-B", WG_IP["B"], "-p", "5201"]
    proc = subprocess.Popen(in_ns(lab.ns("B"), server), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
    try:
        _wait_listening(lab, "B", 5201)
        out = run(in_ns(lab.ns("A"), ["iperf3", "-c", WG_IP["B"], "-p", "5201", "-t", "3", "-J", *extra]),
                  check=False, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return json.loads(out)


@pytest.mark.parametrize("mode", ["manual", "nostr", "iroh"])
def test_wireguard_through_the_tunnel_ping_and_iperf3(lab: PathLab, mode: str) -> None:
    with TunnelInNamespaces(lab, f"udp://127.0.0.1:{WG_PORT_B}", mode=mode) as tunnel, \
            WireGuardPair(lab.ns("A"), lab.ns("B"), CLIENT_LISTEN) as wg:
        ping = run(in_ns(lab.ns("A"), ["ping", "-c", "5", "-i", "0.2", "-W", "5", WG_IP["B"]]), check=False,
                   timeout=60)
        assert " 0% packet loss" in ping, f"{ping}\n{wg.show()}\n{tunnel.logs()}"
        # 1392 + 28 = 1420: full-MTU inner packets, so 1452-byte WireGuard datagrams on the tunnel (DF set).
        big = run(in_ns(lab.ns("A"), ["ping", "-c", "5", "-i", "0.2", "-W", "5", "-M", "do", "-s", "1392",
                                      WG_IP["B"]]), check=False, timeout=60)
        assert " 0% packet loss" in big, f"{big}\n{tunnel.logs()}"
        back = run(in_ns(lab.ns("B"), ["ping", "-c", "3", "-i", "0.2", "-W", "5", WG_IP["A"]]), check=False,
                   timeout=60)
        assert " 0% packet loss" in back, back
        up = _iperf(lab)
        down = _iperf(lab, "-R")
        for result in (up, down):
            assert "error" not in result, result.get("error")
            assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]
        tunnel.stop()
        assert tunnel.client is not None and tunnel.server is not None
        client, server = _stats(tunnel.client.stderr), _stats(tunnel.server.stderr)
    # Full-size WireGuard packets do not fit one 1350-byte QUIC packet: they travelled as fragments both ways.
    assert client["fragmented"] > 0 and server["fragmented"] > 0, (client, server)
    assert client["reassembled"] > 0 and server["reassembled"] > 0, (client, server)
    assert client["datagrams"] > 0 and server["datagrams"] > 0
    assert client["malformed"] == 0 and server["malformed"] == 0


def test_8_kb_and_1452_byte_udp_datagrams_pass_both_ways(lab: PathLab) -> None:
    echo = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('127.0.0.1',7000))\n"
        "while True:\n d,a=s.recvfrom(65535);s.sendto(d[::-1],a)\n"
    )
    server = subprocess.Popen(in_ns(lab.ns("B"), [sys.executable, "-c", echo]))
    try:
        with TunnelInNamespaces(lab, "udp://127.0.0.1:7000") as tunnel:
            probe = (
                "import socket,sys\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5)\n"
                "for n in (1452,1452,8192,1200,30000):\n"
                " d=bytes(range(256))*(n//256)+bytes(n%256)\n"
                f" s.sendto(d,{CLIENT_LISTEN!r})\n"
                " r,_=s.recvfrom(65535)\n"
                " assert r==d[::-1],(n,len(r))\n"
                "print('ok')\n"
            )
            out = run(in_ns(lab.ns("A"), [sys.executable, "-c", probe]), check=False, timeout=60)
            assert out.strip() == "ok", f"{out}\n{tunnel.logs()}"
            tunnel.stop()
            assert tunnel.client is not None
            stats = _stats(tunnel.client.stderr)
    finally:
        server.kill()
        server.wait(timeout=5)
    # The first datagram opened the flow's stream; 1452 and 8192 were fragmented; 30000 took the stream.
    assert stats["fragmented"] == 2 and stats["datagrams"] == 1 and stats["stream_fallback"] == 1, stats
