"""A Nostr relay for the NAT lab, run *inside* the lab's public-side namespace: ``python nostr_relay.py IP PORT``.

Why a separate program: nostr mode signals through a relay both peers reach over the (fake) internet, and the lab's
namespaces are only reachable from processes living in them; the test process stays in the host namespace. It is
nostr-sdk's in-process LocalRelay (as tests/nostr/conftest.py uses on loopback), which refuses kind 24242, so the
suite runs both sides with ``--event-kind 24243``. Prints "ready" once listening; runs until killed or for at most
``--lifetime`` seconds (every lab tears it down long before that).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def serve(ip: str, port: int, lifetime: float) -> None:
    import nostr_sdk

    relay = nostr_sdk.LocalRelayBuilder().addr(ip).port(port).build()
    await relay.run()
    print("ready", flush=True)
    try:
        await asyncio.sleep(lifetime)
    finally:
        relay.shutdown()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--lifetime", type=float, default=900.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.ip, args.port, args.lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
