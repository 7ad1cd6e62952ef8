"""Roaming on the client side of the ICE modes: notice the machine's addresses changing under a running tunnel.

Issue 15 item 3 (docs/reconnect.md). How it notices: the host-candidate choice (``tunnel_core.hostaddr``, the
same rules as at start, so ``--host-candidate IFACE`` follows that interface) is re-evaluated every few seconds
and at once after a send fails with an error that says "this address or network is gone" (``PeerDriver.on_send_error``:
EADDRNOTAVAIL, ENETUNREACH, ...). Listing the interfaces is one getifaddrs() call, cheap at this rate. What
changed is carried out here - sockets on new addresses bound and driven, those on vanished ones closed - and
handed to the Peer (``Peer.local_addresses_changed``), which decides everything else: re-checks from the new
address, the move once one is answered, and the server's QUIC validates it (docs/architecture.md "Paths").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tunnel_core.hostaddr import HostCandidateError, select_host_addresses
from tunnel_core.types import Address
from tunnel_io import bind_udp, list_interfaces, local_address
from tunnel_io.driver import PeerDriver
from tunnel_io.reactor import Reactor, Timer

log = logging.getLogger(__name__)

#: How often the interfaces are looked at while a tunnel runs (one getifaddrs(), a few ms on a busy machine): it
#: finds new addresses; a vanished one usually shows at once through a failed send.
INTERVAL = 3.0
#: At most one look per this long on failed sends (a network that stays unreachable fails every send).
ERROR_SPACING = 0.5


class AddressWatch:
    """Keeps a client's tunnel on the machine's current addresses; ``close()`` when the tunnel goes."""

    def __init__(self, reactor: Reactor, driver: PeerDriver, peer: Any, wanted: Sequence[str],
                 interfaces: Callable[[], Any] = list_interfaces) -> None:
        self.reactor = reactor
        self.driver = driver
        self.peer = peer
        self.wanted = tuple(wanted)
        self._interfaces = interfaces
        #: the IPs the tunnel's sockets were bound on (all of them, also those closed after nomination)
        self.ips: set[str] = {addr[0] for addr in driver.sockets}
        self._timer: Timer | None = None
        self._soon = False
        self._last = -1e18
        self._closed = False
        driver.on_send_error = self.check_soon
        self._arm()

    def _arm(self) -> None:
        if not self._closed:
            self._timer = self.reactor.call_at(self.reactor.time() + INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.check()
        self._arm()

    def check_soon(self) -> None:
        """A send failed in a way that may mean our address is gone: look now (once per loop turn)."""
        if self._soon or self._closed:
            return
        self._soon = True
        wait = self._last + ERROR_SPACING - self.reactor.time()
        if wait > 0:
            self.reactor.call_at(self.reactor.time() + wait, self.check)
        else:
            self.reactor.call_soon(self.check)

    def current(self) -> list[str]:
        try:
            return select_host_addresses(self._interfaces(), self.wanted)
        except HostCandidateError:
            return []  # the interface itself is gone: every address with it

    def check(self) -> None:
        self._soon = False
        if self._closed or not getattr(self.peer, "ready", False) or self.peer.closed:
            return
        self._last = self.reactor.time()
        now_ips = self.current()
        gone = sorted(ip for ip in self.ips if ip not in now_ips)
        new = [ip for ip in now_ips if ip not in self.ips]
        if not gone and not new:
            return
        self.ips = set(now_ips)
        for addr in [a for a in self.driver.sockets if a[0] in gone]:
            self.driver.remove_socket(addr)
        if gone:
            # The addresses that stayed but whose sockets were closed after nomination (a second interface) may be
            # the way out now: they get sockets again.
            live = {a[0] for a in self.driver.sockets}
            new += [ip for ip in now_ips if ip not in live and ip not in new]
        added: list[Address] = []
        for ip in new:
            try:
                sock = bind_udp(ip)
            except OSError as exc:
                log.debug("cannot bind %s for roaming: %s", ip, exc)
                self.ips.discard(ip)  # try again at the next look
                continue
            addr = local_address(sock)
            self.driver.add_socket(addr, sock)
            added.append(addr)
        self.peer.local_addresses_changed(added, gone, self.driver.now())
        self.driver.flush()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.driver.on_send_error == self.check_soon:
            self.driver.on_send_error = None
