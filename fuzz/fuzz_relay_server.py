"""Atheris harness for the sans-IO relay server machine driven by hostile clients, before and after the handshake.

The input is a script: a policy (queue depth, tokens, allow-list, rate limit), then steps for up to four
connections of two endpoint ids - arbitrary binary messages (garbage, or a valid frame cut into arbitrary
pieces), valid ClientAuth / datagram / Pong frames, ping floods, bursts of maximal datagrams (rate limit, full
queues), partial reads of the outgoing queues, clock jumps with timers, lost connections, reconnects and
shutdown. The adapter's side is played faithfully: a CloseConnection is flushed and followed by connection_lost.
Whatever the clients send, the machine must never raise; it may only answer with its documented events (close
codes 1001/1002/1008, ClientDenied only with a 1008 close, ClientAuthenticated only within the policy), every
queued message must be a valid relay->client frame (a datagram naming a known source), no queue may grow beyond
``queue_depth + CONTROL_HEADROOM``, and the machine may keep no state for connections the adapter dropped.

Run: python fuzz/fuzz_relay_server.py -atheris_runs=2000
"""

import itertools
import sys

import atheris

with atheris.instrument_imports():
    from tunnel_core.iroh_relay import frames as fr
    from tunnel_core.iroh_relay.config import RelayPolicy
    from tunnel_core.iroh_relay.events import (
        ClientAuthenticated,
        ClientDenied,
        ClientLeft,
        CloseCode,
        CloseConnection,
        OutputReady,
    )
    from tunnel_core.iroh_relay.handshake import sign_challenge
    from tunnel_core.iroh_relay.server import CONTROL_HEADROOM, RelayServer

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRETS = (bytes([1] * 32), bytes([2] * 32))
IDS = tuple(Ed25519PrivateKey.from_private_bytes(s).public_key().public_bytes_raw() for s in SECRETS)
TOKEN = "s3cret"
MAX_CONNS = 4
MAX_STEPS = 64
#: Close codes the machine documents: shutdown/ping timeout, bad frames, refused authentication.
CLOSE_CODES = {CloseCode.GOING_AWAY, CloseCode.PROTOCOL_ERROR, CloseCode.POLICY_VIOLATION}
#: What a relay ever sends to a client.
SERVER_FRAMES = (fr.ServerChallenge, fr.ServerConfirmsAuth, fr.ServerDeniesAuth, fr.RelayToClientDatagram,
                 fr.RelayToClientDatagramBatch, fr.EndpointGone, fr.Ping, fr.Pong, fr.Health, fr.Restarting,
                 fr.Status)


def _counter_rng():
    counter = itertools.count()
    return lambda n: bytes((next(counter) * 7 + i) % 256 for i in range(n))


