"""PeerTransport over real sockets on 127.0.0.1: delivery, reconnects, drops, refusals, cleanup."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable

import psutil
import pytest

from kalamdb.raftio.frames import (
    HEADER,
    PROTOCOL_VERSION,
    T_AUTH,
    T_DATA,
    T_HELLO,
    T_REFUSE,
    T_WELCOME,
    FrameDecoder,
    encode_frame,
    handshake_mac,
)
from kalamdb.raftio.transport import FrameTooLarge, PeerTransport
from kalamdb.testing.waiting import async_wait_for

SECRET = b"test-cluster-secret-0123456789"
SEED = int(os.environ.get("KALAMDB_TEST_SEED", random.randrange(1 << 30)))
LOCAL = "127.0.0.1"


async def wait_until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for a condition with a deadline (stats have no change notification)."""
    await async_wait_for(pred, timeout, f"{what} (seed {SEED})")


class Inbox:
    """Collects (src, payload) and lets a test wait for a count without sleeping."""

    def __init__(self):
        self.items: list[tuple[int, object]] = []
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def __call__(self, src, payload):
        self.items.append((src, payload))
        for n, fut in self._waiters:
            if len(self.items) >= n and not fut.done():
                fut.set_result(None)

    async def wait_for(self, n: int, timeout: float = 5.0):
        if len(self.items) < n:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise AssertionError(f"got {len(self.items)} of {n} messages (seed {SEED})") from None
        return self.items

    def payloads(self):
        return [p for _, p in self.items]


@pytest.fixture
async def make_node():
    """Factory of started transports; every one is stopped at the end, whatever happens."""
    print(f"transport test seed: {SEED}")
    started: list[PeerTransport] = []

    async def make(node_id: int, *, port: int = 0, secret: bytes = SECRET, **kw) -> tuple[PeerTransport, Inbox]:
        inbox = Inbox()
        kw.setdefault("rng", random.Random(SEED + node_id))
        t = PeerTransport(node_id, (LOCAL, port), secret, on_message=inbox, **kw)
        await t.start()
        started.append(t)
        return t, inbox

    try:
        yield make
    finally:
        for t in started:
            await t.stop()


def link(a: PeerTransport, b: PeerTransport) -> None:
    a.set_peer(b.node_id, (LOCAL, b.bound_port))
    b.set_peer(a.node_id, (LOCAL, a.bound_port))


