"""Reconnect instead of exiting (issue 15 item 2; docs/reconnect.md), as one effect generator every mode can use.

Why a wrapper around a mode's own "establish" step rather than a state machine per mode: building a tunnel is
already written once per mode as a generator (signal, gather, check, handshake). Reconnecting is "do that again,
with backoff, within a time budget, quietly", so the loop lives here and the mode passes its establish step.

What the user sees: one line when the tunnel is lost (``Reconnecting...``), nothing per attempt (the attempts'
own lines are swallowed), one line when it is back (with the path type), or the end: exit 11 with the reason and how
long it tried. Refusals (exit 3: a rejected session, a certificate that does not match its pin) and bad input
(exit 2) end at once; retrying cannot fix them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from tunnel_core.dialogue import Detach, Say, Sleep, mapped
from tunnel_core.options import DEFAULT_RECONNECT_TIMEOUT, ExitCode, TunnelError
from tunnel_core.peer import IceConnected

#: The backoff between attempts starts here and doubles up to ``MAX_DELAY``. Why only 5 s: a user is waiting for
#: the tunnel to come back, and an attempt costs a few small relay messages (nostr) or one dial (iroh).
FIRST_DELAY = 1.0
MAX_DELAY = 5.0
#: Failures that retrying cannot fix.
FINAL = (ExitCode.AUTH, ExitCode.USAGE)

__all__ = [
    "DEFAULT_RECONNECT_TIMEOUT",
    "FINAL",
    "FIRST_DELAY",
    "MAX_DELAY",
    "back_line",
    "gave_up",
    "held_line",
    "keep_reconnecting",
    "lost_line",
    "quiet",
    "reset_line",
]


def lost_line(reason: str, timeout: float) -> str:
    """The one line a client says when its tunnel is lost and it starts reconnecting (every mode says the same)."""
    return f"Tunnel lost: {reason}. Reconnecting... (giving up after {timeout:g}s)"


def reset_line(peer: str, reason: str = "the tunnel was lost") -> str:
    """One line per local connection a lost tunnel took with it: not durable (docs/durable.md), or it could not be
    resumed (``reason``)."""
    return f"Connection from {peer} reset: {reason}"


def held_line(peer: str, grace: float) -> str:
    """A server's durable connection whose client did not come back in time."""
    return f"Connection {peer} closed: the client did not resume it within {grace:g}s"


def back_line(elapsed: float, attempts: int, path: str) -> str:
    return f"Tunnel back after {elapsed:.1f}s ({attempts} attempt(s)): {path}"


def gave_up(elapsed: float, attempts: int, last: str) -> TunnelError:
    return TunnelError(f"Gave up reconnecting after {elapsed:.0f}s ({attempts} attempt(s)); last error: {last}",
                       ExitCode.CONNECTION_LOST)


def quiet(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Run ``gen`` with its ``Say`` lines swallowed (an attempt's progress lines would repeat on every try)."""
    return mapped(gen, lambda effect: None if isinstance(effect, Say) else effect)


def keep_reconnecting(
    establish: Callable[[float], Generator[Any, Any, IceConnected]],
    lost: TunnelError,
    timeout: float,
    clock: Any,
) -> Generator[Any, Any, IceConnected]:
    """After ``lost``: detach, then call ``establish(remaining)`` with backoff until it succeeds or ``timeout``
    passes (``remaining`` is what is left of it, so one attempt's own waits can be bounded by it).

    ``clock`` is an effect whose result has ``.monotonic`` (nostr's ``Clock``). Returns the new path's
    IceConnected; raises TunnelError (exit 11 with how long it tried, or a final refusal at once)."""
    if lost.exit_code in FINAL or timeout <= 0:
        raise lost
    yield Detach()
    yield Say(lost_line(lost.message, timeout))
    started = (yield clock).monotonic
    delay = FIRST_DELAY
    attempts = 0
    last = lost.message
    while True:
        attempts += 1
        remaining = timeout - ((yield clock).monotonic - started)
        try:
            connected = yield from quiet(establish(max(FIRST_DELAY, remaining)))
        except TunnelError as exc:
            if exc.exit_code in FINAL:
                raise
            last = exc.message
        else:
            elapsed = (yield clock).monotonic - started
            yield Say(back_line(elapsed, attempts, connected.connection_type))
            return connected
        yield Detach()
        elapsed = (yield clock).monotonic - started
        if elapsed + delay > timeout:
            raise gave_up(elapsed, attempts, last)
        yield Sleep(delay)
        delay = min(delay * 2, MAX_DELAY)
