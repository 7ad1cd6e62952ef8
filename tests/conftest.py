"""Session-wide: the long runs offered to tests/helpers/early.py start as soon as collection is over, and the
virtual-time congestion tests go first, so that what runs beside those runs' real processes is pure CPU work whose
results do not depend on time (tests/test_congestion.py, about a minute) rather than e2e tests with deadlines."""

from __future__ import annotations

import pytest
from tests.helpers import early, egress_guard

#: Modules whose tests are run first when something starts early (virtual time only: contention cannot change them).
FIRST = ("test_congestion.py",)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    first = [item for item in items if item.path.name in FIRST]
    if first:
        items[:] = first + [item for item in items if item.path.name not in FIRST]


def pytest_collection_finish(session: pytest.Session) -> None:
    early.start_for(session.items)


@pytest.fixture(scope="session", autouse=True)
def _egress_guard() -> object:
    """tests/helpers/egress_guard.py: iroh's portmapper probes never leave the host while tests run."""
    installed = egress_guard.install()
    yield installed
    if installed:
        egress_guard.remove()