async def read_frame(reader: asyncio.StreamReader, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        n = HEADER.unpack(await reader.readexactly(4))[0]
        return next(FrameDecoder(1 << 20).feed(HEADER.pack(n) + await reader.readexactly(n)))


async def read_refusal(reader: asyncio.StreamReader, timeout: float = 5.0) -> str:
    """The server's last word before it closes: [T_REFUSE, reason], then EOF."""
    msg = await read_frame(reader, timeout)
    assert msg[0] == T_REFUSE, msg
    async with asyncio.timeout(timeout):
        assert await reader.read() == b""  # and it really closed
    return msg[1]


async def raw_client(port: int, node_id: int, server_id: int, *, secret: bytes = SECRET,
                     cluster_id: str = "kalamdb"):
    """Speak the client side of the handshake by hand, so tests can misbehave after it."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    hello = await read_frame(reader)
    assert hello[:4] == [T_HELLO, PROTOCOL_VERSION, "kalamdb", server_id]
    cnonce = secrets.token_bytes(16)
    mac = handshake_mac(secret, "client", cluster_id, node_id, server_id, hello[4], cnonce)
    writer.write(encode_frame([T_AUTH, PROTOCOL_VERSION, cluster_id, node_id, server_id, cnonce, mac]))
    return reader, writer


async def authed_raw_client(port: int, node_id: int, server_id: int):
    reader, writer = await raw_client(port, node_id, server_id)
    welcome = await read_frame(reader)
    assert welcome[0] == T_WELCOME
    return reader, writer


# ---------------------------------------------------------------- delivery


async def test_messages_arrive_in_order_both_ways(make_node):
    a, inbox_a = await make_node(1)
    b, inbox_b = await make_node(2)
    link(a, b)
    n = 5000
    for i in range(n):
        assert a.send(2, ["append", i, b"x" * (i % 50)])
        if i % 500 == 0:
            await asyncio.sleep(0)  # let the writer run mid-stream, so several batches happen
    assert b.send(1, {"vote": True, "term": 3})
    items = await inbox_b.wait_for(n)
    assert items == [(1, ["append", i, b"x" * (i % 50)]) for i in range(n)]
    assert await inbox_a.wait_for(1) == [(2, {"vote": True, "term": 3})]
    await wait_until(lambda: a.stats["frames_sent"] == n, "sender counted every frame")
    assert b.stats["frames_received"] == n
    assert a.stats["bytes_sent"] == b.stats["bytes_received"]
    assert a.stats["dropped_total"] == 0


async def connected_with_write_log(make_node) -> tuple[PeerTransport, Inbox, list[int]]:
    """Node 1 linked to node 2 with its connection up ("first" delivered), and the sizes of every
    write() node 1 makes on it from now on."""
    a, _ = await make_node(1)
    b, inbox_b = await make_node(2)
    link(a, b)
    assert a.send(2, "first")
    await inbox_b.wait_for(1)  # connection up
    writes: list[int] = []
    writer = next(iter(a._writers))  # the only connection a has: the outbound one to b
    original = writer.write
    writer.write = lambda data: (writes.append(len(data)), original(data))[1]
    return a, inbox_b, writes


async def test_send_many_on_an_idle_link_is_written_at_once_in_one_write(make_node):
    a, inbox_b, writes = await connected_with_write_log(make_node)
    assert a.send_many(2, [["entry", i] for i in range(100)])
    assert len(writes) == 1, "an idle link's batch leaves inside send_many, before the caller's next step"
    assert a.send(2, "last")
    assert len(writes) == 1, "a single send is queued for the pump"
    items = await inbox_b.wait_for(102)
    assert [p for _, p in items] == ["first", *(["entry", i] for i in range(100)), "last"]
    assert len(writes) == 2


async def test_what_is_queued_goes_first_and_everything_shares_one_write(make_node):
    a, inbox_b, writes = await connected_with_write_log(make_node)
    assert a.send(2, "queued")
    assert a.send_many(2, [["entry", i] for i in range(100)])  # behind "queued", not before it
    assert a.send(2, "last")
    assert writes == []
    items = await inbox_b.wait_for(103)
    assert [p for _, p in items] == ["first", "queued", *(["entry", i] for i in range(100)), "last"]
    assert len(writes) == 1, f"expected one coalesced write, got {writes}"


async def test_on_message_exception_does_not_break_the_connection(make_node, caplog):
    seen = []

    def flaky(src, payload):
        seen.append(payload)
        if payload == 1:
            raise RuntimeError("callback bug")

    a, _ = await make_node(1)
    b = PeerTransport(2, (LOCAL, 0), SECRET, on_message=flaky)
    await b.start()
    try:
        link(a, b)
        for i in range(3):
            a.send(2, i)
        await wait_until(lambda: len(seen) == 3, "all three delivered")
        assert seen == [0, 1, 2]
        assert b.stats["callback_errors"] == 1
        assert b.stats["refused_total"] == 0
    finally:
        await b.stop()


async def test_large_payload_under_the_limit_passes(make_node):
    a, _ = await make_node(1, max_queue_bytes=128 << 20)
    b, inbox_b = await make_node(2)
    link(a, b)
    blob = random.Random(SEED).randbytes(50 * 1024 * 1024)
    assert a.send(2, ["snapshot", 0, blob])
    assert a.send(2, "after")
    items = await inbox_b.wait_for(2, timeout=30)
    assert items[0][1][2] == blob
    assert items[1] == (1, "after")


async def test_payload_over_the_limit_is_refused_at_the_sender(make_node):
    a, _ = await make_node(1, max_frame_bytes=1 << 16)
    b, _ = await make_node(2)
    link(a, b)
    with pytest.raises(FrameTooLarge):
        a.send(2, b"x" * (1 << 16))
    with pytest.raises(FrameTooLarge):
        a.send_many(2, [1, b"x" * (1 << 16)])
    with pytest.raises(TypeError):
        a.send(2, object())  # not msgpack-able: a caller bug, said loudly
    assert a.stats["peers"][2]["queued_frames"] == 0


# ---------------------------------------------------------------- drops and reconnects


def unused_port_refusing_connections() -> tuple[socket.socket, int]:
    """A bound, non-listening socket: connecting to it is refused, and nobody else can take it."""
    s = socket.socket()
    s.bind((LOCAL, 0))
    return s, s.getsockname()[1]


async def test_send_to_a_down_peer_returns_at_once_and_is_dropped(make_node):
    a, _ = await make_node(1, backoff_base=0.2, backoff_cap=0.4)
    holder, port = unused_port_refusing_connections()
    try:
        a.set_peer(2, (LOCAL, port))
        t0 = time.perf_counter()
        first = a.send(2, "hello")  # queued: we do not know yet that the peer is down
        elapsed = time.perf_counter() - t0
        assert first is True and elapsed < 0.05
        await wait_until(lambda: a.stats["peers"][2]["state"] == "backoff", "peer marked down")
        assert a.stats["dropped"]["connect_failed"] == 1
        t0 = time.perf_counter()
        results = [a.send(2, i) for i in range(1000)]
        assert time.perf_counter() - t0 < 0.5
        assert not any(results)
        assert a.stats["dropped"]["peer_down"] == 1000
        assert a.stats["connect_failures"] >= 1
        assert a.send(99, "nobody") is False
        assert a.stats["dropped"]["unknown_peer"] == 1
    finally:
        holder.close()


async def test_queue_is_bounded_and_drops_instead_of_growing(make_node):
    a, _ = await make_node(1, max_queue_frames=10, max_queue_bytes=1 << 20)
    b, inbox_b = await make_node(2)
    link(a, b)
    # No await between sends: the writer cannot run, so the queue only grows.
    results = [a.send(2, i) for i in range(50)]
    assert results == [True] * 10 + [False] * 40
    assert a.send_many(2, [1, 2]) is False
    assert a.stats["dropped"]["queue_full"] == 42
    await inbox_b.wait_for(10)
    assert inbox_b.payloads() == list(range(10))
    assert a.send(2, "room again") is True


async def test_reconnects_after_the_peer_restarts(make_node):
    a, _ = await make_node(1, backoff_base=0.01, backoff_cap=0.05)
    b, inbox_b = await make_node(2)
    link(a, b)
    assert a.send(2, "before")
    await inbox_b.wait_for(1)
    port = b.bound_port
    await b.stop()
    b2, inbox_b2 = await make_node(2, port=port)  # same id, same address: a restarted node
    b2.set_peer(1, (LOCAL, a.bound_port))
    sent = 0

    def delivered():
        nonlocal sent
        if not inbox_b2.items:
            a.send(2, ["after", sent])  # Raft keeps retrying; so do we, until one gets through
            sent += 1
        return bool(inbox_b2.items)

    await wait_until(delivered, "a message reaches the restarted peer")
    assert inbox_b2.items[0][0] == 1 and inbox_b2.items[0][1][0] == "after"
    assert a.stats["reconnects"] >= 1
    for i in range(100):
        assert a.send(2, ["steady", i])
    items = await inbox_b2.wait_for(101)
    assert [p for _, p in items[-100:]] == [["steady", i] for i in range(100)]


@pytest.mark.timeout(60)  # a writer that spins without yielding would hang the test: make it fail instead
@pytest.mark.parametrize(("how", "size"), [("send", 1 << 20), ("send_many", 1 << 20), ("send_many", 16 << 10)])
async def test_a_peer_that_stops_reading_is_dropped_after_the_stall_timeout(make_node, how, size):
    """A genuine peer (it knows the secret) that accepts and then never reads, like a paused process.
    `send_many` on an idle link writes directly: its backlog must be watched like the pump's own,
    also when what the kernel did not take is small (below the transport's high-water mark, where
    `drain()` returns at once: found by a CI run where a restarting peer froze a leader's Raft loop)."""
    release = asyncio.Event()

    async def deaf_peer(reader, writer):
        snonce = secrets.token_bytes(16)
        writer.write(encode_frame([T_HELLO, PROTOCOL_VERSION, "kalamdb", 2, snonce]))
        auth = await read_frame(reader)
        args = ("kalamdb", auth[3], 2, snonce, auth[5])
        writer.write(encode_frame([T_WELCOME, handshake_mac(SECRET, "server", *args)]))
        await release.wait()  # never read again
        writer.close()

    server = await asyncio.start_server(deaf_peer, LOCAL, 0)
    try:
        a, _ = await make_node(1, write_stall_timeout=0.3, max_queue_bytes=64 << 20)
        a.set_peer(2, (LOCAL, server.sockets[0].getsockname()[1]))
        chunk = b"x" * size
        sent = 0

        def stalled():
            nonlocal sent
            if a.stats["write_stalls"] == 0 and sent < 256 << 20:  # kernel buffers hold a few MiB at most
                sent += size * (a.send(2, chunk) if how == "send" else a.send_many(2, [chunk]))
            return a.stats["write_stalls"] == 1

        await wait_until(stalled, "the writer gives up on the deaf peer")
        assert a.stats["peers"][2]["state"] != "connected"
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_set_peer_to_a_new_address_moves_the_connection(make_node):
    a, _ = await make_node(1)
    b, inbox_b = await make_node(2)
    c, inbox_c = await make_node(2)  # node 2 moved to a new address
    link(a, b)
    c.set_peer(1, (LOCAL, a.bound_port))
    a.send(2, "to old")
    await inbox_b.wait_for(1)
    a.set_peer(2, (LOCAL, c.bound_port))
    a.send(2, "to new")
    assert await inbox_c.wait_for(1) == [(1, "to new")]
    assert inbox_b.payloads() == ["to old"]


async def test_remove_peer_closes_both_directions(make_node):
    a, inbox_a = await make_node(1)
    b, inbox_b = await make_node(2)
    link(a, b)
    a.send(2, "x")
    await inbox_b.wait_for(1)
    await wait_until(lambda: b.stats["inbound_connections"] == 1, "b has a's connection")
    b.remove_peer(1)
    await wait_until(lambda: b.stats["inbound_connections"] == 0, "b closed a's connection")
    assert b.send(1, "y") is False

    def refused_as_unknown():  # a keeps sending (as Raft would), reconnects, and is refused
        a.send(2, "z")
        return b.stats["refused"].get("unknown_node", 0) >= 1

    await wait_until(refused_as_unknown, "b refuses the removed node")
    assert inbox_b.payloads() == ["x"]
    assert inbox_a.items == []


# ---------------------------------------------------------------- refusals


async def test_wrong_secret_is_refused_both_ways(make_node, caplog):
    caplog.set_level(logging.WARNING, "kalamdb.raftio.transport")
    a, _ = await make_node(1, secret=b"not-the-cluster-secret")
    b, inbox_b = await make_node(2)
    link(a, b)
    a.send(2, "forged")
    await wait_until(lambda: b.stats["refused"].get("bad_hmac", 0) == 1, "b refuses a's proof")
    assert inbox_b.items == []
    assert any("bad_hmac" in r.getMessage() and "127.0.0.1:" in r.getMessage() for r in caplog.records)
    # the other way: b connects to a, a refuses b's proof
    b.send(1, "also forged")
    await wait_until(lambda: a.stats["refused"].get("bad_hmac", 0) == 1, "a refuses b's proof")


async def test_forged_client_hmac_is_refused_and_server_keeps_serving(make_node):
    b, inbox_b = await make_node(2)
    a, _ = await make_node(1)
    link(a, b)
    reader, writer = await raw_client(b.bound_port, 1, 2, secret=b"guess")
    try:
        assert await read_refusal(reader) == "bad_hmac"
    finally:
        writer.close()
    assert b.stats["refused"] == {"bad_hmac": 1}
    a.send(2, "genuine")
    assert await inbox_b.wait_for(1) == [(1, "genuine")]


async def test_forged_server_is_refused_by_the_client(make_node):
    """An impostor listening at a peer's address cannot get our messages without the secret."""
    received = bytearray()

    async def impostor(reader, writer):
        writer.write(encode_frame([T_HELLO, PROTOCOL_VERSION, "kalamdb", 2, b"n" * 16]))
        await read_frame(reader)  # the client's AUTH
        writer.write(encode_frame([T_WELCOME, b"\x00" * 32]))
        received.extend(await reader.read())  # anything the client sends after that would land here
        writer.close()

    server = await asyncio.start_server(impostor, LOCAL, 0)
    try:
        a, _ = await make_node(1)
        a.set_peer(2, (LOCAL, server.sockets[0].getsockname()[1]))
        a.send(2, "secret data")
        await wait_until(lambda: a.stats["refused"].get("bad_hmac", 0) == 1, "a refuses the impostor")
        await wait_until(lambda: a.stats["peers"][2]["state"] == "backoff", "impostor treated as down")
        assert b"secret data" not in received
    finally:
        server.close()
        await server.wait_closed()


async def test_unknown_node_is_refused(make_node):
    b, inbox_b = await make_node(2)
    c, _ = await make_node(3)
    c.set_peer(2, (LOCAL, b.bound_port))  # c knows b, b does not know c
    c.send(2, "hi")
    await wait_until(lambda: b.stats["refused"].get("unknown_node", 0) == 1, "b refuses node 3")
    await wait_until(lambda: c.stats["refused_by_peer"].get("unknown_node", 0) == 1, "c is told why")
    assert inbox_b.items == []
    # a node claiming b's own id is not a peer either
    reader, writer = await raw_client(b.bound_port, 2, 2)
    try:
        assert await read_refusal(reader) == "unknown_node"
    finally:
        writer.close()


async def test_wrong_cluster_and_wrong_destination_are_refused(make_node):
    b, _ = await make_node(2)
    b.set_peer(1, (LOCAL, 1))
    reader, writer = await raw_client(b.bound_port, 1, 2, cluster_id="other-cluster")
    try:
        assert await read_refusal(reader) == "wrong_cluster"
    finally:
        writer.close()
    reader, writer = await raw_client(b.bound_port, 1, 2)
    writer.close()
    # a client that wanted node 5 at this address
    reader, writer = await asyncio.open_connection(LOCAL, b.bound_port)
    try:
        hello = await read_frame(reader)
        mac = handshake_mac(SECRET, "client", "kalamdb", 1, 5, hello[4], b"c" * 16)
        writer.write(encode_frame([T_AUTH, PROTOCOL_VERSION, "kalamdb", 1, 5, b"c" * 16, mac]))
        assert await read_refusal(reader) == "wrong_node"
    finally:
        writer.close()
    assert b.stats["refused"]["wrong_cluster"] == 1 and b.stats["refused"]["wrong_node"] == 1


async def test_silent_connection_times_out_in_the_handshake(make_node):
    b, _ = await make_node(2, handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection(LOCAL, b.bound_port)
    try:
        hello = await read_frame(reader)
        assert hello[0] == T_HELLO
        t0 = time.monotonic()
        assert await read_refusal(reader, timeout=5) == "handshake_timeout"
        assert time.monotonic() - t0 < 2
    finally:
        writer.close()
    assert b.stats["refused"] == {"handshake_timeout": 1}


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (HEADER.pack(1 << 20), "oversized_frame"),  # a big handshake frame is never buffered
        (HEADER.pack(1) + b"\xc1", "malformed_msgpack"),
        (encode_frame({"hello": 1}), "bad_handshake"),
        (encode_frame([T_AUTH, 99, "kalamdb", 1, 2, b"c" * 16, b"m"]), "bad_handshake"),
    ],
    ids=["oversized", "malformed", "not-a-list", "bad-version"],
)
async def test_bad_handshake_bytes_are_refused(make_node, garbage, reason):
    b, _ = await make_node(2)
    reader, writer = await asyncio.open_connection(LOCAL, b.bound_port)
    try:
        await read_frame(reader)  # HELLO
        writer.write(garbage)
        assert await read_refusal(reader) == reason
    finally:
        writer.close()
    assert b.stats["refused"] == {reason: 1}


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (HEADER.pack((1 << 16) + 1), "oversized_frame"),
        (HEADER.pack(1) + b"\xc1", "malformed_msgpack"),
        (HEADER.pack(3) + b"\x91\x01\x02", "malformed_msgpack"),  # trailing bytes in the frame
        (HEADER.pack(5003) + b"\x91" * 5000 + b"\x92\x04\xc0", "malformed_msgpack"),  # too deep
        (encode_frame(["not", "data", "frame"]), "bad_shape"),
        (encode_frame({"t": T_DATA}), "bad_shape"),
        (encode_frame(7), "bad_shape"),
    ],
    ids=["oversized", "reserved-byte", "extra-data", "deep", "3-list", "map", "int"],
)
async def test_bad_frames_after_auth_are_refused_and_the_listener_keeps_working(make_node, garbage, reason):
    b, inbox_b = await make_node(2, max_frame_bytes=1 << 16)
    a, _ = await make_node(1)
    link(a, b)
    reader, writer = await authed_raw_client(b.bound_port, 1, 2)
    try:
        writer.write(encode_frame([T_DATA, "valid first"]) + garbage + encode_frame([T_DATA, "never"]))
        assert await read_refusal(reader) == reason
    finally:
        writer.close()
    assert inbox_b.payloads() == ["valid first"]
    assert b.stats["refused"] == {reason: 1}
    a.send(2, "still serving")  # the genuine peer is unaffected
    await inbox_b.wait_for(2)
    assert inbox_b.items[-1] == (1, "still serving")


