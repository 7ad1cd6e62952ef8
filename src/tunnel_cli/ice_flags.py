"""The ICE flags of the ICE modes (manual and nostr): defined once, merged once with a mode's config section.

Both ICE modes take the same STUN/TURN/host-candidate/packet-size flags, so they are added to a parser and turned
into :class:`~tunnel_core.options.IceOptions` here, not once per mode.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from tunnel_cli import checks, precedence, turn_settings
from tunnel_cli.parser import given
from tunnel_core.options import CONGESTION_CONTROLLERS, DEFAULT_CONGESTION, UDP_OVER, IceOptions


def add_ice_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stun-server", metavar="HOST:PORT", action="append", default=[],
        help="STUN server for the server-reflexive candidate (repeatable; replaces the config list)",
    )
    parser.add_argument(
        "--no-stun", action="store_true",
        help="host candidates only: no STUN traffic at all (LAN or offline use)",
    )
    parser.add_argument(
        "--host-candidate", metavar="IP|IFACE", action="append", default=[],
        help="offer only this local address or interface as host candidate (repeatable); "
        "default: every non-loopback interface, loopback only when there is nothing else",
    )
    parser.add_argument(
        "--turn-server", metavar="turn:HOST:PORT", action="append", default=[],
        help="TURN server for relay candidates (repeatable; replaces the config list); needs --turn-user and "
        "--turn-password or --turn-password-file",
    )
    parser.add_argument("--turn-user", metavar="USER", help="TURN long-term credential user name")
    parser.add_argument(
        "--turn-password", metavar="PASSWORD",
        help="TURN password (visible to other local users in the process list: prefer --turn-password-file)",
    )
    parser.add_argument(
        "--turn-password-file", metavar="PATH", help="read the TURN password from the first line of this file",
    )
    parser.add_argument(
        "--packet-size", metavar="N",
        help=f"QUIC datagram size in bytes, {checks.PACKET_SIZE_MIN}..{checks.PACKET_SIZE_MAX} "
        "(default: large on loopback, 1350 elsewhere)",
    )
    parser.add_argument(  # issue 13; docs/congestion.md
        "--congestion", choices=CONGESTION_CONTROLLERS,
        help=f"QUIC congestion controller (default: {DEFAULT_CONGESTION}; bbr tolerates random loss)",
    )
    add_udp_over_arg(parser)


def add_udp_over_arg(parser: argparse.ArgumentParser) -> None:
    """``--udp-over`` (issue 14; docs/datagrams.md), in every mode."""
    parser.add_argument(
        "--udp-over", choices=UDP_OVER,
        help="how UDP crosses the tunnel: datagrams (default; QUIC datagrams when the peer supports them, else a "
        "stream) or stream (always the reliable stream, as upstream; for paths that drop QUIC datagrams)",
    )


def ice_options(
    namespace: argparse.Namespace, section: turn_settings.IceSection, interfaces: Callable[[], Iterable[str]] | None
) -> IceOptions:
    cli_stun: list[str] = getattr(namespace, "stun_server", [])
    no_stun: bool = getattr(namespace, "no_stun", False)
    stun = precedence.resolve_stun_servers(no_stun=no_stun, cli=cli_stun, config=section.stun_servers)
    for server in cli_stun:
        checks.check_stun_server(server, "--stun-server")
    cli_hosts = [checks.check_host_candidate(host, "--host-candidate", interfaces)
                 for host in getattr(namespace, "host_candidate", [])]
    packet_text: str | None = getattr(namespace, "packet_size", None)
    packet_size = checks.parse_cli_packet_size(packet_text) if packet_text is not None else section.packet_size
    cli_turn = [checks.check_turn_server(server, "--turn-server") for server in getattr(namespace, "turn_server", [])]
    turn_servers = precedence.cli_or_config(cli_turn, section.turn_servers)
    turn_user, turn_password = turn_settings.resolve_turn_credentials(
        servers=turn_servers,
        cli_user=given(getattr(namespace, "turn_user", None)),
        cli_password=getattr(namespace, "turn_password", None),
        cli_password_file=given(getattr(namespace, "turn_password_file", None)),
        section=section,
    )
    return IceOptions(
        stun_servers=stun,
        host_candidates=precedence.cli_or_config(cli_hosts, section.host_candidates),
        packet_size=packet_size,
        turn_servers=turn_servers,
        turn_user=turn_user,
        turn_password=turn_password,
        congestion=getattr(namespace, "congestion", None) or section.congestion,
        udp_over=getattr(namespace, "udp_over", None) or section.udp_over,
    )

