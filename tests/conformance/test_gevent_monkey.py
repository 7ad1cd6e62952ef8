"""docs/embedding.md promises the gevent runtime works whether or not the program called
``gevent.monkey.patch_all()``; test_embedding covers "not", this covers "did" (in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(90)]

TESTS = Path(__file__).resolve().parent.parent


def test_gevent_program_with_patch_all_runs_both_sides() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    out = subprocess.run(
        [sys.executable, str(TESTS / "conformance" / "gevent_patched_program.py")],
        capture_output=True, text=True, timeout=80, env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "OK", out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
