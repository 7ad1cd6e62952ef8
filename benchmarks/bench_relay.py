"""Throughput and datagram round trip of `tunnel relay` between two real iroh endpoints, direct UDP blocked.

The script re-executes itself in a private network namespace (``unshare -n``: only ``lo``, root needed), drops
every UDP packet there with nftables so the endpoints cannot hole-punch, starts ``tunnel relay --dev`` as its
own process (so the relay does not share a GIL with the endpoints), and measures:

* bulk: one bi-stream, ``--mib`` MiB from endpoint A to endpoint B, 256 KiB writes (iroh's copy fix applied);
* datagram round trip: ``--samples`` 64-byte QUIC datagrams echoed by B (median, p90).

Reference: the prototype relay of shared/reference/iroh.md moved 59-71 MB/s with a ~1.3 ms round trip.

Run: python benchmarks/bench_relay.py [--mib 64] [--samples 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.private_net import reexec_in_private_net  # noqa: E402

ALPN = b"relaybench/1"
CHUNK = 256 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"relay did not start on port {port}")


async def bench(url: str, mib: int, samples: int) -> dict:
    import iroh
    from iroh import iroh_ffi

    iroh_ffi.uniffi_set_event_loop(asyncio.get_running_loop())
    try:
        from tunnel_iroh.ffi import apply_copy_fix

        fixed = apply_copy_fix(iroh_ffi)
    except ImportError:
        fixed = False

    async def endpoint() -> iroh.Endpoint:
        relays = iroh.RelayMap.empty()
        relays.insert(iroh.RelayConfig(url=url, quic_port=None))
        return await iroh.Endpoint.bind(iroh.EndpointOptions(
            preset=iroh.preset_minimal(), alpns=[ALPN], relay_mode=iroh.RelayMode.custom(relays),
            bind_addr="127.0.0.1:0"))

    a, b = await endpoint(), await endpoint()
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(a.online(), b.online()), 15)
    online_ms = (time.perf_counter() - start) * 1000
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        incoming = await b.accept_next()
        conn = await (await incoming.accept()).connect()
        accepted.set_result(conn)

        async def echo() -> None:
            while True:
                conn.send_datagram(await conn.read_datagram())

        echo_task = asyncio.create_task(echo())
        bi = await conn.accept_bi()
        received = 0
        recv = bi.recv()
        while chunk := await recv.read(1 << 20):
            received += len(chunk)
        await bi.send().write_all(received.to_bytes(8, "big"))
        await bi.send().finish()
        await echo_task

    server = asyncio.create_task(serve())
    start = time.perf_counter()
    conn = await asyncio.wait_for(a.connect(iroh.EndpointAddr(b.id(), url, []), ALPN), 10)
    connect_ms = (time.perf_counter() - start) * 1000
    await accepted

    rtts = []
    for i in range(samples):
        message = i.to_bytes(4, "big") + bytes(60)
        sent = time.perf_counter()
        conn.send_datagram(message)
        while await asyncio.wait_for(conn.read_datagram(), 5) != message:
            pass
        rtts.append((time.perf_counter() - sent) * 1000)

    total = mib * 1024 * 1024
    payload = bytes(CHUNK)
    bi = await conn.open_bi()
    start = time.perf_counter()
    send = bi.send()
    for _ in range(total // CHUNK):
        await send.write_all(payload)
    await send.finish()
    received = int.from_bytes(await bi.recv().read_to_end(8), "big")
    elapsed = time.perf_counter() - start
    assert received == total, (received, total)
    selected = [("relay" if p.is_relay else "ip") for p in conn.paths() if p.is_selected]
    server.cancel()
    conn.close(0, b"done")
    await a.close()
    await b.close()
    rtts.sort()
    return {
        "copy_fix": fixed,
        "online_ms": round(online_ms),
        "connect_ms": round(connect_ms, 1),
        "bulk_MiB": mib,
        "bulk_MBps": round(total / elapsed / 1e6, 1),
        "dgram_rtt_ms_median": round(statistics.median(rtts), 3),
        "dgram_rtt_ms_p90": round(rtts[int(len(rtts) * 0.9) - 1], 3),
        "selected_path": selected,
    }


def inside(args: argparse.Namespace) -> dict:
    rules = ("add table inet relaybench\n"
             "add chain inet relaybench out { type filter hook output priority 0; policy accept; }\n"
             "add rule inet relaybench out meta l4proto udp drop\n")
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
    port = free_port()
    relay = subprocess.Popen([sys.executable, "-m", "tunnel_asyncio.cli", "relay", "--dev", "--bind",
                              f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "TUNNEL_LOG": "warning"})
    try:
        wait_for_port(port)
        result = asyncio.run(bench(f"http://127.0.0.1:{port}", args.mib, args.samples))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        health = json.loads(raw.partition(b"\r\n\r\n")[2])
        result["relay_bytes_forwarded"] = health["bytes_forwarded"]
        return result
    finally:
        relay.terminate()
        relay.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    code = reexec_in_private_net()
    if code is not None:
        return code
    result = inside(args)
    for key, value in result.items():
        print(f"{key:22} {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
