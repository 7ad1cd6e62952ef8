"""CPU cost of the QUIC protocol alone: both ends in one process, no sockets, no event loop, no ICE - only aioquic's
packet building, encryption, decryption, frame handling and ACKs.

* default: one 1-byte round trip through the tunnel. A lower bound for the tunnel's added round-trip latency that no
  adapter work can remove, so ``bench.py`` prints it next to the measured paths (benchmarks/README.md).
* ``--bulk MB``: CPU µs per data packet of a bulk transfer (both ends, ACKs included), the figure that caps one
  tunnel's throughput at realistic packet sizes (issue 13). Bounded: at most MB megabytes, best of 3.

    python benchmarks/quic_cost.py [--rounds N] [--packet-size N] [--bulk MB [--congestion NAME]]
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from aioquic.buffer import Buffer  # noqa: E402
from aioquic.quic import events as qe  # noqa: E402
from aioquic.quic.packet import pull_quic_header  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from tunnel_core.quic import TunnelQuicConnection, make_configuration, make_identity  # noqa: E402
from tunnel_core.quic.config import DEFAULT_PACKET_SIZE  # noqa: E402

PEER = ("peer", 0)  # the constant virtual address tunnel_core.peer gives QUIC
#: What the drivers do between round trips: a 1-byte ping-pong at ~3 kHz leaves ~0.35 ms between packets.
STEP = 0.00035


def _pair(packet_size: int, congestion: str | None = None) -> tuple[TunnelQuicConnection, TunnelQuicConnection, float]:
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    ident = make_identity(ec.generate_private_key(ec.SECP256R1()), not_before=start, not_after=start.replace(year=2034))
    client = TunnelQuicConnection(
        configuration=make_configuration(is_client=True, packet_size=packet_size, congestion_control=congestion),
        expected_peer_fingerprint=ident.fingerprint,
    )
    now = 1000.0
    client.connect(PEER, now)
    server: TunnelQuicConnection | None = None
    for _ in range(50):  # a handshake takes a handful of flights
        moved = 0
        for data, _addr in client.datagrams_to_send(now):
            if server is None:
                odcid = pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid
                server = TunnelQuicConnection(
                    configuration=make_configuration(
                        is_client=False, identity=ident, packet_size=packet_size, congestion_control=congestion
                    ),
                    original_destination_connection_id=odcid,
                )
            server.receive_datagram(data, PEER, now)
            moved += 1
        if server is not None:
            for data, _addr in server.datagrams_to_send(now):
                client.receive_datagram(data, PEER, now)
                moved += 1
        for conn in (client, server):
            while conn is not None and conn.next_event() is not None:
                pass
        if not moved and client.peer_verified:
            break
        now += 0.001
    if server is None or not client.peer_verified:
        raise SystemExit("handshake did not complete")
    return client, server, now


def _hop(src: TunnelQuicConnection, dst: TunnelQuicConnection, stream_id: int, now: float) -> int:
    src.send_stream_data(stream_id, b"x")
    for data, _addr in src.datagrams_to_send(now):
        dst.receive_datagram(data, PEER, now)
    got = 0
    while (ev := dst.next_event()) is not None:
        if isinstance(ev, qe.StreamDataReceived):
            got += len(ev.data)
            dst.consume(ev.stream_id, len(ev.data))
    return got


def round_trip_cost(rounds: int = 3000, packet_size: int = DEFAULT_PACKET_SIZE) -> float:
    """Median-free average: µs of CPU per 1-byte round trip, both ends together, ACK traffic included."""
    client, server, now = _pair(packet_size)
    stream_id = client.get_next_available_stream_id()
    _hop(client, server, stream_id, now)  # opens the stream

    def one(now: float) -> None:
        if _hop(client, server, stream_id, now) != 1 or _hop(server, client, stream_id, now) != 1:
            raise SystemExit("a byte went missing")
        for conn, other in ((client, server), (server, client)):
            timer = conn.get_timer()
            if timer is not None and timer <= now:  # delayed ACKs, as the drivers fire them
                conn.handle_timer(now)
                for data, _addr in conn.datagrams_to_send(now):
                    other.receive_datagram(data, PEER, now)

    for _ in range(200):  # warm up caches and the congestion controller
        now += STEP
        one(now)
    started = time.perf_counter()
    for _ in range(rounds):
        now += STEP
        one(now)
    return (time.perf_counter() - started) / rounds * 1e6


def bulk_cost(megabytes: float, packet_size: int, congestion: str | None) -> tuple[float, int, int]:
    """(CPU µs per data packet, data packets, reverse packets) for moving ``megabytes`` one way over a virtual LAN
    (1 Gbit/s, 1 ms round trip, a tunnel_core.testing.Link each way).

    Driven the way the runtime drivers drive a connection: wake at the next arrival or timer, hand over what
    arrived, fire due timers, then one ``datagrams_to_send`` per connection that had input. The process CPU time of
    the whole loop counts, so the figure is aioquic + our QUIC code per data packet, ACKs on both ends included.
    """
    from tunnel_core.testing import Link

    client, server, now = _pair(packet_size, congestion)
    stream_id = client.get_next_available_stream_id()
    chunk = bytes(256 * 1024)
    forward = Link(rate=1e9, delay=0.0005, queue_bytes=1_250_000)
    backward = Link(rate=1e9, delay=0.0005, queue_bytes=1_250_000)
    pending: list[tuple[float, int, int, bytes]] = []  # (arrival, seq, receiving side: 0 client / 1 server, data)
    seq = received = data_packets = back_packets = 0
    target = int(megabytes * 1_000_000)
    started = time.process_time()
    touched = {0, 1}
    for _ in range(20_000_000):  # bounded; a working build ends long before
        if received >= target:
            break
        while client.send_buffer_size(stream_id) < 4 * 1024 * 1024:
            client.send_stream_data(stream_id, chunk)
        for side in touched:
            conn, link = (client, forward) if side == 0 else (server, backward)
            for data, _addr in conn.datagrams_to_send(now):
                when = link.admit(len(data), now)
                if when is not None:
                    seq += 1
                    heapq.heappush(pending, (when, seq, side ^ 1, data))
                    if side == 0:
                        data_packets += 1
                    else:
                        back_packets += 1
        timers = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
        nxt = min([*timers, pending[0][0]] if pending else timers)
        now = max(now, nxt)
        touched = set()
        while pending and pending[0][0] <= now:
            _when, _seq, dst, data = heapq.heappop(pending)
            (client if dst == 0 else server).receive_datagram(data, PEER, now)
            touched.add(dst)
        for side, conn in ((0, client), (1, server)):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
                touched.add(side)
        while (ev := server.next_event()) is not None:
            if isinstance(ev, qe.StreamDataReceived):
                received += len(ev.data)
                server.consume(ev.stream_id, len(ev.data))
        while client.next_event() is not None:
            pass
    else:
        raise SystemExit("bulk transfer did not finish")
    cpu = time.process_time() - started
    return cpu / max(1, data_packets) * 1e6, data_packets, back_packets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--packet-size", type=int, default=DEFAULT_PACKET_SIZE)
    parser.add_argument("--bulk", type=float, metavar="MB", help="measure a bulk transfer of MB megabytes instead")
    parser.add_argument("--congestion", default=None, help="congestion controller for --bulk (default: ours)")
    args = parser.parse_args(argv)
    if args.bulk is not None:
        runs = [bulk_cost(min(args.bulk, 1000.0), args.packet_size, args.congestion) for _ in range(3)]
        cost, data, back = min(runs)
        print(f"QUIC bulk, {args.packet_size}-byte packets, {args.congestion or 'default'} congestion control "
              f"(both ends, one process, best of 3): {cost:.1f} CPU µs per data packet; "
              f"{back / max(1, data):.3f} reverse packets per data packet")
        return 0
    cost = min(round_trip_cost(args.rounds, args.packet_size) for _ in range(3))
    print(f"QUIC protocol work per 1-byte round trip (both ends, one process, best of 3): {cost:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
