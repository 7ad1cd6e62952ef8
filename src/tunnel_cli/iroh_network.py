"""The network settings of iroh mode: relay URLs, discovery, SOCKS5 proxy and bind address (IrohNetwork)."""

from __future__ import annotations

import argparse
import ipaddress
from typing import TYPE_CHECKING

from tunnel_cli import config as cfg
from tunnel_cli import precedence
from tunnel_cli.iroh_section import IrohSection, section_list, section_str
from tunnel_cli.parser import flag, given

if TYPE_CHECKING:
    from tunnel_core.iroh_session.options import IrohNetwork

DNS_SERVER_UNSUPPORTED = (
    "--dns-server with a URL is not supported: the iroh binding (PyPI iroh) cannot use a custom pkarr/DNS server. "
    "Use --dns-server none (and --server-addr or --relay-url), or omit it for n0's public discovery"
)


def check_ip_port(text: str, flag: str) -> str:
    error = cfg.usage_error(f"Invalid {flag} '{text}'. Expected IP:PORT, e.g. 127.0.0.1:4433 or [::1]:4433")
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 0xFFFF:
        raise error
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise error from None
    return text.strip()


def check_relay_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise cfg.usage_error(f"Invalid relay URL '{url}'. Expected http://host[:port] or https://host[:port]")
    return url.strip()


RELAY_TOKEN_NEEDS_RELAYS = (
    "relay_auth_token requires custom relay_urls; it is not used with the default iroh relays"
)
RELAY_ONLY_NEEDS_RELAYS = (
    "--relay-only requires at least one --relay-url to be specified.\n"
    "The default public relay is rate-limited and cannot be used for relay-only mode."
)


def network_options(
    ns: argparse.Namespace, section: IrohSection, *, protocol: str = "e2", env_relay_token: str | None = None
) -> IrohNetwork:
    """Relays, discovery, proxy and bind address. Under e4, as in upstream v0.6, custom relays switch internet
    discovery off (clients find the server through the relay hint); the relay token goes CLI > env > config."""
    from tunnel_core.iroh_session.options import IrohNetwork
    from tunnel_core.iroh_session.socks import ProxyError, check_proxy_for_relays, parse_socks5_proxy

    cli_relays = [check_relay_url(u) for u in (flag(ns, "relay_url") or [])]
    relays = precedence.cli_or_config(cli_relays, [check_relay_url(u) for u in section_list(section, "relay_urls")])
    relays = tuple(dict.fromkeys(relays))
    no_relay = bool(flag(ns, "no_relay"))
    if no_relay and cli_relays:
        raise cfg.usage_error("Cannot combine --no-relay with --relay-url")
    token = given(flag(ns, "relay_auth_token")) or env_relay_token or section_str(section, "relay_auth_token")
    if token is not None:
        token = token.strip()
        if not relays or no_relay:
            raise cfg.usage_error(RELAY_TOKEN_NEEDS_RELAYS)
        if any(ch.isspace() or ord(ch) < 0x21 or ord(ch) > 0x7E for ch in token):
            raise cfg.usage_error("Invalid relay auth token: printable ASCII without spaces expected")
    relay_only = bool(flag(ns, "relay_only"))
    if relay_only and (not relays or no_relay):
        raise cfg.usage_error(RELAY_ONLY_NEEDS_RELAYS)
    dns = given(flag(ns, "dns_server")) or section_str(section, "dns_server")
    discovery = not (protocol == "e4" and relays)
    if dns is not None:
        if dns.lower() != "none":
            raise cfg.usage_error(DNS_SERVER_UNSUPPORTED)
        discovery = False
    proxy = given(flag(ns, "socks5_proxy")) or section_str(section, "socks5_proxy")
    try:
        if proxy is not None:
            parse_socks5_proxy(proxy)
        check_proxy_for_relays(proxy, () if no_relay else relays)
    except ProxyError as exc:
        raise cfg.usage_error(str(exc)) from None
    bind = given(flag(ns, "bind_addr")) or section_str(section, "bind_addr")
    if bind is not None:
        check_ip_port(bind, "--bind-addr")
    return IrohNetwork(relay_urls=() if no_relay else relays, relays_disabled=no_relay, discovery=discovery,
                       bind_addr=bind, socks5_proxy=proxy, relay_auth_token=token, relay_only=relay_only)
