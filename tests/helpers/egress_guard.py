"""A firewall net under the whole test session: the portmapper probes of iroh endpoints never leave the host.

Why: the `iroh` binding has no switch for iroh's portmapper, and every endpoint - `preset_minimal` included - looks
for a UPnP/NAT-PMP/PCP gateway when it binds: an SSDP multicast (239.255.255.250 / ff02::c, UDP 1900) and NAT-PMP/PCP
requests to the default gateway (UDP 5351). The iroh tests that run on the host's loopback (tests/iroh_mode, in the
pytest process and in `tunnel` processes) would send those on the host's real interfaces, against the rule that
tests talk only to loopback and to namespaces they create. Namespaced labs are unaffected (they have no route out).

While the session runs, one nftables table in the host namespace drops exactly those packets on output (loopback
excepted); it is removed when the session ends. The table is named after the session's pid: a pytest run started
by a test (the NAT suite's background run, a fresh clone's) has its own and removes only its own, and tables of
sessions that were killed are reaped. Root only (the suite runs as root in CI; elsewhere the lab tests fail on
their own).
"""

from __future__ import annotations

import os
import shutil
import subprocess

PREFIX = "tunnel_test_egress_guard_"
TABLE = f"{PREFIX}{os.getpid()}"
RULES = f"""
table inet {TABLE} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        oifname "lo" accept
        ip daddr 239.255.255.250 udp dport 1900 counter drop
        ip6 daddr {{ ff02::c, ff05::c }} udp dport 1900 counter drop
        udp dport {{ 5350, 5351 }} counter drop
    }}
}}
"""


def install() -> bool:
    """Put the table in place (replacing an old one); False where this is not root or nft is missing."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return False
    for table in tables():
        pid = table[len(PREFIX):]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _delete(table)  # its session was killed
    remove()
    subprocess.run(["nft", "-f", "-"], input=RULES, text=True, check=True, capture_output=True)
    return True


def remove() -> None:
    """Remove this session's table (never another session's)."""
    _delete(TABLE)


def tables() -> list[str]:
    """The guard tables of every session now in the host namespace."""
    out = subprocess.run(["nft", "list", "tables", "inet"], capture_output=True, text=True, check=False).stdout
    return [line.split()[-1] for line in out.splitlines() if line.split()[-1:] and line.split()[-1].startswith(PREFIX)]


def _delete(table: str) -> None:
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, check=False)


def dropped() -> int:
    """Packets the guard tables of every session dropped so far (0 if none is installed). Every session's: when
    two test sessions run at once (a nested one, or two checkouts), the first table's rule drops the packet and the
    other's counter never sees it."""
    total = 0
    for table in tables():
        out = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            words = line.split()
            if "counter" in words and "packets" in words:
                total += int(words[words.index("packets") + 1])
    return total
