"""Reverse forwards (docs/forwards.md): how a client names one in its requests, and the server's check against
``--allow-listen``. Shared by every mode's server (the ICE flows and iroh's stream machine), so the rule and its
wording exist once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tunnel_core.policy import parse_target

#: A reverse forward in the signaling (ICE modes) or in a SourceRequest (iroh mode): ``reverse://IP:PORT``.
REVERSE_SCHEME = "reverse://"


def listen_allowed(allow_listen: Sequence[str], ip: str, port: int) -> bool:
    """Whether a reverse forward may listen on ip:port: exact matches with ``--allow-listen`` only (a name or port 0
    in the request never matches)."""
    try:
        wanted_ip = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for text in allow_listen:
        host, allowed_port = parse_target(text)
        if allowed_port == port and port != 0 and ipaddress.ip_address(host) == wanted_ip:
            return True
    return False


def listen_refusal(text: str) -> str:
    """The reason a server gives for a reverse forward ``--allow-listen`` does not name."""
    return (f"Listening on '{text}' is not allowed: the server allows reverse forwards only on the addresses given "
            "with --allow-listen")


def cannot_listen(text: str, why: str) -> str:
    """The reason a server gives when it granted a reverse forward but could not bind it (``why``: the OS's words,
    e.g. "Address already in use")."""
    return f"The server cannot listen on {text}: {why}"
