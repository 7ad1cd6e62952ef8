"""The send-path copy fix: applied to the real binding, byte-identical, and refused (with a warning) when the
generated code does not look as expected. TUNNEL_IROH_LOG: iroh's own tracing on request."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from tunnel_iroh import ffi


def test_copy_fix_is_active_on_the_installed_binding() -> None:
    module = ffi.load()
    assert ffi.copy_fix_active()
    assert module._UniffiRustBufferBuilder.write is ffi._fast_write
    builder = module._UniffiRustBufferBuilder()
    try:
        payload = bytes(range(256)) * 1000
        builder.write(payload)
        builder.write(memoryview(b"end"))
        assert bytes(builder.rbuf.data[0 : builder.rbuf.len]) == payload + b"end"
    finally:
        builder.discard()


def test_unexpected_generated_code_keeps_the_original_and_warns() -> None:
    class Builder:
        def _reserve(self, n: int) -> None:  # a different shape than uniffi's
            pass

        def write(self, value: bytes) -> None:
            self.data = bytes(value)

    fake = types.SimpleNamespace(_UniffiRustBufferBuilder=Builder)
    original = Builder.write
    with pytest.warns(ffi.CopyFixWarning, match="changed"):
        assert ffi.apply_copy_fix(fake) is False  # type: ignore[arg-type]
    assert Builder.write is original
    with pytest.warns(ffi.CopyFixWarning, match="not where it used to be"):
        assert ffi.apply_copy_fix(types.SimpleNamespace()) is False  # type: ignore[arg-type]


def test_error_text_prefers_iroh_message() -> None:
    class Fake(Exception):
        def message(self) -> str:
            return "no  route\nto host"

    assert ffi.error_text(Fake()) == "no route to host"
    assert ffi.error_text(ValueError("plain")) == "plain"


_BIND = """
import asyncio
from tunnel_iroh import ffi

async def main():
    f = ffi.load()
    f.uniffi_set_event_loop(asyncio.get_running_loop())
    endpoint = await f.Endpoint.bind(f.EndpointOptions(preset=f.preset_minimal(), alpns=[b"x"],
                                                       relay_mode=f.RelayMode.disabled(), bind_addr="127.0.0.1:0"))
    await endpoint.close()

asyncio.run(main())
"""


@pytest.mark.parametrize(("value", "traced"), [("debug", True), ("", False), ("loud", False)])
def test_tunnel_iroh_log_turns_on_irohs_own_tracing(value: str, traced: bool) -> None:
    """TUNNEL_IROH_LOG (docs/cli.md): iroh's tracing, which iroh writes to stdout; unset or unknown: silent (an
    unknown value says so on stderr)."""
    env = {**os.environ, "TUNNEL_IROH_LOG": value}
    done = subprocess.run([sys.executable, "-c", _BIND], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    assert ("iroh endpoint bound" in done.stdout) is traced, (done.stdout[-2000:], done.stderr[-2000:])
    assert ("is not one of trace, debug, info, warn, error" in done.stderr) is (value == "loud"), done.stderr
