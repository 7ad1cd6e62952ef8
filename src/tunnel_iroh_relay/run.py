"""Running a relay as a program: start, report the URL, stop gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from tunnel_core.iroh_relay import RelayOptions
from tunnel_iroh_relay.server import RelayService

__all__ = ["run_relay", "serve"]

log = logging.getLogger("tunnel_iroh_relay")


async def serve(options: RelayOptions, *, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or a termination signal arrives; then send Restarting and close."""
    stop = stop or asyncio.Event()
    service = RelayService(options)
    await service.start()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
            pass
    print(f"Relay listening on {service.url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info("shutting down: sending Restarting to %d clients", service.machine.client_count)
        await service.aclose()


def run_relay(options: RelayOptions) -> None:
    asyncio.run(serve(options))
