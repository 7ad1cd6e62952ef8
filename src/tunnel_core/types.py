"""Value types shared by every machine, so adapters handle one shape of output."""

from __future__ import annotations

import attrs

#: A transport address as the socket module spells it: (ip literal, port). IPv6 literals carry no brackets.
Address = tuple[str, int]


@attrs.frozen
class Transmit:
    """One datagram a machine wants sent: from the local socket bound at ``local`` to ``remote``."""

    data: bytes
    local: Address
    remote: Address
