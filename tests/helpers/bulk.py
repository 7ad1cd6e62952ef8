"""Bulk QUIC transfers over the in-memory network's bottleneck links, in virtual time (issue 13's congestion tests).

Two real ``TunnelQuicConnection`` s with the tunnel's QUIC configuration, bound as machines on a
``tunnel_core.testing.Network``; the client keeps a stream topped up, the server consumes everything at once (an
infinitely fast application), so the only limit is the path and the congestion controller. Every run is bounded
in virtual seconds and in the network's step count.
"""

from __future__ import annotations

import math
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.packet import pull_quic_header
from tests.test_quic_pair import cached_identity

from tunnel_core.quic import TunnelQuicConnection, make_configuration
from tunnel_core.testing import Link, Network
from tunnel_core.types import Address, Transmit

#: How much the sender keeps queued in its stream (enough to never run dry at 100 Mbit/s between flushes).
TOPUP = 4 * 1024 * 1024
CHUNK = 256 * 1024
MBIT = 1_000_000


class QuicMachine:
    """A ``TunnelQuicConnection`` as a network machine; the server side is created by its first datagram."""

    def __init__(self, *, local: Address, remote: Address, is_client: bool, congestion: str, packet_size: int,
                 pmtu_ceiling: int | None, ack_every: int | None, bulk: bool) -> None:
        self.local = local
        self.remote = remote
        self.bulk = bulk
        self.received = 0
        #: (virtual time, bytes received so far) after every delivery, for throughput over a window
        self.progress: list[tuple[float, int]] = []
        self.closed = False
        identity = cached_identity(0)
        extra: dict[str, Any] = {"pmtu_ceiling": pmtu_ceiling}
        if ack_every is not None:
            extra["ack_every"] = ack_every
        self._kwargs: dict[str, Any] = dict(
            configuration=make_configuration(is_client=is_client, identity=None if is_client else identity,
                                             packet_size=packet_size, congestion_control=congestion),
            expected_peer_fingerprint=identity.fingerprint if is_client else None,
            **extra,
        )
        self.conn: TunnelQuicConnection | None = None
        self._stream: int | None = None
        #: Something happened to the connection (start, a datagram, a timer) since it was last asked for datagrams.
        #: The network asks every machine after every delivery; a connection nothing happened to has nothing new to
        #: send (what it waits for is in get_timer), so only a touched one is asked - a real event loop does the
        #: same, and the bulk runs take a third of the time.
        self._touched = True
        if is_client:
            self.conn = TunnelQuicConnection(**self._kwargs)

    def start(self, now: float) -> None:
        assert self.conn is not None
        self.conn.connect(self.remote, now)
        self._touched = True

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if self.conn is None:
            odcid = pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid
            self.conn = TunnelQuicConnection(original_destination_connection_id=odcid, **self._kwargs)
        self.conn.receive_datagram(data, remote, now)
        self._touched = True
        self._drain(now)

    def _drain(self, now: float) -> None:
        assert self.conn is not None
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, qe.StreamDataReceived):
                self.received += len(event.data)
                self.conn.consume(event.stream_id, len(event.data))
                self.progress.append((now, self.received))
            elif isinstance(event, qe.ConnectionTerminated):
                self.closed = True

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        conn = self.conn
        if conn is None or not self._touched:
            return []
        self._touched = False
        if self.bulk and conn.peer_verified:
            if self._stream is None:
                self._stream = conn.get_next_available_stream_id()
            while conn.send_buffer_size(self._stream) < TOPUP:
                conn.send_stream_data(self._stream, bytes(CHUNK))
        out = [Transmit(data, self.local, addr) for data, addr in conn.datagrams_to_send(now)]
        self._drain(now)
        return out

    #: Like a real event loop's wake-ups (0 = exact, as virtual time): a timer fires at the next multiple of
    #: ``wake_granularity`` (asyncio's epoll rounds every wait up to whole milliseconds), ``wake_delay`` later still
    #: (a busy host). tests/test_congestion.py sets them on a sender.
    wake_granularity = 0.0
    wake_delay = 0.0

    def get_timer(self) -> float | None:
        timer = None if self.conn is None else self.conn.get_timer()
        if timer is None or not (self.wake_granularity or self.wake_delay):
            return timer
        if self.wake_granularity:
            timer = math.ceil(timer / self.wake_granularity - 1e-9) * self.wake_granularity
        return timer + self.wake_delay

    def handle_timer(self, now: float) -> None:
        if self.conn is not None:
            self.conn.handle_timer(now)
            self._touched = True
            self._drain(now)

    def bytes_between(self, start: float, end: float) -> int:
        """Application bytes received in [start, end)."""
        before = after = 0
        for when, total in self.progress:
            if when < start:
                before = total
            if when < end:
                after = total
        return after - before


class Flow:
    """One bulk transfer: a client host sending to a server host through links of a shared network."""

    def __init__(self, sender: QuicMachine, receiver: QuicMachine) -> None:
        self.sender = sender
        self.receiver = receiver

    def goodput(self, start: float, end: float) -> float:
        """Application bits per second delivered in [start, end)."""
        return self.receiver.bytes_between(start, end) * 8 / (end - start)

    @property
    def conn(self) -> TunnelQuicConnection:
        assert self.sender.conn is not None
        return self.sender.conn


def add_flow(network: Network, index: int, *, forward: Link, backward: Link, congestion: str,
             packet_size: int = 1350, pmtu_ceiling: int | None = None, ack_every: int | None = None) -> Flow:
    """Hosts 10.0.<index>.1 (sender) and 10.1.<index>.1 (receiver); data goes through ``forward``, ACKs through
    ``backward`` (pass the same Link objects to several flows to make them share a bottleneck)."""
    a = network.add_host(f"10.0.{index}.1")
    b = network.add_host(f"10.1.{index}.1")
    a_addr, b_addr = (a.ip, 4433), (b.ip, 4433)
    network.add_link(a.ip, b.ip, forward)
    network.add_link(b.ip, a.ip, backward)
    sender = QuicMachine(local=a_addr, remote=b_addr, is_client=True, congestion=congestion,
                         packet_size=packet_size, pmtu_ceiling=pmtu_ceiling, ack_every=ack_every, bulk=True)
    receiver = QuicMachine(local=b_addr, remote=a_addr, is_client=False, congestion=congestion,
                           packet_size=packet_size, pmtu_ceiling=pmtu_ceiling, ack_every=ack_every, bulk=False)
    network.bind(sender, a_addr)
    network.bind(receiver, b_addr)
    return Flow(sender, receiver)


def run_for(network: Network, seconds: float) -> None:
    """Advance the network by ``seconds`` of virtual time (bounded by the network's step limit)."""
    network.run_until(lambda: False, network.clock.now + seconds)
