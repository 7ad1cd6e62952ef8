"""Value types shared by every machine, so adapters handle one shape of output."""

from __future__ import annotations

from typing import NamedTuple

#: A transport address as the socket module spells it: (ip literal, port). IPv6 literals carry no brackets.
Address = tuple[str, int]


class Transmit(NamedTuple):
    """One datagram a machine wants sent: from the local socket bound at ``local`` to ``remote``.

    A named tuple, not an attrs class: one is made per packet, and a frozen attrs instance cost 2-4 % of a bulk
    sender's CPU (py-spy) against a tuple's fraction of that."""

    data: bytes
    local: Address
    remote: Address
