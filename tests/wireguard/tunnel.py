"""The real CLI pair inside a WireGuard lab's namespaces (tests/wireguard/lab.py): server in B, client in A.

Works on any path object with ``ns(side)``, ``ip(side)`` and ``workdir`` (``PathLab`` or ``WanPath``). Host
candidates are the path addresses only (``--no-stun --host-candidate``); manual mode pipes OFFER/ANSWER; nostr mode
signals through nostr-sdk's relay (tests/nat/nostr_relay.py, event kind 24243) on B's path address, so signaling
crosses the path too; iroh mode runs offline (no relay, no discovery), each endpoint bound on its path address.
Every process is stopped by ``stop`` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.e2e.harness import HarnessError, TunnelProcess
from tests.iroh_mode.tunnels import make_key

from .lab import in_ns, wait_listening

#: Where the tunnel client listens for WireGuard (A's loopback).
CLIENT_LISTEN = ("127.0.0.1", 51821)
TIMEOUT = 30.0
CLI = [sys.executable, "-m", "tunnel_asyncio.cli"]
NOSTR_RELAY = str(Path(__file__).parent.parent / "nat" / "nostr_relay.py")
NOSTR_KIND = "24243"  # nostr-sdk's LocalRelay refuses 24242 (see tests/nat/nostr_relay.py)
NOSTR_PORT = 7777
MODES = ("manual", "nostr", "iroh")


class Path_(Protocol):
    workdir: Path

    def ns(self, side: str) -> str: ...

    def ip(self, side: str) -> str: ...


class TunnelInNamespaces:
    """One tunnel forwarding ``source`` (on B) to ``CLIENT_LISTEN`` (on A); ``extra`` goes to both ends."""

    def __init__(self, lab: Path_, source: str, *, mode: str = "manual", extra: Sequence[str] = ()) -> None:
        self.lab = lab
        self.source = source
        self.mode = mode
        self.extra = list(extra)
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
        return ["--no-stun", "--host-candidate", self.lab.ip(side), *self.extra]

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
        self.relay = subprocess.Popen(in_ns(self.lab.ns("B"), [sys.executable, NOSTR_RELAY, self.lab.ip("B"),
                                                                str(NOSTR_PORT), "--lifetime", "600"]),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.lab.ns("B"), NOSTR_PORT)
        signaling = ["--relay", f"ws://{self.lab.ip('B')}:{NOSTR_PORT}", "--event-kind", NOSTR_KIND]
        self.server = TunnelProcess("server", in_ns(self.lab.ns("B"), [
            *CLI, "server", "nostr", "--nsec-file", str(files["B"]), "--peer-npub", keys["A"].public_key.npub,
            "--allowed-udp", "127.0.0.0/8", *signaling, *self._ice("B")]))
        self.server.wait_stderr(r"Waiting for tunnel requests", TIMEOUT)
        self.client = TunnelProcess("client", in_ns(self.lab.ns("A"), [
            *CLI, "client", "nostr", "--nsec-file", str(files["A"]), "--peer-npub", keys["B"].public_key.npub,
            *signaling, *self._client_args()]))

    def _start_iroh(self) -> None:
        keys = {side: make_key(self.lab.workdir, f"iroh-{side}.key", seed) for side, seed in (("A", 5), ("B", 6))}

        def offline(side: str) -> list[str]:
            return ["--no-relay", "--dns-server", "none", "--bind-addr", f"{self.lab.ip(side)}:0", *self.extra]

        self.server = TunnelProcess("server", in_ns(self.lab.ns("B"), [
            *CLI, "server", "iroh", "--secret-file", str(keys["B"][0]), *offline("B"), "--allowed-udp", "127.0.0.0/8",
            "--allowed-clients", keys["A"][1]]))
        addr = self.server.wait_stderr(rf"Listening on ({re.escape(self.lab.ip('B'))}:\d+)", TIMEOUT).group(1)
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
            self.relay.kill()  # a throw-away test relay (nostr-sdk's can ignore SIGTERM): nothing to shut down cleanly
            self.relay.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(p.describe() for p in (self.server, self.client) if p is not None)


def summary(stderr: str) -> dict[str, int]:
    """The counters of a close summary (``UDP over QUIC datagrams: ...`` / ``UDP over streams: ...``)."""
    match = re.search(r"UDP over (?:QUIC datagrams|streams): (.*)", stderr)
    assert match, f"no datagram summary in:\n{stderr}"
    return {k.replace(" ", "_"): int(v) for k, v in (item.rsplit(" ", 1) for item in match.group(1).split(", "))}
