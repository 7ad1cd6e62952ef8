"""A minimal TURN server machine for the in-memory network (tunnel_core.testing), for virtual-time relay tests.

It speaks just enough RFC 8656 to exercise the client and the agent: the long-term-credential challenge, Allocate,
Refresh, CreatePermission, ChannelBind, Send/Data indications and ChannelData, with permissions enforced on the
way in (as real servers do). Real-server behaviour is covered by the coturn tests; this one exists so NAT x relay
cases run in milliseconds and deterministically.
"""

from __future__ import annotations

from tunnel_core import stun
from tunnel_core.testing.network import Network
from tunnel_core.types import Address, Transmit

REALM = "fake.test"
NONCE = "nonce-1"


class FakeTurnServer:
    def __init__(self, network: Network, address: Address, *, user: str = "u", password: str = "p",
                 relay_ports: range = range(50000, 50100)) -> None:
        self.network = network
        self.address = address
        self.key = stun.long_term_key(user, REALM, password)
        self.user = user
        self._ports = iter(relay_ports)
        self._out: list[Transmit] = []
        #: client 5-tuple (as seen from outside) -> relayed address, and back
        self.allocations: dict[Address, Address] = {}
        self.released: list[Address] = []
        self._client_of: dict[Address, Address] = {}
        self.permissions: dict[Address, set[str]] = {}
        self.channels: dict[Address, dict[int, Address]] = {}
        self.relayed_datagrams = 0
        network.bind(self, address)

    # ------------------------------------------------------------------------------------------ machine

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if local != self.address:
            self._from_peer(data, local, remote)
            return
        if data and 0x40 <= data[0] <= 0x4F:
            try:
                number, payload = stun.decode_channel_data(data)
            except stun.StunError:
                return
            peer = self.channels.get(remote, {}).get(number)
            if peer is not None:
                self._relay_out(remote, peer, payload)
            return
        try:
            msg = stun.decode(data)
        except stun.StunError:
            return
        if msg.message_class == stun.MessageClass.INDICATION and msg.method == stun.Method.SEND:
            peer, payload = msg.get(stun.Attr.XOR_PEER_ADDRESS), msg.get(stun.Attr.DATA)
            if isinstance(peer, tuple) and isinstance(payload, bytes):
                self._relay_out(remote, peer, payload)
            return
        if msg.message_class != stun.MessageClass.REQUEST:
            return
        if not msg.has_integrity or not msg.check_integrity(self.key) or msg.get(stun.Attr.USERNAME) != self.user:
            self._error(msg, remote, 401, "Unauthorized", extra=((stun.Attr.REALM, REALM), (stun.Attr.NONCE, NONCE)))
            return
        if msg.method == stun.Method.ALLOCATE:
            relayed = self.allocations.get(remote)
            if relayed is None:
                relayed = (self.address[0], next(self._ports))
                self.allocations[remote] = relayed
                self._client_of[relayed] = remote
                self.permissions[remote] = set()
                self.channels[remote] = {}
                self.network.bind(self, relayed)
            self._ok(msg, remote, ((stun.Attr.XOR_RELAYED_ADDRESS, relayed), (stun.Attr.XOR_MAPPED_ADDRESS, remote),
                                   (stun.Attr.LIFETIME, 600)))
        elif remote not in self.allocations:
            self._error(msg, remote, 437, "Allocation Mismatch")
        elif msg.method == stun.Method.REFRESH:
            lifetime = msg.get(stun.Attr.LIFETIME, 600)
            self._ok(msg, remote, ((stun.Attr.LIFETIME, lifetime),))
            if lifetime == 0:  # a release (RFC 8656 7.3): the allocation is gone
                del self.allocations[remote]
                self.released.append(remote)
        elif msg.method == stun.Method.CREATE_PERMISSION:
            peer = msg.get(stun.Attr.XOR_PEER_ADDRESS)
            self.permissions[remote].add(peer[0])
            self._ok(msg, remote, ())
        elif msg.method == stun.Method.CHANNEL_BIND:
            peer, number = msg.get(stun.Attr.XOR_PEER_ADDRESS), msg.get(stun.Attr.CHANNEL_NUMBER)
            self.channels[remote][number] = peer
            self.permissions[remote].add(peer[0])
            self._ok(msg, remote, ())

    # ------------------------------------------------------------------------------------------ relaying

    def _relay_out(self, client: Address, peer: Address, payload: bytes) -> None:
        if peer[0] not in self.permissions.get(client, set()):
            return
        self.relayed_datagrams += 1
        self._out.append(Transmit(payload, self.allocations[client], peer))

    def _from_peer(self, data: bytes, relayed: Address, peer: Address) -> None:
        client = self._client_of.get(relayed)
        if client is None or peer[0] not in self.permissions[client]:
            return
        self.relayed_datagrams += 1
        for number, bound in self.channels[client].items():
            if bound == peer:
                self._out.append(Transmit(stun.encode_channel_data(number, data), self.address, client))
                return
        msg = stun.StunMessage(stun.Method.DATA, stun.MessageClass.INDICATION, b"\x00" * 12,
                               ((stun.Attr.XOR_PEER_ADDRESS, peer), (stun.Attr.DATA, data)))
        self._out.append(Transmit(stun.encode(msg), self.address, client))

    def _ok(self, msg: stun.StunMessage, remote: Address, attributes: tuple) -> None:  # type: ignore[type-arg]
        reply = stun.StunMessage(msg.method, stun.MessageClass.SUCCESS, msg.transaction_id, attributes)
        self._out.append(Transmit(stun.encode(reply, integrity_key=self.key, fingerprint=True), self.address, remote))

    def _error(self, msg: stun.StunMessage, remote: Address, code: int, reason: str,
               extra: tuple = ()) -> None:  # type: ignore[type-arg]
        reply = stun.StunMessage(msg.method, stun.MessageClass.ERROR, msg.transaction_id,
                                 ((stun.Attr.ERROR_CODE, stun.ErrorCode(code, reason)), *extra))
        self._out.append(Transmit(stun.encode(reply, fingerprint=True), self.address, remote))
