"""The cut of the outage tests: an nftables table on the client's router (namespace rA) drops everything on its
WAN side in both directions; deleting the table heals it. Also the check every outage lab starts with."""

from __future__ import annotations

import pytest
from tests.nat.lab import Lab, is_root, reap_stale_labs, tools_missing

CUT_TABLE = "tunnel_outage_cut"


def cut_rules() -> str:
    """Everything on the router's WAN side dropped, both ways (before conntrack inbound, after NAT outbound)."""
    return f"""table inet {CUT_TABLE} {{
  chain cut_in {{
    type filter hook prerouting priority -300; policy accept;
    iifname "wan" counter drop
  }}
  chain cut_out {{
    type filter hook postrouting priority 300; policy accept;
    oifname "wan" counter drop
  }}
}}
"""


def cut(lab: Lab) -> None:
    lab.nx("rA", "nft", "-f", "-", input_text=cut_rules())


def heal(lab: Lab) -> None:
    lab.nx("rA", "nft", "delete", "table", "inet", CUT_TABLE)


def require_labs() -> None:
    """Fail (not skip) where labs cannot be built, then tear down what a killed earlier run left behind."""
    if not is_root():
        pytest.fail("the outage tests build network namespaces and must run as root (CI does)", pytrace=False)
    missing = tools_missing()
    if missing:
        pytest.fail(f"the outage tests need {', '.join(missing)} (scripts/install.sh --test)", pytrace=False)
    reap_stale_labs()
