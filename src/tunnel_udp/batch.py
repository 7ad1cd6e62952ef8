"""UDP GSO/GRO batches on non-blocking sockets; see the package docstring.

Kernel facts this relies on (Linux >= 4.18 for GSO, >= 5.0 for GRO on UDP sockets):

* ``sendmsg`` with a ``(SOL_UDP, UDP_SEGMENT, u16 size)`` control message sends the buffer as datagrams of
  ``size`` bytes, the last one may be shorter; at most 64 segments (UDP_MAX_SEGMENTS before Linux 5.x; later 128)
  and one IP datagram's worth of payload (~64 KiB) per call. A NIC/driver that cannot checksum-offload makes the
  call fail with EIO: we then switch GSO off for that socket and send one datagram per call.
* with ``setsockopt(SOL_UDP, UDP_GRO, 1)`` the kernel may hand ``recvmsg`` several datagrams of one flow glued
  together plus a ``(SOL_UDP, UDP_GRO, int size)`` control message; without that message the buffer is one datagram.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
#: Segments per GSO send (the kernel's UDP_MAX_SEGMENTS on older kernels; newer ones allow 128).
GSO_MAX_SEGMENTS = 64
#: Payload bytes per GSO send: an IPv6 datagram carries 65535 - 8 (UDP) bytes; stay a little below.
GSO_MAX_BYTES = 65000
#: Receive buffer for one recvmsg: a whole GRO batch (64 KiB) fits.
RECV_BUFFER = 65535
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0

Address = Any


def gso_supported(sock: socket.socket) -> bool:
    """True if this socket can send with UDP_SEGMENT (Linux; the option is readable where it is supported)."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return hasattr(sock, "sendmsg")


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams (UDP_GRO); False where it cannot."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return hasattr(sock, "recvmsg")


def plan_batches(
    sizes: Sequence[int], *, max_segments: int = GSO_MAX_SEGMENTS, max_bytes: int = GSO_MAX_BYTES
) -> list[tuple[int, int, int]]:
    """Cut a sequence of datagram sizes into GSO batches ``(start, stop, segment_size)``: a batch is a run of
    datagrams of ``segment_size`` bytes, optionally ended by one shorter datagram, within the kernel's limits.
    A batch of one datagram is sent without GSO."""
    batches: list[tuple[int, int, int]] = []
    i, n = 0, len(sizes)
    while i < n:
        size = sizes[i]
        j = i + 1
        total = size
        while j < n and j - i < max_segments and total + sizes[j] <= max_bytes:
            if sizes[j] == size:
                total += size
                j += 1
                continue
            if sizes[j] < size:  # a shorter datagram may end the batch
                j += 1
            break
        batches.append((i, j, size))
        i = j
    return batches


def send_batch(sock: socket.socket, datagrams: Sequence[bytes], addr: Address, *, gso: bool = True) -> tuple[int, int]:
    """Send ``datagrams`` to ``addr`` in order; return ``(datagrams sent, syscalls made)``.

    Stops early when the socket would block (the caller keeps the rest for the next writable event). With ``gso``
    runs of equal-size datagrams go out in one ``sendmsg``; an EIO from the kernel (no GSO on this device) raises
    :class:`GsoUnavailable` *before anything of that batch was sent*, so the caller can retry without GSO.
    """
    sent = calls = 0
    plan = plan_batches([len(d) for d in datagrams]) if gso else [(i, i + 1, len(d)) for i, d in enumerate(datagrams)]
    for start, stop, size in plan:
        try:
            calls += 1
            if stop - start == 1:
                sock.sendto(datagrams[start], addr)
            else:
                sock.sendmsg(
                    [b"".join(datagrams[start:stop])], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, addr
                )
        except BlockingIOError:
            calls -= 1
            break
        except OSError as exc:
            if stop - start > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                raise GsoUnavailable(sent, calls - 1) from exc
            raise
        sent = stop
    return sent, calls


class GsoUnavailable(OSError):
    """The kernel refused a GSO send; ``sent``/``calls`` say what went out before it."""

    def __init__(self, sent: int, calls: int) -> None:
        super().__init__("UDP GSO is not available on this socket")
        self.sent = sent
        self.calls = calls


def recv_batch(sock: socket.socket, *, gro: bool = True, bufsize: int = RECV_BUFFER) -> list[tuple[bytes, Address]]:
    """One receive: the datagrams it returned, split at the GRO segment size ([] if the socket would block)."""
    try:
        if not gro:
            data, addr = sock.recvfrom(bufsize)
            return [(data, addr)]
        data, ancdata, _flags, addr = sock.recvmsg(bufsize, _GRO_CMSG_SPACE)
    except BlockingIOError:
        return []
    segment = 0
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            segment = struct.unpack("=i", value[:4])[0]
    if segment <= 0 or segment >= len(data):
        return [(data, addr)]
    return [(data[i : i + segment], addr) for i in range(0, len(data), segment)]


class Batcher:
    """Per-socket batching state for a driver: whether GSO and GRO work here, and counters.

    ``send(datagrams, addr)`` returns how many went out (the rest would block); ``recv()`` returns the datagrams of
    one receive call. GSO switches itself off for good after the first refusal (a device without offload).
    """

    def __init__(self, sock: socket.socket, *, gso: bool | None = None, gro: bool | None = None) -> None:
        self.sock = sock
        self.gso = gso_supported(sock) if gso is None else gso
        self.gro = enable_gro(sock) if gro is None or gro else False
        self.send_calls = 0
        self.recv_calls = 0

    def send(self, datagrams: Sequence[bytes], addr: Address) -> int:
        try:
            sent, calls = send_batch(self.sock, datagrams, addr, gso=self.gso)
        except GsoUnavailable as exc:
            self.gso = False
            self.send_calls += exc.calls
            rest, calls = send_batch(self.sock, datagrams[exc.sent :], addr, gso=False)
            self.send_calls += calls
            return exc.sent + rest
        self.send_calls += calls
        return sent

    def recv(self) -> list[tuple[bytes, Address]]:
        out = recv_batch(self.sock, gro=self.gro)
        if out:
            self.recv_calls += 1
        return out
