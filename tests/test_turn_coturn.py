"""The TURN client against a real coturn on loopback: allocate, permissions, channels, data both ways.

Why a real server: our codec and state machine could agree with each other and still not with the TURN servers
people run; coturn is the reference most deployments use.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from tests.helpers.coturn import run_coturn

from tunnel_core.turn import Allocated, AllocationFailed, DataReceived, TurnClient, TurnServer, TurnState
from tunnel_core.types import Transmit

DEADLINE = 5.0


class Endpoint:
    """One loopback socket driven by one TurnClient, pumped by hand (bounded in time)."""

    def __init__(self, server: TurnServer) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.client = TurnClient(server=server, base=self.sock.getsockname(), rng=os.urandom)
        self.events: list[object] = []

    def flush(self, extra: list[Transmit] | None = None) -> None:
        for t in [*(extra or []), *self.client.datagrams_to_send(time.monotonic())]:
            assert t.local == self.client.base
            self.sock.sendto(t.data, t.remote)

    def pump(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data, remote = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            if remote == self.client.server:
                self.client.receive_datagram(data, now)
        timer = self.client.get_timer()
        if timer is not None and timer <= now:
            self.client.handle_timer(now)
        while (ev := self.client.next_event()) is not None:
            self.events.append(ev)
        self.flush()

    def close(self) -> None:
        self.sock.close()


def _until(endpoints: list[Endpoint], predicate) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, [e.events for e in endpoints]
        for e in endpoints:
            e.pump()
        time.sleep(0.005)


def test_allocate_and_relay_data_both_ways(tmp_path: Path) -> None:
    with run_coturn(tmp_path) as turn:
        server = TurnServer(turn.address, turn.user, turn.password)
        a, b = Endpoint(server), Endpoint(server)
        try:
            for e in (a, b):
                e.client.allocate(time.monotonic())
                e.flush()
            _until([a, b], lambda: a.client.state is TurnState.ALLOCATED and b.client.state is TurnState.ALLOCATED)
            alloc_a = next(e for e in a.events if isinstance(e, Allocated))
            assert alloc_a.relayed[0] == "127.0.0.1"
            assert turn.min_relay_port <= alloc_a.relayed[1] <= turn.max_relay_port
            assert alloc_a.mapped == a.client.base
            ra, rb = a.client.relayed, b.client.relayed
            assert ra is not None and rb is not None
            b.client.permit(ra[0], time.monotonic())
            b.flush()
            # First datagrams go as Send indications (held until the permission exists), later ones as ChannelData.
            for i in range(40):
                out_a = a.client.send(rb, b"a->b %d" % i, time.monotonic())
                out_b = b.client.send(ra, b"b->a %d" % i, time.monotonic())
                a.flush([out_a] if out_a else None)
                b.flush([out_b] if out_b else None)
                for e in (a, b):
                    e.pump()
                time.sleep(0.01)
            def both_done() -> bool:
                return (any(isinstance(e, DataReceived) and e.data == b"a->b 39" for e in b.events)
                        and any(isinstance(e, DataReceived) and e.data == b"b->a 39" for e in a.events))

            _until([a, b], both_done)
            got_b = [e for e in b.events if isinstance(e, DataReceived)]
            got_a = [e for e in a.events if isinstance(e, DataReceived)]
            assert {e.peer for e in got_b} == {ra}
            assert {e.peer for e in got_a} == {rb}
            assert b"a->b 39" in {e.data for e in got_b}
            assert b"b->a 39" in {e.data for e in got_a}
            # By the end the channel is bound and used.
            wrapped = a.client.send(rb, b"x", time.monotonic())
            assert wrapped is not None and 0x40 <= wrapped.data[0] <= 0x4F
        finally:
            a.close()
            b.close()


def test_wrong_password_fails_the_allocation(tmp_path: Path) -> None:
    with run_coturn(tmp_path) as turn:
        e = Endpoint(TurnServer(turn.address, turn.user, "wrong"))
        try:
            e.client.allocate(time.monotonic())
            e.flush()
            _until([e], lambda: e.client.state is TurnState.FAILED)
            failed = [ev for ev in e.events if isinstance(ev, AllocationFailed)]
            assert failed and "401" in failed[0].reason
        finally:
            e.close()
