"""tunnel_io.roaming.AddressWatch on the reference reactor with real UDP sockets: what it binds, closes and tells
the Peer when the machine's addresses change (the interface list is the one input a test cannot change for real
without namespaces; tests/wan/test_roaming.py does that with real processes)."""

from __future__ import annotations

from typing import Any

from tunnel_io import bind_udp, local_address
from tunnel_io.driver import PeerDriver
from tunnel_io.roaming import ERROR_SPACING, INTERVAL, AddressWatch
from tunnel_io.testing import SelectReactor


class Machine:
    """The least a PeerDriver drives: nothing to send, no timer; it records what the watch tells a Peer."""

    ready = True
    closed = False

    def __init__(self) -> None:
        self.changes: list[tuple[list[Any], list[str]]] = []

    def receive_datagram(self, data: bytes, local: Any, remote: Any, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[Any]:
        return []

    def next_event(self) -> None:
        return None

    def get_timer(self) -> None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def local_addresses_changed(self, added: list[Any], removed: list[str], now: float) -> None:
        self.changes.append((added, removed))


def test_a_new_address_gets_a_socket_a_vanished_one_loses_it_and_a_second_interface_comes_back() -> None:
    reactor = SelectReactor()
    interfaces = [("eth0", ["127.0.0.2"]), ("wlan0", ["127.0.0.3"])]
    machine = Machine()
    sockets = {local_address(s): s for s in (bind_udp("127.0.0.2"), bind_udp("127.0.0.3"))}
    driver = PeerDriver(reactor, machine, sockets, lambda ev: None)
    kept = next(a for a in sockets if a[0] == "127.0.0.2")
    try:
        watch = AddressWatch(reactor, driver, machine, ("eth0", "wlan0"), interfaces=lambda: interfaces)
        driver.keep_only(kept)  # after nomination, as the runner does
        watch.check()
        assert machine.changes == []  # nothing changed: nothing bound, nothing said
        # eth0 moves from .2 to .4: .2's socket is closed, .4 gets one, and wlan0's .3 (closed after nomination)
        # gets a socket again - it may be the way out now.
        interfaces[0] = ("eth0", ["127.0.0.4"])
        assert reactor.run_until(lambda: bool(machine.changes), INTERVAL * 2)  # the periodic look
        added, removed = machine.changes[0]
        assert removed == ["127.0.0.2"]
        assert sorted(a[0] for a in added) == ["127.0.0.3", "127.0.0.4"]
        assert sorted(driver.sockets) == sorted(added)
        assert kept not in driver.sockets
        for addr in added:  # real sockets, bound where the watch said
            assert local_address(driver.sockets[addr]) == addr
        # A send error makes it look soon (at most every ERROR_SPACING), not at the next tick.
        interfaces[1] = ("wlan0", [])
        watch.check_soon()
        assert reactor.run_until(lambda: len(machine.changes) == 2, ERROR_SPACING * 2)
        assert machine.changes[1] == ([], ["127.0.0.3"])
        watch.close()
        assert driver.on_send_error is None
    finally:
        driver.close()
        reactor.close()
