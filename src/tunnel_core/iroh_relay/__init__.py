"""A relay server that real iroh 1.x clients accept, as sans-IO pieces: frame codec, handshake, server machine."""

from tunnel_core.iroh_relay.config import DEV_BIND, RelayOptions, RelayPolicy
from tunnel_core.iroh_relay.events import (
    ClientAuthenticated,
    ClientDenied,
    ClientLeft,
    CloseCode,
    CloseConnection,
    Event,
    OutputReady,
)
from tunnel_core.iroh_relay.frames import FrameError, decode_frame, encode_frame
from tunnel_core.iroh_relay.server import SUBPROTOCOLS, RelayServer, RelayStats, choose_subprotocol

__all__ = [
    "DEV_BIND",
    "SUBPROTOCOLS",
    "ClientAuthenticated",
    "ClientDenied",
    "ClientLeft",
    "CloseCode",
    "CloseConnection",
    "Event",
    "FrameError",
    "OutputReady",
    "RelayOptions",
    "RelayPolicy",
    "RelayServer",
    "RelayStats",
    "choose_subprotocol",
    "decode_frame",
    "encode_frame",
]
