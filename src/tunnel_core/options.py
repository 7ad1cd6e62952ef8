"""Run options shared by the CLI and every runtime adapter, plus the documented exit codes.

These are plain values (already validated by the CLI layer) so that the asyncio, trio and gevent adapters run
exactly the same tunnel from the same description, and embedding programs can build them without argparse.
"""

from __future__ import annotations

import enum

import attrs


class ExitCode(enum.IntEnum):
    """Process exit codes (upstream reference 1.4); documented in README.md."""

    OK = 0
    GENERAL = 1
    USAGE = 2  # usage or configuration error
    AUTH = 3  # authentication or authorisation refused
    CONNECT_FAILED = 10  # the tunnel never came up
    CONNECTION_LOST = 11  # the tunnel was up and then died


#: ``--reconnect-timeout`` default (tunnel_core.reconnect): long enough for a laptop to change networks or a server
#: to restart; 0 exits at once when the tunnel is lost, as before.
DEFAULT_RECONNECT_TIMEOUT = 300.0


class TunnelError(Exception):
    """An error meant for the user: one line on stderr and a documented exit code, never a traceback."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.GENERAL) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


#: Default STUN servers of upstream E3 (reference 4.6). Tests always override them (no internet here).
DEFAULT_STUN_SERVERS: tuple[str, ...] = (
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
)


#: QUIC congestion controllers of the ICE modes (tunnel_core.quic.bbr and aioquic's two), and the default, chosen
#: from the WAN lab (issue 13; docs/congestion.md, docs/performance.md "Session 5"): bbr moves as much or more on
#: clean paths (broadband 83 vs 74 Mbit/s, lan equal), 25x more at 1 % loss (wifi 59.5 vs 2.4), and shares a deep
#: buffer with a CUBIC TCP flow (54/46 and 43/57 %). Here, not in tunnel_core.quic, so the CLI can validate
#: ``--congestion`` without importing aioquic.
CONGESTION_CONTROLLERS = ("bbr", "cubic", "reno")
DEFAULT_CONGESTION = "bbr"

#: How UDP payloads cross the tunnel (issue 14; docs/datagrams.md): "datagrams" (the default) uses QUIC datagrams when
#: the peer supports them too and the u16-framed stream otherwise; "stream" never offers datagrams, so this end
#: behaves exactly like upstream and older versions of ours (for paths that drop QUIC DATAGRAM frames).
UDP_OVER = ("datagrams", "stream")


@attrs.frozen
class IceOptions:
    """What both roles of the ICE modes share."""

    #: "host:port" STUN servers; empty means host candidates only (--no-stun).
    stun_servers: tuple[str, ...] = ()
    #: Restrict host candidates to these IP literals or interface names; empty means every usable interface
    #: (loopback is used only when nothing else exists, so a bare container still works).
    host_candidates: tuple[str, ...] = ()
    #: QUIC max datagram size; None picks per path (large on loopback, 1350 elsewhere, raised by path MTU discovery).
    packet_size: int | None = None
    #: QUIC congestion controller ("bbr", "cubic", "reno"); None means tunnel_core.quic.config.DEFAULT_CONGESTION.
    congestion: str | None = None
    #: "datagrams" or "stream" (UDP_OVER); None means "datagrams".
    udp_over: str | None = None
    #: "turn:HOST:PORT" servers to allocate relay candidates on (RFC 8656, UDP); empty means no relay candidates.
    turn_servers: tuple[str, ...] = ()
    #: long-term credentials for every TURN server; the password never appears in a repr or a log line
    turn_user: str | None = None
    turn_password: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ManualServerOptions:
    """`tunnel server manual`: serve one session whose source the client names in its offer."""

    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    ice: IceOptions = IceOptions()
    #: Reverse forwards (docs/forwards.md): the exact ip:port addresses a client may ask this server to listen on.
    allow_listen: tuple[str, ...] = ()
    #: How long a session whose path went silent is kept for its client to come back (docs/reconnect.md); 0 ends
    #: it when ICE consent is lost, as before.
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT


@attrs.frozen
class Forward:
    """One forward of a client (docs/forwards.md): listen at ``listen`` (host:port) and carry what arrives to
    ``source`` (tcp:// or udp:// host:port) on the server's side."""

    listen: str
    source: str


@attrs.frozen
class SocksListen:
    """A dynamic forward (docs/forwards.md): a local SOCKS5 listener at ``listen`` (host:port), optionally asking
    its applications for a username and password (RFC 1929)."""

    listen: str
    credentials: tuple[str, str] | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ManualClientOptions:
    """`tunnel client manual`: ask the server for ``source`` and expose it locally at ``target``; every entry of
    ``extra_forwards`` is one more forward over the same connection (the server must support it)."""

    source: str | None
    target: str | None
    ice: IceOptions = IceOptions()
    extra_forwards: tuple[Forward, ...] = ()
    #: A dynamic (SOCKS5) forward, last among the local forwards.
    socks5: SocksListen | None = None
    #: Reverse forwards: ``listen`` on the server's side, ``source`` the client-side tcp:// target.
    reverse: tuple[Forward, ...] = ()
    #: How long to hold on and look for a path again when the server stops answering (docs/reconnect.md); 0 exits
    #: with 11 when ICE consent is lost, as before.
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    #: When the held tunnel stays lost, ask for a fresh OFFER/ANSWER exchange - only ever when stdin is a terminal
    #: (tunnel_core.repaste); False keeps holding until the timeout (the CLI's choice with --config-stdin).
    fresh_paste: bool = True