class Sim:
    """The adapter plus up to MAX_CONNS clients, checking every answer the machine gives."""

    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        depth = fdp.ConsumeIntInRange(1, 6)
        rate = fdp.ConsumeIntInRange(0, 3)
        self.policy = RelayPolicy(
            tokens=frozenset({TOKEN}) if fdp.ConsumeBool() else frozenset(),
            allowed_endpoints=frozenset({IDS[0]}) if fdp.ConsumeIntInRange(0, 3) == 0 else None,
            rate_limit=None if rate == 0 else 1000 * rate,
            queue_depth=depth,
        )
        self.limit = depth + CONTROL_HEADROOM
        self.server = RelayServer(rng=_counter_rng(), policy=self.policy)
        self.now = 0.0
        self.key: dict[int, int] = {}  # live conn -> index into SECRETS
        self.challenge: dict[int, fr.ServerChallenge] = {}
        self.last_ping: dict[int, bytes] = {}
        self.authed: set[int] = set()
        self.token: dict[int, str | None] = {}
        self.denied: set[int] = set()

    # ------------------------------------------------------------------------------------------ adapter

    def connect(self, key: int, token: str | None, version: int) -> None:
        if len(self.key) >= MAX_CONNS:
            return
        conn = self.server.connect(self.now, version=version, token=token)
        self.key[conn] = key
        self.token[conn] = token
        self.settle()
        if conn in self.key:  # not refused by a shutdown
            frames = self.read(conn, None)
            assert frames and isinstance(frames[0], fr.ServerChallenge), frames
            self.challenge[conn] = frames[0]

    def send(self, conn: int, data: bytes) -> None:
        self.server.receive_frame(conn, data, self.now)
        self.settle()

    def read(self, conn: int, limit: int | None) -> list[fr.Frame]:
        out = self.server.take_outgoing(conn, limit)
        if limit is not None:
            assert len(out) <= limit
        frames = []
        for data in out:
            frame = fr.decode_frame(data)  # the relay only ever sends well-formed frames
            assert isinstance(frame, SERVER_FRAMES), frame
            if isinstance(frame, fr.RelayToClientDatagram | fr.RelayToClientDatagramBatch):
                assert frame.src in IDS, frame
            if isinstance(frame, fr.Ping):
                self.last_ping[conn] = frame.data
            frames.append(frame)
        return frames

    def lose(self, conn: int) -> None:
        self.server.connection_lost(conn, self.now, "fuzz: stream gone")
        self.server.connection_lost(conn, self.now, "fuzz: twice")  # documented as safe
        self.key.pop(conn, None)
        self.authed.discard(conn)
        assert self.server.endpoint_of(conn) is None and self.server.pending(conn) == 0
        self.settle()

    def settle(self) -> None:
        """Carry out the machine's events the way an adapter does, checking each against the documentation."""
        while (event := self.server.next_event()) is not None:
            if isinstance(event, CloseConnection):
                assert event.code in CLOSE_CODES, event
                assert event.conn_id not in self.denied or event.code is CloseCode.POLICY_VIOLATION, event
                assert event.conn_id in self.key, event
                self.read(event.conn_id, None)  # flush
                self.server.connection_lost(event.conn_id, self.now)
                assert self.server.take_outgoing(event.conn_id) == []
                self.key.pop(event.conn_id)
                self.authed.discard(event.conn_id)
            elif isinstance(event, ClientDenied):
                assert event.endpoint_id is None or event.endpoint_id in IDS
                assert event.conn_id not in self.authed
                self.denied.add(event.conn_id)
            elif isinstance(event, ClientAuthenticated):
                assert event.conn_id in self.key and event.endpoint_id == IDS[self.key[event.conn_id]]
                assert not self.policy.tokens or self.token[event.conn_id] == TOKEN, event
                allowed = self.policy.allowed_endpoints
                assert allowed is None or event.endpoint_id in allowed, event
                self.authed.add(event.conn_id)
            elif isinstance(event, ClientLeft):
                assert event.endpoint_id in IDS
            else:
                assert isinstance(event, OutputReady), event
        self.check()

    def check(self) -> None:
        for conn in self.key:
            assert self.server.pending(conn) <= self.limit, (conn, self.server.pending(conn))
        assert self.server.client_count <= len(IDS)
        # No leak: the machine holds exactly the connections the adapter still has, and per-id state only for ids
        # that exist (peeking at private state is the only way to see memory that no public call reports).
        assert len(self.server._clients) == len(self.key)
        assert set(self.server._by_id) <= set(IDS) and set(self.server._sent_to) <= set(self.server._by_id)
        for conn in self.authed:
            assert self.server.endpoint_of(conn) == IDS[self.key[conn]]
        for index, endpoint in enumerate(IDS):
            active = self.server.active_connection(endpoint)
            assert active is None or (active in self.authed and self.key[active] == index)
        timer = self.server.get_timer()
        assert timer is None or timer == timer  # never NaN
        pause = self.server.read_pause(next(iter(self.key), 0), self.now)
        assert 0.0 <= pause < float("inf")


def _pick(fdp: atheris.FuzzedDataProvider, sim: Sim) -> int | None:
    conns = sorted(sim.key)
    return conns[fdp.ConsumeIntInRange(0, len(conns) - 1)] if conns else None


