"""Hot spots of aioquic made cheaper, applied once when ``tunnel_core.quic`` is imported (aioquic is pinned to 1.7.x;
tests/test_quic_speedups.py checks each patch against the installed version).

Why patch at all: one Python process pays aioquic's per-packet work for every ~1.3 KB datagram, and on a real path
that work - not the network - caps one tunnel's rate (issue 13, docs/performance.md). A patch here keeps aioquic's
behaviour and removes only interpreter overhead that a profile of a bulk transfer points at.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

from aioquic import tls
from aioquic.quic import connection as aioquic_connection

#: Enums aioquic hashes on every packet: ``tls.Epoch`` keys the per-epoch state (packet spaces, crypto pairs)
#: looked up ~30 times per packet, ``QuicConnectionState`` is tested against the ``END_STATES`` frozenset several
#: times per call of datagrams_to_send / get_timer / receive_datagram.
IDENTITY_HASHED: tuple[type[enum.Enum], ...] = (tls.Epoch, aioquic_connection.QuicConnectionState)

_applied = False


def apply() -> None:
    """Apply every patch once (idempotent). Runs when ``tunnel_core.quic`` is imported, before any connection."""
    global _applied
    if _applied:
        return
    _applied = True
    # ``Enum.__hash__`` is a Python function (the hash of the member's name): ~1 µs of every packet's ~45 µs here
    # (quic_cost.py --bulk, 18 calls per packet). Members are singletons compared by identity, so the identity hash
    # answers the same; containers built before the change are rebuilt below, those built later hash the new way.
    for cls in IDENTITY_HASHED:
        cls.__hash__ = object.__hash__  # type: ignore[method-assign,assignment]
    for holder in _holders():
        for name, value in list(vars(holder).items()):
            rebuilt = _rehashed(value)
            if rebuilt is not value:
                setattr(holder, name, rebuilt)


def _holders() -> list[Any]:
    """Modules of aioquic and of this package, and their classes: where import-time containers live."""
    out: list[Any] = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name.startswith(("aioquic", "tunnel_core.quic"))):
            continue
        out.append(module)
        out.extend(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == name)
    return out


def _rehashed(value: Any) -> Any:
    """``value`` itself, or a copy hashed anew if it is a set or dict holding a patched enum member."""
    # From a list: copying a set or dict directly reuses the hashes it stored.
    if isinstance(value, (set, frozenset)) and any(isinstance(v, IDENTITY_HASHED) for v in value):
        return type(value)(list(value))
    if isinstance(value, dict) and any(isinstance(k, IDENTITY_HASHED) for k in value):
        return dict(list(value.items()))
    return value


def stale_containers() -> list[str]:
    """Module or class attributes holding a patched member that a lookup no longer finds (for the tests)."""
    stale = []
    for holder in _holders():
        for name, value in vars(holder).items():
            if isinstance(value, (set, frozenset, dict)):
                members = [v for v in value if isinstance(v, IDENTITY_HASHED)]
                if any(m not in value for m in members):
                    stale.append(f"{getattr(holder, '__name__', holder)}.{name}")
    return stale
