"""SOCKS5 proxy settings for ``.onion`` relays (reference 6.5): validation and the CONNECT request bytes.

Validation is strict because a mistake leaks: ``socks5://`` makes the client resolve names itself, which for
an onion name fails and for anything else tells the local resolver where we go; onion relays therefore need
``socks5h://`` (proxy-side resolution).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from tunnel_core.errors import RemoteProtocolError

DEFAULT_SOCKS_PORT = 1080


class ProxyError(RemoteProtocolError):
    """A --socks5-proxy value or a relay URL cannot be used as given."""


@attrs.frozen
class ProxyAddress:
    scheme: str
    host: str
    port: int


def parse_socks5_proxy(text: str) -> ProxyAddress:
    """``socks5://host:port``, ``socks5h://host:port`` or bare ``host:port`` (port 1080 when a URL omits it)."""
    value = text.strip()
    if "://" not in value:
        value = f"socks5h://{value}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ProxyError(f"Invalid --socks5-proxy '{text}': {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("socks5", "socks5h"):
        raise ProxyError(f"Invalid --socks5-proxy '{text}': scheme must be socks5 or socks5h")
    if not parts.hostname:
        raise ProxyError(f"Invalid --socks5-proxy '{text}': missing host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError(f"Invalid --socks5-proxy '{text}': must not include a path")
    return ProxyAddress(scheme=scheme, host=parts.hostname, port=port or DEFAULT_SOCKS_PORT)


def relay_address(relay_url: str) -> tuple[str, int] | None:
    """``(host, port)`` a relay URL's client connects to (port 443 for https/wss, 80 else); None when unreadable."""
    try:
        parts = urlsplit(relay_url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    default = 443 if parts.scheme.lower() in ("https", "wss") else 80
    return parts.hostname.lower(), port or default


def onion_target(relay_url: str) -> tuple[str, int] | None:
    """``(host, port)`` when the relay URL's host ends with ``.onion``, else None."""
    address = relay_address(relay_url)
    return address if address is not None and address[0].endswith(".onion") else None


def check_proxy_for_relays(proxy: str | None, relay_urls: tuple[str, ...]) -> None:
    """Onion relays need a proxy, and that proxy must resolve names itself (socks5h)."""
    onions = [url for url in relay_urls if onion_target(url) is not None]
    if not onions:
        return
    if proxy is None:
        raise ProxyError(
            "SOCKS5 proxy required for .onion relay URLs. Use --socks5-proxy socks5h://127.0.0.1:9050"
        )
    if parse_socks5_proxy(proxy).scheme != "socks5h":
        raise ProxyError(".onion relay URLs require a socks5h:// proxy (the proxy must resolve the onion name)")


def socks5_connect_request(host: str, port: int) -> bytes:
    """SOCKS5 CONNECT by domain name (RFC 1928 ATYP 3), so the proxy does the resolution."""
    name = host.encode("idna") if not host.isascii() else host.encode("ascii")
    if not 0 < len(name) <= 255:
        raise ProxyError(f"host name too long for SOCKS5: {host}")
    if not 0 < port <= 0xFFFF:
        raise ProxyError(f"invalid port for SOCKS5: {port}")
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