async def test_frames_sent_along_with_the_proof_are_delivered_first_and_in_order(make_node):
    # The data phase reads the socket through a protocol of its own (inbound.py): what the
    # handshake's reader already held, sent in the same write as the proof, must not be lost.
    b, inbox_b = await make_node(2)
    a, _ = await make_node(1)
    link(a, b)
    reader, writer = await asyncio.open_connection(LOCAL, b.bound_port)
    try:
        hello = await read_frame(reader)
        cnonce = secrets.token_bytes(16)
        mac = handshake_mac(SECRET, "client", "kalamdb", 1, 2, hello[4], cnonce)
        auth = encode_frame([T_AUTH, PROTOCOL_VERSION, "kalamdb", 1, 2, cnonce, mac])
        first = encode_frame([T_DATA, "one"]) + encode_frame([T_DATA, "two"])
        half = encode_frame([T_DATA, "three"])
        writer.write(auth + first + half[:5])  # the third frame split across writes
        assert (await read_frame(reader))[0] == T_WELCOME
        writer.write(half[5:] + encode_frame([T_DATA, "four"]))
        assert await inbox_b.wait_for(4) == [(1, "one"), (1, "two"), (1, "three"), (1, "four")]
    finally:
        writer.close()
    assert b.stats["refused"] == {}


