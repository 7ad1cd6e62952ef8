"""Loading the ``iroh`` binding, and the send-path copy fix applied to it at import.

The generated uniffi glue copies every outgoing ``bytes`` value into the Rust buffer one byte at a time in a
Python loop (``_UniffiRustBufferBuilder.write``), which caps a stream at about 3.5 MB/s. We replace that one
method with a single ``memmove`` after the same ``_reserve`` call. The glue is generated code that may change
between releases, so the fix is guarded twice: the original must look like the loop we know, and the
replacement must produce byte-identical buffers on a sample. If either check fails we keep the original
(slow but correct) and warn once. We patch at runtime instead of shipping a modified file because the template
is MPL-2.0 (reference iroh.md section 7).
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import types
import warnings
from typing import Any

from tunnel_core.options import ExitCode, TunnelError

log = logging.getLogger("tunnel_iroh")

MISSING_MESSAGE = (
    "iroh mode needs the 'iroh' package (PyPI iroh >= 1.2, < 2): install it with pip install 'tunnel[iroh]'"
)

_state: dict[str, Any] = {"module": None, "copy_fix": None}


class CopyFixWarning(RuntimeWarning):
    """The copy fix could not be applied; iroh mode works but streams run at a few MB/s."""


def _fast_write(self: Any, value: Any) -> None:
    data = value if isinstance(value, bytes) else bytes(value)
    size = len(data)
    with self._reserve(size):
        if size:
            base = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
            ctypes.memmove(base + self.rbuf.len, data, size)


def _looks_like_known_loop(method: Any) -> bool:
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    compact = "".join(source.split())
    return "self._reserve(len(value))" in compact and "enumerate(value)" in compact and "self.rbuf.data[" in compact


def _sample_equal(builder_cls: type, original: Any) -> bool:
    sample = bytes(range(256)) * 9 + b"tail"
    outputs = []
    for method in (original, _fast_write):
        builder = builder_cls()
        try:
            builder.write_u8(7)
            method(builder, sample)
            method(builder, bytearray(b"xy"))
            method(builder, b"")
            rbuf = builder.rbuf
            outputs.append(bytes(rbuf.data[0 : rbuf.len]))
        finally:
            builder.discard()
    return outputs[0] == outputs[1] and len(outputs[0]) == 1 + len(sample) + 2


def apply_copy_fix(ffi: types.ModuleType) -> bool:
    """Install the memmove writer on ``ffi._UniffiRustBufferBuilder``; True when the fast path is active."""
    builder_cls = getattr(ffi, "_UniffiRustBufferBuilder", None)
    original = getattr(builder_cls, "write", None) if builder_cls is not None else None
    if original is _fast_write:
        return True
    reason = None
    if builder_cls is None or original is None or not hasattr(builder_cls, "_reserve"):
        reason = "the generated buffer builder is not where it used to be"
    elif not _looks_like_known_loop(original):
        reason = "the generated write method changed"
    else:
        try:
            same = _sample_equal(builder_cls, original)
        except Exception as exc:  # any surprise in foreign glue means: do not patch
            same = False
            reason = f"self-test raised {type(exc).__name__}: {exc}"
        if not same and reason is None:
            reason = "the fast writer did not reproduce the original's bytes"
    if reason is not None:
        warnings.warn(
            f"iroh send-path copy fix not applied ({reason}); iroh streams will be slow",
            CopyFixWarning, stacklevel=2,
        )
        return False
    assert builder_cls is not None
    builder_cls.write = _fast_write
    return True


def load() -> types.ModuleType:
    """The ``iroh.iroh_ffi`` module with the copy fix applied; a TunnelError if the package is missing."""
    module = _state["module"]
    if module is not None:
        return module
    try:
        from iroh import iroh_ffi
    except ImportError as exc:
        raise TunnelError(f"{MISSING_MESSAGE} ({exc})", ExitCode.USAGE) from None
    _state["copy_fix"] = apply_copy_fix(iroh_ffi)
    _state["module"] = iroh_ffi
    _rust_log_level(iroh_ffi)
    return iroh_ffi


def _rust_log_level(ffi: types.ModuleType) -> None:
    """``TUNNEL_IROH_LOG`` (trace, debug, info, warn, error): iroh's own tracing to stderr, for diagnosing what iroh
    does under us (its relay connection's redials, path changes); unset, iroh stays silent as before."""
    name = os.environ.get("TUNNEL_IROH_LOG", "").strip().upper()
    level = getattr(ffi.LogLevel, "WARN" if name == "WARNING" else name, None) if name else None
    if level is None:
        if name:
            log.warning("TUNNEL_IROH_LOG=%s is not one of trace, debug, info, warn, error; ignored", name.lower())
        return
    ffi.set_log_level(level)


def copy_fix_active() -> bool:
    return bool(_state["copy_fix"])


def error_text(exc: BaseException) -> str:
    """IrohError's ``str()`` is empty; its ``message()`` carries the text users need."""
    message = getattr(exc, "message", None)
    if callable(message):
        try:
            text = message()
        except Exception:
            text = ""
        if text:
            return " ".join(str(text).split())
    return str(exc) or type(exc).__name__
