"""ICE timing knobs; the defaults are upstream's "conservative" str0m profile (upstream-spec.md 4.5, 4.8)."""

from __future__ import annotations

import attrs

__all__ = ["IceTiming"]


@attrs.frozen
class IceTiming:
    """All durations in seconds.

    ``ta`` paces new STUN transactions (RFC 8445 14.2); a request is retransmitted after ``initial_rto``,
    doubling up to ``max_rto``, ``max_retransmits`` times, and fails one more RTO after the last send.
    ``consent_interval`` is randomised by +-20% per check (RFC 7675 5.1).
    """

    ta: float = 0.05
    initial_rto: float = 0.25
    max_rto: float = 3.0
    max_retransmits: int = 7
    connect_timeout: float = 30.0
    gather_timeout: float = 3.0
    consent_interval: float = 5.0
    consent_timeout: float = 30.0
    #: while consent checks go unanswered (a cut), check this often, so the path's return is noticed within about
    #: a second (docs/reconnect.md); still one small request per second, far below RFC 7675's rate limits
    consent_retry_interval: float = 1.0
    #: a consent check unanswered this long marks the path degraded (ConsentDegraded; the check retransmits)
    consent_degraded_after: float = 2.0
    #: how long the controlling side holds back nominating a relayed pair while direct pairs may still succeed
    relay_grace: float = 1.0
