"""The iroh-mode argument parser: ``tunnel server|client iroh``, ``tunnel-rs server|client`` and the iroh key
tools, with the flag sets each role takes."""

from __future__ import annotations

import argparse
from typing import Any

from tunnel_cli.forwards import add_client_extra_args, add_server_extra_args
from tunnel_cli.ice_flags import add_udp_over_arg
from tunnel_cli.iroh_options import DEFAULT_MAX_SESSIONS
from tunnel_cli.parser import Parser, VersionAction

ROLE_HELP = {
    "server": "Run as server (accepts connections and forwards to source)",
    "client": "Run as client (connects to server and exposes local port)",
}


def _common(p: argparse.ArgumentParser, *, after_mode: bool) -> None:
    sup = argparse.SUPPRESS if after_mode else None
    p.add_argument("-c", "--config", metavar="FILE", default=sup, help="read settings from this TOML file ([iroh])")
    p.add_argument("--default-config", action="store_true", default=argparse.SUPPRESS if after_mode else False,
                   help="read ~/.config/tunnel-rs/<role>.toml")
    p.add_argument("--config-stdin", action="store_true", default=argparse.SUPPRESS if after_mode else False,
                   help="read a JSON config from stdin (automation; inline keys allowed there only)")


def _network_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret", metavar="B64", help="this endpoint's secret key inline (base64 of 32 bytes)")
    p.add_argument("--secret-file", metavar="PATH", help="file with this endpoint's secret key (generate-iroh-key)")
    p.add_argument("--relay-url", metavar="URL", action="append", default=[],
                   help="relay server (repeatable); default: n0's public relays")
    p.add_argument("--relay-auth-token", metavar="TOKEN",
                   help="bearer token for the custom relay(s) (needs --relay-url); prefer TUNNEL_RS_RELAY_AUTH_TOKEN "
                        "or the config, which keep it out of the process list")
    p.add_argument("--relay-only", action="store_true",
                   help="force all connections through the relay server (needs --relay-url)")
    p.add_argument("--no-relay", action="store_true",
                   help="use no relay at all: direct addresses only (LAN/offline; project extension)")
    p.add_argument("--dns-server", metavar="URL|none",
                   help="'none' disables internet discovery; a custom URL is not supported by the iroh binding")
    p.add_argument("--socks5-proxy", metavar="URL",
                   help="[Experimental] SOCKS5 proxy (Tor) used only for .onion relay URLs, e.g. socks5h://127.0.0.1:9050")
    p.add_argument("--bind-addr", metavar="IP:PORT",
                   help="local UDP address of the iroh endpoint, e.g. 127.0.0.1:0 (project extension)")
    p.add_argument("--protocol", metavar="e2|e4",
                   help="wire protocol: e4 (current tunnel-rs: ALPN mf/4, Ed25519 challenge-response; chosen by "
                        "the key options) or e2 (NodeId allowlist, ALPN multi-forward/1; chosen by --allowed-clients)")
    add_udp_over_arg(p)


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allowed-tcp", metavar="CIDR", action="append", default=[],
                   help="networks clients may reach over TCP (repeatable), e.g. 127.0.0.0/8")
    p.add_argument("--allowed-udp", metavar="CIDR", action="append", default=[],
                   help="networks clients may reach over UDP (repeatable)")
    p.add_argument("--allowed-clients", metavar="NODE_ID", action="append", default=[],
                   help="client EndpointId allowed to connect (repeatable; 64 hex or 52 base32 chars)")
    p.add_argument("--allowed-clients-file", metavar="FILE",
                   help="file of allowed client EndpointIds, one per line, '#' comments allowed")
    p.add_argument("--max-sessions", metavar="N", help=f"concurrent forwarded streams (default {DEFAULT_MAX_SESSIONS})")
    p.add_argument("--authorized-keys-file", metavar="FILE",
                   help="file of client public keys, 'ed25519-pub:<b64url>[ comment]' per line (selects e4)")
    add_server_extra_args(p)
    _network_flags(p)


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--server-node-id", metavar="ID", help="the server's EndpointId")
    p.add_argument("-s", "--source", metavar="URL", help="service on the server's side: tcp://host:port or udp://host:port")
    p.add_argument("-t", "--target", metavar="HOST:PORT", help="local address to listen on, e.g. 127.0.0.1:2222")
    p.add_argument("-L", "--forward", metavar="LISTEN=URL", action="append", default=[],
                   help="one more forward over the same connection (repeatable), e.g. "
                        "127.0.0.1:8080=tcp://127.0.0.1:80 or 127.0.0.1:5353=udp://127.0.0.1:53; see docs/forwards.md")
    add_client_extra_args(p)
    p.add_argument("--server-addr", metavar="IP:PORT", action="append", default=[],
                   help="dial the server directly at this address (repeatable; LAN or offline use)")
    p.add_argument("--private-key-file", metavar="FILE",
                   help="this client's Ed25519 key file ('ed25519-sec:...', see generate-auth-key; selects e4)")
    p.add_argument("--reconnect-timeout", metavar="DURATION",
                   help="when the connection is lost, dial the server again for up to this long, keeping the local "
                   "listener (default 300s; e.g. 90s, 5m; 0 = exit at once; TCP sources)")
    _network_flags(p)