async def test_pending_handshakes_are_bounded_and_the_oldest_makes_room(make_node):
    b, _ = await make_node(2, max_pending_per_address=2, handshake_timeout=5)
    held = [await asyncio.open_connection(LOCAL, b.bound_port) for _ in range(2)]
    try:
        for r, _ in held:
            await read_frame(r)  # both are now pending in the handshake
        reader, writer = await asyncio.open_connection(LOCAL, b.bound_port)
        try:
            assert (await read_frame(reader))[0] == T_HELLO  # the newcomer is served...
            assert await read_refusal(held[0][0]) == "too_many_handshakes"  # ...the oldest made room
            assert b.stats["pending_handshakes"] == 2
        finally:
            writer.close()
    finally:
        for _, w in held:
            w.close()
    assert b.stats["refused"] == {"too_many_handshakes": 1}


async def test_silent_connections_cannot_keep_a_genuine_peer_out(make_node):
    """~70 connections that never speak (the finding of issue 11) against the default limits:
    a peer that restarts meanwhile still connects and delivers at once."""
    a, _ = await make_node(1)
    b, inbox_b = await make_node(2)
    junk = [await asyncio.open_connection(LOCAL, b.bound_port) for _ in range(70)]
    try:
        await wait_until(lambda: b.stats["pending_handshakes"] == b.max_pending_per_address,
                         "the junk connections to fill the per-address handshake allowance")
        a.set_peer(2, (LOCAL, b.bound_port))
        b.set_peer(1, (LOCAL, a.bound_port))
        t0 = time.monotonic()
        assert a.send(2, "through the crowd")
        await inbox_b.wait_for(1, timeout=3)
        assert time.monotonic() - t0 < 1.0, "the handshake waited for junk connections to time out"
        assert b.stats["pending_handshakes"] <= b.max_pending_per_address
    finally:
        for _, w in junk:
            w.close()


