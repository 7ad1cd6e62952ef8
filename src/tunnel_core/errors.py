"""The two error families every machine and codec uses (the h11/wsproto habit).

A machine that raised stays failed; callers can tell "we misused the API" from "the peer or the input is bad"
without parsing messages.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by tunnel_core on purpose."""


class LocalProtocolError(ProtocolError):
    """Our own code misused a machine (wrong state, bad argument)."""


class RemoteProtocolError(ProtocolError):
    """The peer, or input that came from outside (a pasted block, a datagram), is malformed or not allowed."""
