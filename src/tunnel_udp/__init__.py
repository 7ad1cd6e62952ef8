"""Batched UDP I/O: Linux UDP GSO on send and GRO on receive, with a portable fallback (issue 13).

Why it exists: at 1350-byte packets a tunnel pays one ``sendto``/``recvfrom`` per packet, a large share of its
per-packet CPU. With GSO one ``sendmsg`` hands the kernel a whole run of equal-size datagrams (a ``UDP_SEGMENT``
control message says where to cut); with GRO one ``recvmsg`` returns several datagrams from one sender glued
together (a ``UDP_GRO`` control message says the segment size) and :func:`recv_batch` splits them.

The module is runtime-neutral: plain functions on a *non-blocking* socket, no event loop. A driver calls them when
its loop says the socket is writable/readable, exactly where it calls ``sendto``/``recvfrom`` today; see
docs/congestion.md ("Batched UDP I/O") for how aioquic's datagrams map onto batches.
"""

from tunnel_udp.batch import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    Batcher,
    GsoUnavailable,
    enable_gro,
    gso_supported,
    plan_batches,
    recv_batch,
    send_batch,
)

__all__ = [
    "GSO_MAX_BYTES",
    "GSO_MAX_SEGMENTS",
    "Batcher",
    "GsoUnavailable",
    "enable_gro",
    "gso_supported",
    "plan_batches",
    "recv_batch",
    "send_batch",
]
