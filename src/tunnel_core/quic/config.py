"""The one place that builds aioquic's ``QuicConfiguration`` for a tunnel.

aioquic marks ``certificate``, ``private_key``, ``verify_mode`` and friends as internal and not stable, so every
touch of them lives here (with tests) and the project pins aioquic 1.7.x. The values follow upstream's ICE modes
(reference 3.3): no ALPN on either side (ALPN on one side only fails both ways), server name "manual", no chain
verification because we pin the certificate's SHA-256 ourselves, 300 s idle timeout, 8 MiB windows.
"""

from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration

from tunnel_core.errors import LocalProtocolError
from tunnel_core.options import CONGESTION_CONTROLLERS as CONGESTION_CONTROLLERS
from tunnel_core.options import DEFAULT_CONGESTION as DEFAULT_CONGESTION
from tunnel_core.quic import bbr
from tunnel_core.quic.identity import QuicIdentity

#: RFC 9221 max_datagram_frame_size we advertise when datagrams are on: any 64 KiB tunnel datagram is welcome.
MAX_DATAGRAM_FRAME_SIZE = 65536 + 16

#: RFC 9000's minimum UDP payload a QUIC path must carry.
MIN_PACKET_SIZE = 1200
#: aioquic 1.7.2 writes some lengths as 2-byte varints, so packets above ~16383 bytes corrupt; stay clear of it.
MAX_PACKET_SIZE = 16000
#: What the Internet carries without fragmentation in practice (aioquic's own default is 1200).
DEFAULT_PACKET_SIZE = 1350
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_WINDOW = 8 * 1024 * 1024
# CONGESTION_CONTROLLERS and DEFAULT_CONGESTION live in tunnel_core.options (the CLI validates without aioquic):
# our model-based "bbr" (tunnel_core.quic.bbr, loss-tolerant) and aioquic's loss-based two. Flip DEFAULT_CONGESTION
# there to make BBR the default (issue 13, after the WAN lab's measurements).
assert bbr.NAME in CONGESTION_CONTROLLERS
#: The SNI upstream's client sends.
SERVER_NAME = "manual"
#: ``ssl.CERT_NONE``; the core may not import ssl (sans-IO purity), and the value is fixed by the ssl module's ABI.
_CERT_NONE = 0


def clamp_packet_size(n: int) -> int:
    """Keep ``max_datagram_size`` where aioquic works: at least QUIC's minimum, at most below its varint bug."""
    return max(MIN_PACKET_SIZE, min(MAX_PACKET_SIZE, int(n)))


def check_congestion(name: str) -> str:
    """``name`` if it is a congestion controller we offer, else LocalProtocolError naming the choices."""
    if name not in CONGESTION_CONTROLLERS:
        raise LocalProtocolError(
            f"unknown congestion controller {name!r} (choose one of {', '.join(CONGESTION_CONTROLLERS)})"
        )
    return name


def make_configuration(
    *,
    is_client: bool,
    identity: QuicIdentity | None = None,
    packet_size: int = DEFAULT_PACKET_SIZE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    window: int = DEFAULT_WINDOW,
    congestion_control: str | None = None,
    datagrams: bool = True,
) -> QuicConfiguration:
    """A configuration for one side. A server needs ``identity``; a client passes one only for mutual pinning.

    ``congestion_control`` is one of CONGESTION_CONTROLLERS (None: DEFAULT_CONGESTION). ``datagrams`` allows RFC 9221
    DATAGRAM frames and advertises the tunnel-datagram capability (docs/datagrams.md); False behaves exactly like
    versions before it (UDP on streams only).
    """
    congestion_control = check_congestion(congestion_control or DEFAULT_CONGESTION)
    if not is_client and identity is None:
        raise LocalProtocolError("a QUIC server needs an identity (certificate and key)")
    if window <= 0:
        raise LocalProtocolError("the flow-control window must be positive")
    if idle_timeout <= 0:
        raise LocalProtocolError("the idle timeout must be positive")
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=None,
        server_name=SERVER_NAME,
        idle_timeout=idle_timeout,
        max_datagram_size=clamp_packet_size(packet_size),
        max_data=window,
        max_stream_data=window,
        congestion_control_algorithm=congestion_control,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE if datagrams else None,
    )
    config.verify_mode = _CERT_NONE
    if identity is not None:
        config.certificate = identity.certificate
        config.private_key = identity.private_key
    return config