async def test_a_flood_of_refused_connections_logs_a_few_lines_not_one_per_connection(make_node, caplog):
    b, _ = await make_node(2)
    caplog.set_level(logging.WARNING, logger="kalamdb.raftio.transport")
    for _ in range(300):
        reader, writer = await asyncio.open_connection(LOCAL, b.bound_port)
        await read_frame(reader)  # HELLO
        writer.write(HEADER.pack(1 << 30))  # announces an absurd frame: refused at once
        assert await read_refusal(reader) == "oversized_frame"
        writer.close()
    assert b.stats["refused"] == {"oversized_frame": 300}
    lines = [r for r in caplog.records if r.name == "kalamdb.raftio.transport"]
    assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]


# ---------------------------------------------------------------- lifecycle


def open_tcp_ports() -> set[int]:
    proc = psutil.Process()
    conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    return {c.laddr.port for c in conns} | {c.raddr.port for c in conns if c.raddr}


async def test_stop_leaves_no_tasks_or_sockets():
    fds_before = psutil.Process().num_fds()
    inboxes = [Inbox() for _ in range(3)]
    nodes = [PeerTransport(i + 1, (LOCAL, 0), SECRET, on_message=inboxes[i], rng=random.Random(SEED))
             for i in range(3)]
    try:
        for n in nodes:
            await n.start()
        for x in nodes:
            for y in nodes:
                if x is not y:
                    x.set_peer(y.node_id, (LOCAL, y.bound_port))
        for x in nodes:
            for y in nodes:
                if x is not y:
                    x.send(y.node_id, "ping")
        for inbox in inboxes:
            await inbox.wait_for(2)
        ports = {n.bound_port for n in nodes}
        assert ports <= open_tcp_ports()
        # connection tasks retired just before stop() must not outlive it either
        nodes[0].remove_peer(2)
        nodes[1].set_peer(3, (LOCAL, nodes[0].bound_port))
        # an unauthenticated connection in mid-handshake must be cleaned up too
        stray_reader, stray_writer = await asyncio.open_connection(LOCAL, nodes[0].bound_port)
        await read_frame(stray_reader)
    finally:
        for n in nodes:
            await n.stop()
    assert await stray_reader.read() in (b"",)  # the server side closed it
    stray_writer.close()
    await stray_writer.wait_closed()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not (ports & open_tcp_ports()), "a socket on a transport port is still open"
    assert psutil.Process().num_fds() <= fds_before


