"""The outage tests' lab: the NAT lab of tests/nat (unique namespace names, always torn down), full-cone both sides."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.nat.lab import Lab

from .cut import require_labs


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_labs()
    with Lab("fullcone", "fullcone") as built:
        yield built
