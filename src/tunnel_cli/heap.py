"""glibc heap settings for a tunnel process: keep freed memory in the heap instead of trimming and regrowing it.

Why: a receiving tunnel holds a whole drained batch (up to 256 datagrams of up to 16 KB, their plaintext and the
write events) until the flush, then frees it. With glibc's defaults (trim above 128 KiB of free heap top, which
only rises by chance, when a large mmapped block is freed) that freed top went back to the kernel after nearly
every batch and came back as fresh zeroed pages: ~20,000 minor page faults per 128 MiB received and ~1 s of
system CPU per GiB more than the code before the I/O layer, which happened to raise the threshold early
(benchmarks/README.md). Done once at process start by the console scripts; an embedding program keeps its own
allocator settings. Anything but glibc (musl's mallopt is a no-op, other systems have none) is left alone.
"""

from __future__ import annotations

import ctypes
import sys

#: mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Free heap kept before trimming, and the size from which blocks get their own mapping (glibc: 128 KiB each).
HEAP_KEEP = 4 << 20


def keep_freed_heap() -> bool:
    """Raise glibc's trim and mmap thresholds to HEAP_KEEP; True if glibc took both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, HEAP_KEEP) == 1 and mallopt(M_MMAP_THRESHOLD, HEAP_KEEP) == 1