def test_backoff_is_capped_jittered_and_seeded():
    def delays(seed):
        t = PeerTransport(1, (LOCAL, 0), SECRET, on_message=lambda s, p: None, rng=random.Random(seed),
                          backoff_base=0.05, backoff_cap=1.0)
        return [t._outbound.backoff_delay(k) for k in range(12)]

    d = delays(SEED)
    assert d == delays(SEED), "same seed, same schedule"
    for k, x in enumerate(d):
        ceiling = min(1.0, 0.05 * 2**k)
        assert ceiling / 2 <= x <= ceiling, (k, x)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": 0},
        {"node_id": True},
        {"secret": b""},
        {"secret": "str"},
        {"cluster_id": ""},
        {"max_frame_bytes": 10},
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs):
    args = {"node_id": 1, "secret": SECRET} | kwargs
    with pytest.raises(ValueError):
        PeerTransport(args.pop("node_id"), (LOCAL, 0), args.pop("secret"), on_message=print, **args)


def test_bad_peer_addresses_are_a_clear_error():
    t = PeerTransport(1, (LOCAL, 0), SECRET, on_message=print)
    for node_id, addr in [(1, (LOCAL, 5)), (0, (LOCAL, 5)), (True, (LOCAL, 5)), (2, (LOCAL, 0)),
                          (2, (LOCAL, "x"))]:
        with pytest.raises(ValueError):
            t.set_peer(node_id, addr)


def test_core_paths_under_uvloop():
    """Production nodes run on uvloop: delivery, a refusal and cleanup must behave the same there."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario():
        inbox_a, inbox_b = Inbox(), Inbox()
        a = PeerTransport(1, (LOCAL, 0), SECRET, on_message=inbox_a, rng=random.Random(SEED))
        b = PeerTransport(2, (LOCAL, 0), SECRET, on_message=inbox_b, rng=random.Random(SEED))
        try:
            await a.start()
            await b.start()
            link(a, b)
            for i in range(2000):
                a.send(2, i)
            assert b.send_many(1, ["x", "y"])
            await inbox_b.wait_for(2000)
            assert inbox_b.payloads() == list(range(2000))
            assert [p for _, p in await inbox_a.wait_for(2)] == ["x", "y"]
            reader, writer = await authed_raw_client(b.bound_port, 1, 2)
            writer.write(HEADER.pack(1) + b"\xc1")
            assert await read_refusal(reader) == "malformed_msgpack"
            writer.close()
            a.send(2, "after")
            assert (await inbox_b.wait_for(2001))[-1] == (1, "after")
        finally:
            await a.stop()
            await b.stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
