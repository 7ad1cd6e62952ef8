"""Binding an iroh endpoint from validated options, dialing, and watching the connection's path.

This is the only module that knows which preset, relay mode and address form the binding wants; everything
else talks in our own terms (32-byte ids, ``ip:port`` strings, relay URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from tunnel_core.iroh_session import PathReporter, PathView
from tunnel_core.iroh_session.options import IrohNetwork
from tunnel_core.options import ExitCode, TunnelError
from tunnel_iroh import ffi

log = logging.getLogger("tunnel_iroh")

#: Upstream's RELAY_CONNECT_TIMEOUT and dial timeout.
ONLINE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
#: Where a --relay-only endpoint binds its UDP socket unless --bind-addr says otherwise.
RELAY_ONLY_BIND = "127.0.0.1:0"


def _relay_mode(f: Any, network: IrohNetwork, relay_urls: Sequence[str]) -> Any:
    if network.relays_disabled:
        return f.RelayMode.disabled()
    if not relay_urls:
        return None  # the preset's default: n0's public relays
    relay_map = f.RelayMap.empty()
    for url in relay_urls:
        # quic_port=None: no QUIC address discovery, which self-hosted (and our Python) relays do not serve.
        # auth_token: the binding sends it as ``Authorization: Bearer <token>`` on the relay upgrade, as upstream.
        relay_map.insert(f.RelayConfig(url=url, quic_port=None, auth_token=network.relay_auth_token))
    return f.RelayMode.custom(relay_map)


async def bind_endpoint(
    network: IrohNetwork, *, secret_key: bytes | None, alpns: Sequence[bytes], relay_urls: Sequence[str] | None = None,
    online: bool = True,
) -> Any:
    """Bind an endpoint; ``relay_urls`` overrides ``network.relay_urls`` (the SOCKS5 bridge rewrites them). With
    ``online`` (the start) wait for its relay connection; a reconnect's fresh endpoint does not: its first dial
    names the relay, which connects it."""
    f = ffi.load()
    f.uniffi_set_event_loop(asyncio.get_running_loop())
    urls = tuple(network.relay_urls if relay_urls is None else relay_urls)
    preset = f.preset_n0() if network.discovery and not network.relay_only else f.preset_minimal()
    kwargs: dict[str, Any] = {"preset": preset, "alpns": list(alpns)}
    if secret_key is not None:
        kwargs["secret_key"] = secret_key
    mode = _relay_mode(f, network, urls)
    if mode is not None:
        kwargs["relay_mode"] = mode
    if network.bind_addr is not None:
        kwargs["bind_addr"] = network.bind_addr
    elif network.relay_only:
        # The binding has no clear_ip_transports (upstream's relay-only switch); a UDP socket bound to loopback
        # cannot reach another host, so every path to a remote peer goes through the relay (docs/iroh.md).
        kwargs["bind_addr"] = RELAY_ONLY_BIND
    try:
        endpoint = await f.Endpoint.bind(f.EndpointOptions(**kwargs))
    except f.IrohError as exc:
        raise TunnelError(f"Failed to create iroh endpoint: {ffi.error_text(exc)}", ExitCode.GENERAL) from None
    if online and urls and not network.relays_disabled:
        try:
            await asyncio.wait_for(endpoint.online(), ONLINE_TIMEOUT)
        except TimeoutError:
            await endpoint.close()
            raise TunnelError(
                f"Endpoint failed to come online after {ONLINE_TIMEOUT:.0f}s - check relay server connectivity",
                ExitCode.CONNECT_FAILED,
            ) from None
    return endpoint


def endpoint_id_bytes(endpoint_or_id: Any) -> bytes:
    """Our id form (32 raw bytes) from an Endpoint or an EndpointId."""
    value = endpoint_or_id.id() if hasattr(endpoint_or_id, "id") and callable(endpoint_or_id.id) else endpoint_or_id
    return bytes(value.to_bytes())


def direct_addresses(endpoint: Any) -> list[str]:
    """The IPv4/IPv6 ``ip:port`` sockets the endpoint listens on (for logs and for clients' --server-addr)."""
    return [a for a in endpoint.bound_sockets() if not a.startswith("[::]") and not a.startswith("0.0.0.0")] or list(
        endpoint.bound_sockets()
    )


async def connect(
    endpoint: Any, server_id: bytes, *, alpn: bytes, relay_urls: Sequence[str], server_addrs: Sequence[str],
    timeout: float = CONNECT_TIMEOUT,
) -> Any:
    """Dial the server by id, giving iroh every hint we have (first relay URL and all direct addresses)."""
    f = ffi.load()
    relay = relay_urls[0] if relay_urls else None
    addr = f.EndpointAddr(f.EndpointId.from_bytes(server_id), relay, list(server_addrs))
    try:
        return await asyncio.wait_for(endpoint.connect(addr, alpn), timeout)
    except TimeoutError:
        raise TunnelError(f"Connection timed out after {timeout:g}s", ExitCode.CONNECT_FAILED) from None
    except f.IrohError as exc:
        raise TunnelError(f"Failed to connect to server: {ffi.error_text(exc)}", ExitCode.CONNECT_FAILED) from None


def path_views(conn: Any) -> list[PathView]:
    views = []
    for snap in conn.paths():
        views.append(PathView(remote=str(snap.remote_addr), is_relay=bool(snap.is_relay),
                              selected=bool(snap.is_selected), rtt_ms=float(snap.rtt_ms)))
    return views


class PathWatch:
    """Reports the selected path at connect and on every change (watch_paths), with a slow poll as a net
    under it in case the binding's callback stops firing."""

    POLL_INTERVAL = 5.0

    def __init__(self, conn: Any, prefix: str = "", emit: Callable[[str], None] | None = None) -> None:
        self._conn = conn
        self._prefix = prefix
        self._emit = emit or log.info
        self._reporter = PathReporter()
        self._handle: Any = None
        self._task: asyncio.Task[None] | None = None

    def _report(self, views: list[PathView]) -> None:
        line = self._reporter.update(views)
        if line is not None:
            self._emit(f"{self._prefix}{line}")

    def start(self) -> None:
        f = ffi.load()
        watch = self

        class _Callback(f.PathChangeCallback):  # type: ignore[misc,name-defined]
            async def on_change(self, paths: list[Any]) -> None:
                watch._report([PathView(remote=str(p.remote_addr), is_relay=bool(p.is_relay),
                                        selected=bool(p.is_selected), rtt_ms=float(p.rtt_ms)) for p in paths])

        self._report(path_views(self._conn))
        with contextlib.suppress(Exception):
            self._handle = self._conn.watch_paths(_Callback())
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_INTERVAL)
            try:
                self._report(path_views(self._conn))
            except Exception:
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._handle is not None:
            with contextlib.suppress(Exception):
                await self._handle.stop()
