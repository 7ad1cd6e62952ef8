"""Run a benchmark inside a network namespace of its own, with only loopback in it.

Why: the iroh rows bind iroh endpoints on 127.0.0.1, and iroh's portmapper still multicasts an SSDP search for a UPnP
gateway (and may ask the default gateway over NAT-PMP/PCP) from every endpoint; the `iroh` binding has no switch for
it. In a namespace with only ``lo`` those probes have nowhere to go, and everything the benchmark measures - all on
127.0.0.1 - works as before. Needs root (``unshare -n``), as the lab benchmarks do.
"""

from __future__ import annotations

import os
import subprocess
import sys

ENV = "TUNNEL_BENCH_PRIVATE_NET"


def reexec_in_private_net() -> int | None:
    """In the parent: run this same command in a new network namespace and return its exit code. In the child (the
    environment says so): bring ``lo`` up and return None, so the caller goes on measuring."""
    if os.environ.get(ENV) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return None
    if os.geteuid() != 0:
        print("Error: this benchmark runs in a private network namespace (unshare -n) and must run as root",
              file=sys.stderr)
        return 2
    env = {**os.environ, ENV: "1"}
    return subprocess.run(["unshare", "-n", sys.executable, *sys.argv], env=env, check=False).returncode
