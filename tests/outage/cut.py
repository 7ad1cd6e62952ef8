"""The cut of the outage tests: an nftables table on the client's router (namespace rA) drops everything on its
WAN side in both directions; deleting the table heals it."""

from __future__ import annotations

from tests.nat.lab import Lab

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