def build_parser(program: Any) -> Parser:
    name = getattr(program, "name", "tunnel")
    iroh_only = name == "tunnel-rs"
    parser = Parser(prog=name, description="iroh mode: identity-addressed tunnels with relay fallback.")
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for role, flags in (("server", _server_flags), ("client", _client_flags)):
        role_parser = commands.add_parser(
            role, help=f"run as {role}" if iroh_only else f"iroh {role}",
            description=ROLE_HELP[role],
        )
        _common(role_parser, after_mode=False)
        if iroh_only:
            flags(role_parser)
        modes = role_parser.add_subparsers(dest="mode", metavar="MODE", required=False, parser_class=Parser)
        mode_parser = modes.add_parser("iroh", help=f"iroh {role}")
        _common(mode_parser, after_mode=True)
        flags(mode_parser)
        if iroh_only:
            for action in mode_parser._actions:
                if action.dest not in ("help", "config", "default_config"):
                    action.default = argparse.SUPPRESS
    gen = commands.add_parser("generate-iroh-key", help="create a secret key file and print its EndpointId")
    gen.add_argument("-o", "--output", metavar="PATH|-", required=True, help="key file to write, or - for stdout")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = commands.add_parser("show-iroh-node-id", help="print the EndpointId of a secret key file")
    show.add_argument("-s", "--secret-file", metavar="PATH", required=True, help="the secret key file")
    server_key = commands.add_parser(
        "generate-server-key", help="generate a server private key for persistent identity",
        description="Without --output the key file goes to stdout and the EndpointId to stderr; with --output the "
        "file is written 0600 and the EndpointId printed to stdout.",
    )
    server_key.add_argument("-o", "--output", metavar="PATH|-", help="where to save the key file (- means stdout)")
    server_key.add_argument("--force", action="store_true", help="overwrite an existing file (needs --output)")
    server_key.add_argument("--json", action="store_true", help="print public and private key as JSON instead")
    server_id = commands.add_parser("show-server-id", help="show the EndpointId of a server private key")
    server_id.add_argument("-s", "--secret-file", metavar="PATH", required=True, help="the private key file")
    server_id.add_argument("--json", action="store_true", help="print the EndpointId as JSON")
    auth = commands.add_parser(
        "generate-auth-key", help="create an Ed25519 client authentication key (flexaccess-keys format)",
        description="Without --output the key file goes to stdout; with --output it is written 0600 and the "
        "authorized-keys entry is printed to stdout.",
    )
    auth.add_argument("comment_arg", nargs="?", metavar="COMMENT", help="comment of the authorized-keys entry")
    auth.add_argument("-o", "--output", metavar="PATH|-", help="private key file to write (0600), - for stdout")
    auth.add_argument("--comment", metavar="TEXT", help="same as COMMENT")
    auth.add_argument("--force", action="store_true", help="overwrite an existing file (needs --output)")
    auth.add_argument("--json", action="store_true", help="print the authorized-key entry and private key as JSON")
    show_auth = commands.add_parser("show-auth-key", help="derive the authorized-keys entry of a private key file")
    show_auth.add_argument("--private-key-file", metavar="PATH", required=True, help="the private key file")
    show_auth.add_argument("-c", "--comment", metavar="TEXT", help="replace the comment stored in the key file")
    show_auth.add_argument("--json", action="store_true", help="print the entry as JSON")
    return parser


