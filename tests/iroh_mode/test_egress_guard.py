"""The session's egress guard (tests/helpers/egress_guard.py) is in place and catches what iroh really sends.

An iroh endpoint bound to 127.0.0.1 still multicasts an SSDP search for a UPnP gateway (its portmapper; the binding
has no switch for it). This test first checks that the guard table exists - without it, it fails before binding -
then binds one endpoint and sees the guard's counter grow: the probe was made, and dropped on the host.
"""

from __future__ import annotations

import asyncio
import subprocess

import iroh as f
import pytest
from tests.helpers import egress_guard

pytestmark = pytest.mark.timeout(60)


def test_iroh_portmapper_probes_are_dropped_by_the_session_guard() -> None:
    listed = subprocess.run(["nft", "list", "table", "inet", egress_guard.TABLE], capture_output=True, text=True)
    assert listed.returncode == 0, "the egress guard is not installed (tests/conftest.py): not binding an endpoint"
    before = egress_guard.dropped()

    async def bind_and_wait() -> int:
        options = f.EndpointOptions(preset=f.preset_minimal(), bind_addr="127.0.0.1:0", secret_key=bytes(32),
                                    alpns=[b"egress-guard-test"])
        endpoint = await f.Endpoint.bind(options)
        try:
            for _ in range(50):
                if egress_guard.dropped() > before:
                    break
                await asyncio.sleep(0.1)
            return egress_guard.dropped()
        finally:
            await endpoint.close()

    assert asyncio.run(bind_and_wait()) > before