def _step(fdp: atheris.FuzzedDataProvider, sim: Sim) -> None:
    op = fdp.ConsumeIntInRange(0, 12)
    if op == 0:
        token = (TOKEN, None, fdp.ConsumeBytes(8).decode("latin-1"))[fdp.ConsumeIntInRange(0, 2)]
        sim.connect(fdp.ConsumeIntInRange(0, 1), token, fdp.ConsumeIntInRange(1, 2))
        return
    conn = _pick(fdp, sim)
    if conn is None:
        return
    if op == 1:  # arbitrary message, before or after the handshake
        sim.send(conn, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))
    elif op == 2:  # a valid handshake answer, possibly from the wrong key or to a stale challenge
        signer = fdp.ConsumeIntInRange(0, 1)
        auth = sign_challenge(SECRETS[signer], sim.challenge[conn])
        if signer != sim.key[conn]:
            auth = fr.ClientAuth(IDS[sim.key[conn]], auth.signature)  # claims the id without the key
        sim.send(conn, fr.encode_frame(auth))
    elif op == 3:  # a datagram frame to either id (or garbage id), maybe with a multi-byte frame type
        dst = (IDS[0], IDS[1], fdp.ConsumeBytes(32).ljust(32, b"\0"))[fdp.ConsumeIntInRange(0, 2)]
        contents = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        frame: fr.Frame
        if fdp.ConsumeBool():
            frame = fr.ClientToRelayDatagram(dst, fdp.ConsumeIntInRange(0, 255), contents)
        else:
            frame = fr.ClientToRelayDatagramBatch(dst, fdp.ConsumeIntInRange(0, 255),
                                                  fdp.ConsumeIntInRange(0, 0xFFFF), contents)
        data = fr.encode_frame(frame)
        if fdp.ConsumeBool():
            data = bytes((0x40, data[0])) + data[1:]  # same type as a two-byte QUIC varint
        for _ in range(fdp.ConsumeIntInRange(1, 8)):  # bursts fill the destination's queue
            sim.send(conn, data)
            if conn not in sim.key:
                break
    elif op == 4:  # a valid frame cut into arbitrary messages, as a confused client might send it
        data = fr.encode_frame(fr.Ping(fdp.ConsumeBytes(8).ljust(8, b"\0")) if fdp.ConsumeBool()
                               else sign_challenge(SECRETS[sim.key[conn]], sim.challenge[conn]))
        cut = fdp.ConsumeIntInRange(0, len(data))
        for piece in (data[:cut], data[cut:]):
            if conn in sim.key:
                sim.send(conn, piece)
    elif op == 5:  # answer (or mis-answer) the latest ping
        data = sim.last_ping.get(conn, bytes(8))
        if fdp.ConsumeBool():
            data = fdp.ConsumeBytes(8).ljust(8, b"\0")
        sim.send(conn, fr.encode_frame(fr.Pong(data)))
    elif op == 6:  # the writer takes some, or none, of the queue
        sim.read(conn, fdp.ConsumeIntInRange(0, 3) or None)
    elif op == 7:  # time passes: handshake timeouts, pings, ping timeouts, token refills
        sim.now += (0.5, 3.0, 11.0, 21.0)[fdp.ConsumeIntInRange(0, 3)]
        timer = sim.server.get_timer()
        if timer is not None and timer <= sim.now:
            sim.server.handle_timer(sim.now)
        sim.settle()
    elif op == 8:
        sim.lose(conn)
    elif op == 9:  # a ping flood without reading: control headroom must cap the queue
        ping = fr.encode_frame(fr.Ping(bytes(8)))
        for _ in range(fdp.ConsumeIntInRange(1, 100)):
            if conn not in sim.key:
                break
            sim.send(conn, ping)
    elif op == 12:  # bulk at the largest legal size (or one byte over): rate limit, full queues, oversize
        dst = IDS[fdp.ConsumeIntInRange(0, 1)]
        over = fdp.ConsumeIntInRange(0, 7) == 0
        big = fr.encode_frame(fr.ClientToRelayDatagram(dst, 0, bytes(fr.MAX_PACKET_SIZE - 33 + over)))
        for _ in range(fdp.ConsumeIntInRange(1, 40)):
            if conn not in sim.key:
                break
            sim.send(conn, big)
        if conn in sim.key:
            assert sim.server.read_pause(conn, sim.now) >= 0.0
    elif op == 10:
        sim.send(conn, bytes((fdp.ConsumeIntInRange(0, 13),)) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80)))
    elif fdp.ConsumeIntInRange(0, 7) == 0:
        sim.server.shutdown(sim.now)
        sim.settle()
        assert not sim.key, sim.key  # everyone is told to go and closed


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    sim = Sim(fdp)
    sim.connect(0, TOKEN, 2)
    sim.connect(1, TOKEN, fdp.ConsumeIntInRange(1, 2))
    for _ in range(MAX_STEPS):
        if fdp.remaining_bytes() == 0:
            break
        _step(fdp, sim)
    for conn in list(sim.key):
        sim.lose(conn)
    assert sim.server.client_count == 0 and sim.server.get_timer() is None


if __name__ == "__main__":
    # Structured inputs need room from the first run: by default libFuzzer grows inputs slowly and would spend a
    # short run (CI does 3000) on inputs of a few bytes that never get past the first steps.
    argv = sys.argv if any(a.startswith("-len_control") for a in sys.argv) else [*sys.argv, "-len_control=0"]
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
