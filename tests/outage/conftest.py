"""The outage tests' lab: the NAT lab of tests/nat (unique namespace names, always torn down), full-cone both sides."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.nat.lab import Lab, is_root, reap_stale_labs, tools_missing


@pytest.fixture
def lab() -> Iterator[Lab]:
    if not is_root():
        pytest.fail("the outage tests build network namespaces and must run as root (CI does)", pytrace=False)
    missing = tools_missing()
    if missing:
        pytest.fail(f"the outage tests need {', '.join(missing)} (scripts/install.sh --test)", pytrace=False)
    reap_stale_labs()
    with Lab("fullcone", "fullcone") as built:
        yield built
