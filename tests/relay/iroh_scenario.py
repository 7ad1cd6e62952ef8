"""Real iroh endpoints (PyPI ``iroh``) through our relay, inside a private network namespace.

Run as ``unshare -n python tests/relay/iroh_scenario.py MODE``: the namespace has only ``lo``, so iroh can
neither reach nor advertise any address but loopback, and the firewall rule of ``blocked`` cannot touch the
host. Prints one JSON line of measurements; exits non-zero on any failure. Modes:

* ``direct``  - connect by id + relay URL, exchange a stream and datagrams, wait for the direct path;
* ``blocked`` - the same with every UDP packet dropped by nftables: traffic must stay on the relay;
* ``token``   - a relay requiring a Bearer token: the wrong token never gets online, the right one does;
* ``tunnel``  - ``tunnel relay`` + ``tunnel server iroh`` + ``tunnel client iroh`` as processes, UDP blocked:
  a TCP echo crosses the iroh-mode tunnel, which can only run through the relay.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import iroh
from iroh import iroh_ffi

from tunnel_core.iroh_relay import RelayOptions, RelayPolicy
from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key
from tunnel_iroh_relay import RelayService

ALPN = b"relaytest/1"
STREAM_BYTES = 2 * 1024 * 1024


def setup_namespace(block_udp: bool) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if block_udp:
        # The relay is TCP (WebSocket) and QAD is off, so dropping every UDP packet leaves exactly one path
        # between the endpoints: the relay.
        rules = (
            "add table inet relaytest\n"
            "add chain inet relaytest out { type filter hook output priority 0; policy accept; }\n"
            "add rule inet relaytest out meta l4proto udp drop\n"
        )
        subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)


def apply_copy_fix() -> bool:
    try:
        from tunnel_iroh.ffi import apply_copy_fix as fix
    except ImportError:
        return False
    return fix(iroh_ffi)


async def endpoint(url: str, token: str | None = None) -> iroh.Endpoint:
    relays = iroh.RelayMap.empty()
    relays.insert(iroh.RelayConfig(url=url, quic_port=None, auth_token=token))
    return await iroh.Endpoint.bind(iroh.EndpointOptions(
        preset=iroh.preset_minimal(), alpns=[ALPN], relay_mode=iroh.RelayMode.custom(relays),
        bind_addr="127.0.0.1:0",
    ))


def selected(conn: iroh.Connection) -> str:
    for path in conn.paths():
        if path.is_selected:
            return "relay" if path.is_relay else "direct"
    return "none"


async def echo_server(ep: iroh.Endpoint) -> None:
    incoming = await ep.accept_next()
    assert incoming is not None
    conn = await (await incoming.accept()).connect()

    async def streams() -> None:
        while True:
            bi = await conn.accept_bi()
            data = await bi.recv().read_to_end(16 * STREAM_BYTES)
            await bi.send().write_all(data)
            await bi.send().finish()

    async def datagrams() -> None:
        while True:
            conn.send_datagram(await conn.read_datagram())

    await asyncio.gather(streams(), datagrams())


async def exchange(conn: iroh.Connection, result: dict) -> None:
    payload = bytes(range(256)) * (STREAM_BYTES // 256)
    start = time.perf_counter()
    bi = await conn.open_bi()
    await bi.send().write_all(payload)
    await bi.send().finish()
    echoed = await bi.recv().read_to_end(2 * STREAM_BYTES)
    elapsed = time.perf_counter() - start
    assert echoed == payload, "stream echo differs"
    result["stream_echo_MBps"] = round(2 * len(payload) / elapsed / 1e6, 1)
    rtts = []
    for i in range(30):
        message = b"dgram-%d" % i
        sent = time.perf_counter()
        conn.send_datagram(message)
        while await asyncio.wait_for(conn.read_datagram(), 5) != message:
            pass
        rtts.append((time.perf_counter() - sent) * 1000)
    result["datagram_rtt_ms_median"] = round(statistics.median(rtts), 3)


async def run(mode: str) -> dict:
    iroh_ffi.uniffi_set_event_loop(asyncio.get_running_loop())
    result: dict = {"mode": mode, "copy_fix": apply_copy_fix()}
    tokens = frozenset({"good-token"}) if mode == "token" else frozenset()
    relay = RelayService(RelayOptions(bind=("127.0.0.1", 0), policy=RelayPolicy(tokens=tokens), shutdown_grace=0.2))
    await relay.start()
    url = relay.url
    try:
        if mode == "token":
            bad = await endpoint(url, token="wrong-token")
            try:
                await asyncio.wait_for(bad.online(), 3)
                result["wrong_token_online"] = True
            except TimeoutError:
                result["wrong_token_online"] = False
            result["denied"] = relay.machine.stats.clients_denied
            good = await endpoint(url, token="good-token")
            await asyncio.wait_for(good.online(), 10)
            result["right_token_online"] = True
            result["home_relay"] = good.addr().relay_url()
            await bad.close()
            await good.close()
            return result
        a, b = await endpoint(url), await endpoint(url)
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(a.online(), b.online()), 10)
        result["online_ms"] = round((time.perf_counter() - start) * 1000)
        result["home_relay"] = b.addr().relay_url()
        server = asyncio.create_task(echo_server(b))
        start = time.perf_counter()
        # Only the id and the relay URL: no direct addresses are given.
        conn = await asyncio.wait_for(a.connect(iroh.EndpointAddr(b.id(), url, []), ALPN), 10)
        result["connect_ms"] = round((time.perf_counter() - start) * 1000, 1)
        result["path_at_connect"] = selected(conn)
        await exchange(conn, result)
        if mode == "direct":
            deadline = time.monotonic() + 8
            while selected(conn) != "direct" and time.monotonic() < deadline:
                conn.send_datagram(b"nudge")
                await asyncio.sleep(0.05)
        result["path_final"] = selected(conn)
        result["paths"] = sorted({"relay" if p.is_relay else "ip" for p in conn.paths()})
        result["relay_frames_forwarded"] = relay.machine.stats.frames_forwarded
        result["relay_bytes_forwarded"] = relay.machine.stats.bytes_forwarded
        server.cancel()
        conn.close(0, b"done")
        await a.close()
        await b.close()
        return result
    finally:
        await relay.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_key(path: pathlib.Path, seed: int) -> str:
    raw = bytes([seed] * 32)
    path.write_text(format_secret_key(raw))
    return format_endpoint_id(endpoint_id_from_secret(raw))


async def tunnel_scenario() -> dict:
    """The iroh-mode CLI (another module's work) through our relay, with direct UDP impossible."""
    result: dict = {"mode": "tunnel"}
    tmp = pathlib.Path(tempfile.mkdtemp())
    server_id = write_key(tmp / "server.key", 11)
    client_id = write_key(tmp / "client.key", 12)
    relay_port, local_port = free_port(), free_port()
    url = f"http://127.0.0.1:{relay_port}"

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    cli = [sys.executable, "-m", "tunnel_asyncio.cli"]
    common = ["--relay-url", url, "--dns-server", "none", "--bind-addr", "127.0.0.1:0"]
    procs = [await asyncio.create_subprocess_exec(*cli, "relay", "--dev", "--bind", f"127.0.0.1:{relay_port}",
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        await asyncio.sleep(0.5)
        procs.append(await asyncio.create_subprocess_exec(
            *cli, "server", "iroh", *common, "--allowed-tcp", "127.0.0.0/8", "--secret-file",
            str(tmp / "server.key"), "--allowed-clients", client_id,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(await asyncio.create_subprocess_exec(
            *cli, "client", "iroh", *common, "-n", server_id, "-s", f"tcp://127.0.0.1:{echo_port}",
            "-t", f"127.0.0.1:{local_port}", "--secret-file", str(tmp / "client.key"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        payload = bytes(range(256)) * 4096
        start = time.perf_counter()
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        result["echo_ok"] = echoed == payload
        result["echo_MBps"] = round(2 * len(payload) / (time.perf_counter() - start) / 1e6, 1)
        writer.close()
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", relay_port)
        writer2.write(b"GET /healthz HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        health = json.loads((await reader2.read(-1)).partition(b"\r\n\r\n")[2])
        result["relay_bytes_forwarded"] = health["bytes_forwarded"]
        result["relay_clients"] = health["clients"]
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
        echo_server.close()
    return result


def main() -> int:
    mode = sys.argv[1]
    setup_namespace(block_udp=mode in ("blocked", "tunnel"))
    scenario = tunnel_scenario() if mode == "tunnel" else run(mode)
    result = asyncio.run(asyncio.wait_for(scenario, 60))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
