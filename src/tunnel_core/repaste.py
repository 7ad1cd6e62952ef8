"""Manual mode's fresh paste (issue 15 item 2): a client on a terminal whose held tunnel stays lost prints a new
OFFER and takes the new server's ANSWER, while it keeps probing the old path.

Why: manual mode has no signalling channel to run again. Probing the server's known candidates with the session's
credentials (tunnel_core.ice.roaming) finds a server that is still there; a server that was restarted has new ICE
credentials and a new certificate and can only be reached through a new exchange - and the only channel for one
is the person at the terminal. So, only when stdin is a terminal, after ``PASTE_AFTER`` seconds of failed probes
the client says once how to recover and builds a *spare* tunnel beside the held one (new sockets, new ICE
credentials, gathered like the first one); its OFFER goes to the restarted server, as at the start (client-first,
upstream's direction), and the pasted ANSWER brings the spare up. Only once it is ready does it replace the held
tunnel (``Promote``): the local listeners stay bound, connections open on the lost tunnel are reset with one line
each (manual mode has no durable streams, docs/durable.md), new ones are served on the new tunnel. If the old path
answers first, the spare is dropped and nothing changes. docs/reconnect.md "Manual mode".
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal

from tunnel_core import manual
from tunnel_core.blocks import decode_answer, encode_block
from tunnel_core.dialogue import (
    BindHostSockets,
    Dialogue,
    DropSpare,
    EndOfInput,
    LocalForward,
    OnSpare,
    Poke,
    PrintBlock,
    Promote,
    ReadBlock,
    ReverseForward,
    Say,
    Start,
    Wait,
    _checked_ice,
    _start_checks,
    client_end,
    forward_routes,
    mapped,
    several,
    start_peer,
    until_up,
)
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.options import ExitCode, ManualClientOptions, TunnelError
from tunnel_core.peer import TunnelClosed

#: Seconds of failed probes after consent was lost (itself 30 s without an answer) before the client asks for a
#: fresh paste: five rounds of re-checks (every 2 s) - a path that merely broke for a moment has been found again
#: by then, while a person at the terminal is not kept waiting long after the server went away.
PASTE_AFTER = 10.0

Outcome = Literal["back", "failed", "eof", "promoted"]


def recover_lines(timeout: float) -> list[str]:
    """What the person reads once when asked for a fresh paste (the OFFER and the prompt follow)."""
    return [
        f"No answer from the server's known addresses for {PASTE_AFTER:g}s after the tunnel was lost: if the server "
        "was restarted, or moved, start `tunnel server manual` there again, paste this new OFFER into it and paste "
        "its ANSWER here.",
        f"Still looking for the old path meanwhile (giving up after {timeout:g}s in all); connections open on the "
        "old tunnel are reset when the new one takes over.",
    ]


def hold_or_paste(
    opts: ManualClientOptions, rng: Callable[[int], bytes], forwards: Sequence[LocalForward],
    reverses: Sequence[ReverseForward], protocol: str,
) -> Dialogue:
    """The client's life after its first tunnel is up, on a terminal: hold a lost tunnel (the Peer does that),
    and when it stays lost, offer a fresh paste; as often as the tunnel is lost, until it ends (exit 11) or
    the user stops it."""
    urls = [f.url() for f in forwards] + [r.url() for r in reverses]
    explained = False  # the how-to-recover lines: once per loss, not again with the OFFER after a failed try
    while True:
        held = yield Wait("held")
        if isinstance(held, TunnelClosed):
            raise client_end(held)
        back = yield Wait("back", timeout=PASTE_AFTER)
        if isinstance(back, TunnelClosed):
            raise client_end(back)
        if back is not None:
            explained = False
            continue
        outcome = yield from _fresh_paste(opts, rng, forwards, reverses, urls, protocol, explain=not explained)
        explained = outcome == "failed"
        if outcome == "eof":  # no more input on the terminal: hold as without one
            closed = yield Wait("closed")
            raise client_end(closed)


def _on_spare(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Run ``gen`` (a step written for the one tunnel) against the spare tunnel: its tunnel effects are wrapped in
    ``OnSpare``, the rest (lines, name resolution) pass as they are."""
    return mapped(gen, lambda e: OnSpare(e) if isinstance(e, BindHostSockets | Start | Poke | Wait) else e)


def _fresh_paste(
    opts: ManualClientOptions, rng: Callable[[int], bytes], forwards: Sequence[LocalForward],
    reverses: Sequence[ReverseForward], urls: Sequence[str], protocol: str, *, explain: bool,
) -> Generator[Any, Any, Outcome]:
    """One fresh exchange on a spare tunnel: "promoted" (it replaced the held one), "back" (the old path answered
    first), "failed" (it did not come up; the held tunnel goes on) or "eof" (the terminal's input ended)."""
    if explain:
        for line in recover_lines(opts.reconnect_timeout):
            yield Say(line)
    pins: dict[str, str] = {}
    spec: dict[str, Any] = {"protocol": protocol}
    try:
        peer, _ = yield from _on_spare(start_peer(opts.ice, rng=rng, is_client=True, identity=None, pins=pins,
                                                  session_spec=spec, hold=opts.reconnect_timeout, durable=False))
    except TunnelError as exc:
        yield DropSpare()
        yield Say(f"Error: cannot prepare a new OFFER: {exc.message}")
        return "failed"
    yield Say(manual.OFFER_TITLE)
    yield PrintBlock(encode_block("OFFER", manual.make_offer(peer.ice, urls[0], urls[1:])))
    while True:
        yield Say(manual.PROMPT_FOR_ANSWER)
        try:
            got = yield ReadBlock("ANSWER", interrupt="back")
        except EndOfInput:
            yield DropSpare()
            yield Say("The terminal's input ended: no fresh paste; still looking for the old path")
            return "eof"
        except TunnelError as exc:
            if exc.exit_code != ExitCode.USAGE:
                raise
            yield Say(f"Error: {exc.message}")  # a malformed paste: say so, ask again
            continue
        if isinstance(got, TunnelClosed):
            yield DropSpare()
            raise client_end(got)
        if not isinstance(got, str):
            yield DropSpare()
            yield Say("The old path answers again: the OFFER above is not needed (a block pasted now is ignored)")
            return "back"
        try:
            answer = decode_answer(got)
            pins["server"] = manual.answer_fingerprint(answer)
            verdicts = answer.forward_verdicts if several(forwards, reverses) else None
            spec["routes"] = forward_routes(forwards, verdicts, reverses)
            remote = _checked_ice(answer)
        except RemoteProtocolError as exc:
            yield Say(f"Error: {exc}")
            continue
        except TunnelError as exc:
            yield Say(f"Error: {exc.message}")
            continue
        break
    try:
        yield from _on_spare(_start_checks(peer, remote))
        connected = yield from _on_spare(until_up(peer, "Timeout during QUIC handshake",
                                                  "Connected to server over QUIC."))
    except TunnelError as exc:
        yield DropSpare()
        yield Say(f"Error: the new tunnel did not come up: {exc.message}; the old one is still held")
        return "failed"
    yield Promote()
    yield Say(f"Tunnel back on a new session from the pasted ANSWER: {connected.connection_type}")
    for index, fwd in enumerate(forwards):
        if verdicts is not None and verdicts[index]:
            yield Say(f"Forward {fwd.name()} refused by the new server: {verdicts[index]}")
    return "promoted"
