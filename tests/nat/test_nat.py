"""The NAT suite: every ordered pair of NAT types x mode (with and without TURN); per mode, loss and a killed peer.

Runs as root only (it builds network namespaces); CI is root. Everything runs once per session, concurrently in
separate labs (see suite.py), started in the background when collection ends (conftest.py), and each test asserts
on its own part of the results.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from .lab import is_root, lab_namespaces, tools_missing
from .modes import MODES, Connected, Failed
from .suite import (
    DIRECT_PATHS,
    LOST_DEADLINE,
    RELAY_PATH,
    SELECTED_MODES,
    UNPUNCHABLE,
    WRITE_DOCS,
    SuiteResults,
    results_table,
    suite_results,
    summary_lines,
    write_doc,
)

pytestmark = [pytest.mark.nat, pytest.mark.timeout(900)]

ICE_FAILURE = ("ICE connectivity failed", "ICE connection timeout")
#: (mode, client NAT, server NAT) of every run with TURN configured, and of every run without it.
WITH_TURN = [(m, a, b) for m in SELECTED_MODES for a, b in MODES[m].pairs if True in MODES[m].turn_variants]
WITHOUT_TURN = [(m, a, b) for m in SELECTED_MODES for a, b in MODES[m].pairs if MODES[m].turn_variants != (False,)]
IROH = [(a, b) for a, b in MODES["iroh"].pairs] if "iroh" in SELECTED_MODES else []


@pytest.fixture(scope="session")
def nat_results(request: pytest.FixtureRequest) -> Iterator[SuiteResults]:
    if not is_root():
        pytest.fail("the NAT suite builds network namespaces and must run as root (CI does)", pytrace=False)
    missing = tools_missing()
    if missing:
        pytest.fail(f"the NAT suite needs {', '.join(missing)} (scripts/install.sh --test installs them)",
                    pytrace=False)
    results = suite_results()  # started at the end of collection (conftest.py), or here
    # Printed past pytest's capture: the table is the suite's report, wanted in every CI log.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + results_table(results) + "\n".join(summary_lines(results)), flush=True)
    if WRITE_DOCS:
        write_doc(results)
    yield results


@pytest.mark.parametrize(("mode", "nat_a", "nat_b"), WITH_TURN)
def test_every_pair_connects_with_turn(nat_results: SuiteResults, mode: str, nat_a: str, nat_b: str) -> None:
    entry = nat_results.matrix[(mode, nat_a, nat_b, True)]
    assert isinstance(entry.outcome, Connected), entry.detail
    assert entry.transfer_ok, entry.detail
    # Relay only where punching cannot work: a configured TURN server must not steal a direct path.
    expected = {RELAY_PATH} if (nat_a, nat_b) in UNPUNCHABLE else DIRECT_PATHS
    assert entry.outcome.path in expected, entry.detail


@pytest.mark.parametrize(("mode", "nat_a", "nat_b"), WITHOUT_TURN)
def test_without_turn_punchable_pairs_connect_directly(nat_results: SuiteResults, mode: str, nat_a: str,
                                                      nat_b: str) -> None:
    entry = nat_results.matrix[(mode, nat_a, nat_b, False)]
    if (nat_a, nat_b) in UNPUNCHABLE:
        assert isinstance(entry.outcome, Failed), entry.detail
        assert entry.outcome.exit_code == 10, entry.detail
        assert entry.outcome.message.startswith("Error: ICE"), entry.detail
        assert any(text in entry.outcome.message for text in ICE_FAILURE), entry.detail
        assert entry.outcome.seconds < 45, entry.detail
    else:
        assert isinstance(entry.outcome, Connected), entry.detail
        assert entry.outcome.path in DIRECT_PATHS, entry.detail
        assert entry.transfer_ok, entry.detail


@pytest.mark.parametrize(("nat_a", "nat_b"), IROH)
def test_iroh_connects_through_the_labs_relay_for_every_pair(nat_results: SuiteResults, nat_a: str,
                                                             nat_b: str) -> None:
    entry = nat_results.matrix[("iroh", nat_a, nat_b, False)]
    assert isinstance(entry.outcome, Connected), entry.detail
    assert entry.transfer_ok, entry.detail
    # The only ways out of the lab are the relay and a hole-punched path (no n0 relay, no discovery).
    assert entry.outcome.path.startswith(("Relay http://198.51.100.10:", "Direct 198.51.100.")), entry.detail
    assert entry.outcome.seconds < 15, entry.detail
    if entry.later is not None:
        assert entry.later.path.startswith("Direct 198.51.100."), entry.detail


@pytest.mark.parametrize("mode", SELECTED_MODES)
def test_twenty_megabytes_survive_five_percent_loss(nat_results: SuiteResults, mode: str) -> None:
    result = nat_results.impair[mode]
    assert isinstance(result.outcome, Connected), result.detail
    assert result.transfer.get("ok") is True, (result.transfer, result.detail)
    assert result.transfer.get("bytes") == 20 * 1024 * 1024


@pytest.mark.parametrize("mode", SELECTED_MODES)
def test_killed_server_makes_the_client_exit_with_connection_lost(nat_results: SuiteResults, mode: str) -> None:
    result = nat_results.restart[mode]
    assert isinstance(result.outcome, Connected), result.detail
    assert result.transfer_started, result.detail
    assert result.exit_code == 11, result.detail
    assert result.seconds_to_exit is not None and result.seconds_to_exit <= LOST_DEADLINE, result.detail
    assert result.port_released, result.detail
    assert result.last_line.startswith("Error: "), result.detail  # one line saying why, not a traceback


def test_every_lab_was_torn_down(nat_results: SuiteResults) -> None:
    assert nat_results.prefixes
    leftovers = [ns for prefix in nat_results.prefixes for ns in lab_namespaces(prefix)]
    assert leftovers == []
