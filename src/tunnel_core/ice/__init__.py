"""The ICE agent (RFC 8445 full, non-trickle, one component, UDP) and its events; see ``agent`` for the design."""

from tunnel_core.ice.agent import IceAgent, IceState
from tunnel_core.ice.checklist import CandidatePair, PairState, pair_priority
from tunnel_core.ice.events import (
    REASON_ALL_FAILED,
    REASON_TIMEOUT,
    ConsentDegraded,
    ConsentLost,
    ConsentRestored,
    GatheringComplete,
    IceEvent,
    IceFailed,
    NominationIgnored,
    PairSelected,
    PathAnswered,
    RoamingCandidate,
    RoamingRelayFailed,
    RoleChanged,
    ServerReflexiveDiscovered,
)
from tunnel_core.ice.timing import IceTiming

__all__ = [
    "REASON_ALL_FAILED",
    "REASON_TIMEOUT",
    "CandidatePair",
    "ConsentDegraded",
    "ConsentLost",
    "ConsentRestored",
    "GatheringComplete",
    "IceAgent",
    "IceEvent",
    "IceFailed",
    "IceState",
    "IceTiming",
    "NominationIgnored",
    "PairSelected",
    "PairState",
    "PathAnswered",
    "RoamingCandidate",
    "RoamingRelayFailed",
    "RoleChanged",
    "ServerReflexiveDiscovered",
    "pair_priority",
]
