"""Running iroh mode as a process: one event loop, SIGINT/SIGTERM as an orderly stop (close code 0 ``done``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from tunnel_core.iroh_session.options import IrohClientOptions, IrohServerOptions
from tunnel_iroh.client import IrohClient
from tunnel_iroh.server import IrohServer

log = logging.getLogger("tunnel_iroh")


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _until(stop: asyncio.Event, work: Any) -> None:
    """Run ``work`` until it ends or a stop signal arrives; its exception (a TunnelError) propagates."""
    main = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
    if main.done() and not main.cancelled():
        main.result()


async def serve(options: IrohServerOptions) -> None:
    stop = _stop_event()
    server = IrohServer(options)
    try:
        await server.start()
        await _until(stop, server.serve())
    finally:
        log.info("Server stopping")
        await server.close()


async def client(options: IrohClientOptions) -> None:
    stop = _stop_event()
    tunnel = IrohClient(options)
    try:
        await tunnel.start()
        await _until(stop, tunnel.wait())
    finally:
        await tunnel.close()


def run_iroh_server(options: IrohServerOptions) -> None:
    asyncio.run(serve(options))


def run_iroh_client(options: IrohClientOptions) -> None:
    asyncio.run(client(options))
