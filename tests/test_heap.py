"""tunnel_cli.heap: a tunnel process keeps a freed batch's memory instead of trimming the heap and faulting it back.

The pattern is the receiving tunnel's (a drained batch of ~16 KB datagrams held until the flush, then freed); the
figure is the kernel's count of minor page faults, not a speed. Runs in child interpreters so the test process keeps
its own allocator settings.
"""

from __future__ import annotations

import subprocess
import sys

BATCHES = """
import resource, sys
from tunnel_cli.heap import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap()
elif sys.argv[1] == "cli":  # what every console script does first
    from tunnel_cli.entry import console_main
    assert console_main(["--version"], "TUNNEL", "asyncio") == 0
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    batch = [bytes(16000) for _ in range(128)]  # ~2 MB, like a drained batch of datagrams
    del batch
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_freed_batches_are_reused_not_faulted_back() -> None:
    default, kept = _faults("default"), _faults("keep")
    # glibc's defaults trim the freed batch again and again (thousands of faults; how many depends on the layout).
    assert default > 4_000, f"glibc's default no longer trims here ({default} faults): the setting may be moot"
    # Kept: the pages are faulted in once (~500).
    assert kept < default / 10, (kept, default)


def test_console_scripts_apply_it() -> None:
    """Every console script starts in tunnel_cli.entry.console_main, which makes the setting."""
    assert _faults("cli") < _faults("default") / 10
