"""A user-space WAN link: a wire between two TAP devices with per-direction delay, jitter, loss, rate and a cut.

Why user space: the kernel here has no ``netem`` qdisc, so delay and jitter cannot come from ``tc``. One process
owns one TAP device at each end (created inside the two network namespaces via setns, so no device ever appears
in the host namespace) and moves Ethernet frames between them. TAP, not TUN: the link is a *wire*, so it can
replace any veth of a topology (ARP crosses it too, as on a real link) - that is how it composes with the NAT lab.

Model, per direction (A->B and B->A are independent):

* **rate limit + bottleneck queue** (tail drop): a frame of n bytes leaves the bottleneck at
  ``free_at = max(now, free_at) + n / rate``; the bytes still waiting are ``(free_at - now) * rate``; a frame that
  would push them above ``queue_bytes`` is dropped (counted as ``drop_queue``). No rate: frames leave at once.
* **random loss** after the bottleneck (a frame lost on the wire still used the bottleneck's time).
* **delay + jitter**: a frame arrives at ``departure + delay + offset(departure)``. ``offset`` is a smooth random
  process (``tunnel_core.testing.link.Wander``, shared with the virtual-time Link): a new target N(0, jitter)
  (clipped to +-2 jitter) every ``max(10 ms, 4 jitter)``, linear in between.
  So the delay distribution a sparse probe sees has the configured spread whatever the packet rate, and frames keep
  their order (the offset's slope stays below 1, and an arrival never precedes the previous one's): real access
  links reorder very rarely, while netem-style per-packet jitter reorders heavily, which TCP treats as loss.
* **cut**: while on, every frame is dropped (``drop_cut``), frames in flight included.

Control: JSON lines on stdin, one answer line on stdout each: ``{"op": "set", "dir": "ab"|"ba"|"both", ...params}``,
``{"op": "cut", "on": true}``, ``{"op": "stats"}``. Stdin closing (the controller died) ends the process.
Prints ``ready`` once both devices exist. Started and driven by ``tests/wan/lab.py`` (``WanLink``).

    python link.py NS_A:IFACE NS_B:IFACE [--seed N]
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time
from typing import Any

from tunnel_core.testing.link import Wander

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
BATCH = 64  # frames read per device per wake-up, so one busy direction cannot starve the other
EARLY = 0.0002  # deliver frames due within 200 us now: cheaper than sleeping again for a sub-timer-slack wait


class Direction:
    """One direction of the link: parameters, the in-flight FIFO and the counters. Pure (time is passed in)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.delay = 0.0  # seconds, one way
        self.jitter = 0.0  # seconds, standard deviation of the delay's variation
        self.loss = 0.0  # probability 0..1
        self.rate = 0.0  # bytes per second; 0 = unlimited
        self.queue_bytes = 0  # bottleneck queue limit (used only with a rate)
        self.free_at = 0.0
        self.last_due = 0.0
        self._wander = Wander(rng)
        self.flight: collections.deque[tuple[float, bytes]] = collections.deque()
        self.counts = {"fwd": 0, "fwd_bytes": 0, "drop_loss": 0, "drop_queue": 0, "drop_cut": 0}

    def configure(self, params: dict[str, Any]) -> None:
        self.delay = float(params.get("delay_ms", self.delay * 1e3)) / 1e3
        self.jitter = float(params.get("jitter_ms", self.jitter * 1e3)) / 1e3
        self.loss = float(params.get("loss", self.loss))
        self.rate = float(params.get("rate_mbit", self.rate * 8 / 1e6)) * 1e6 / 8
        if "queue_bytes" in params:
            self.queue_bytes = int(params["queue_bytes"])
        elif "queue_ms" in params:
            self.queue_bytes = int(self.rate * float(params["queue_ms"]) / 1e3)

    def backlog(self, now: float) -> float:
        """Bytes waiting in the bottleneck queue at ``now``."""
        return max(0.0, self.free_at - now) * self.rate

    def admit(self, frame: bytes, now: float) -> None:
        """A frame entered the link at ``now``: drop it or schedule its arrival."""
        n = len(frame)
        departure = now
        if self.rate > 0:
            if self.backlog(now) + n > self.queue_bytes + 0.5:  # half a byte: float noise, not a frame
                self.counts["drop_queue"] += 1
                return
            self.free_at = max(now, self.free_at) + n / self.rate
            departure = self.free_at
        if self.loss > 0 and self.rng.random() < self.loss:
            self.counts["drop_loss"] += 1
            return
        due = max(departure, departure + self.delay + self._wander.offset(departure, self.jitter), self.last_due)
        self.last_due = due
        self.flight.append((due, frame))

    def cut(self) -> None:
        """Everything in flight is lost; the bottleneck empties with it."""
        self.counts["drop_cut"] += len(self.flight)
        self.flight.clear()
        self.free_at = 0.0

    def due(self, now: float) -> list[bytes]:
        out = []
        while self.flight and self.flight[0][0] <= now + EARLY:
            out.append(self.flight.popleft()[1])
        return out

    def next_due(self) -> float | None:
        return self.flight[0][0] if self.flight else None


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def open_tap(namespace: str, name: str) -> int:
    """A TAP device called ``name`` created inside ``namespace`` (this thread enters it to create the device)."""
    _setns(f"/run/netns/{namespace}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Link:
    """The event loop: read frames, admit them, write them out when due, answer control lines."""

    def __init__(self, fd_a: int, fd_b: int, seed: int) -> None:
        rng = random.Random(seed)
        self.fds = (fd_a, fd_b)
        self.dirs = {"ab": Direction(rng), "ba": Direction(rng)}
        self.is_cut = False
        self.cut_started = 0.0
        self.cut_seconds = 0.0
        self.started = time.monotonic()

    def control(self, line: str) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            op = msg.pop("op")
        except (ValueError, KeyError, AttributeError):
            return {"ok": False, "error": "bad control line"}
        if op == "set":
            which = msg.pop("dir", "both")
            for key in (("ab", "ba") if which == "both" else (which,)):
                self.dirs[key].configure(msg)
        elif op == "cut":
            on = bool(msg.get("on", True))
            now = time.monotonic()
            if on and not self.is_cut:
                self.cut_started = now
                for d in self.dirs.values():
                    d.cut()
            elif not on and self.is_cut:
                self.cut_seconds += now - self.cut_started
            self.is_cut = on
        elif op != "stats":
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True, **self.stats()}

    def stats(self) -> dict[str, Any]:
        t = os.times()
        return {"cpu_s": round(t.user + t.system, 3), "wall_s": round(time.monotonic() - self.started, 3),
                "cut": self.is_cut, "ab": dict(self.dirs["ab"].counts), "ba": dict(self.dirs["ba"].counts)}

    def run(self) -> None:
        fd_a, fd_b = self.fds
        ins = {fd_a: self.dirs["ab"], fd_b: self.dirs["ba"]}
        outs = ((self.dirs["ab"], fd_b), (self.dirs["ba"], fd_a))
        stdin = sys.stdin.fileno()
        pending = b""
        while True:
            now = time.monotonic()
            for direction, fd in outs:
                for frame in direction.due(now):
                    try:
                        os.write(fd, frame)
                        direction.counts["fwd"] += 1
                        direction.counts["fwd_bytes"] += len(frame)
                    except OSError:  # the device went down under us (namespace being deleted)
                        direction.counts["drop_cut"] += 1
            dues = [d for d in (self.dirs["ab"].next_due(), self.dirs["ba"].next_due()) if d is not None]
            timeout = max(0.0, min(dues) - time.monotonic()) if dues else 1.0
            readable, _, _ = select.select([fd_a, fd_b, stdin], [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                if fd == stdin:
                    data = os.read(stdin, 65536)
                    if not data:
                        return
                    pending += data
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        sys.stdout.write(json.dumps(self.control(line.decode())) + "\n")
                        sys.stdout.flush()
                    continue
                direction = ins[fd]
                for _ in range(BATCH):
                    try:
                        frame = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if self.is_cut:
                        direction.counts["drop_cut"] += 1
                    else:
                        direction.admit(frame, now)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    seed = int(argv[3]) if len(argv) >= 4 and argv[2] == "--seed" else 1
    (ns_a, if_a), (ns_b, if_b) = (end.split(":", 1) for end in argv[:2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd_b = open_tap(ns_b, if_b)
    fd_a = open_tap(ns_a, if_a)  # last: the process stays in A's namespace, so the lab's teardown finds its pid
    print("ready", flush=True)
    Link(fd_a, fd_b, seed).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
