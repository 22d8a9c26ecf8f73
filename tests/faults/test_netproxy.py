"""The per-link proxy, exercised with real sockets: each fault does what docs/faults.md says."""

from __future__ import annotations

import asyncio
import os
import statistics
import struct
import threading
import time

import psutil
import pytest
import uvloop
from faults_frames import FrameServer, checked, frame, read_frame, until, verify

from kalamdb.testing.netproxy import NetworkController
from kalamdb.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


async def dial(addr):
    return await asyncio.open_connection(*addr)


async def roundtrip(reader, writer, payload: bytes) -> bytes:
    writer.write(frame(payload))
    await writer.drain()
    return await read_frame(reader)


async def test_pass_through_echoes_frames_and_counts_them(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)
    for seq in range(50):
        assert verify(await roundtrip(reader, writer, checked(seq, b"x" * seq))) == seq
    writer.close()
    stats = net.stats()
    assert stats[(1, 2)].frames_passed == 50
    assert stats[(2, 1)].frames_passed == 50
    assert stats[(1, 2)].connections == 1
    assert stats[(1, 2)].frames_dropped == 0


async def test_cut_request_direction_drops_silently_and_heal_keeps_stream_intact(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)
    await roundtrip(reader, writer, checked(0))  # handshake-like first frames pass
    net.cut(1, 2)
    writer.write(frame(checked(1)))
    await writer.drain()  # the sender sees no error
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(read_frame(reader), 0.3)
    assert not reader.at_eof()
    net.heal()
    # The marker proves the cut frame was dropped, not late: order is kept per connection.
    assert verify(await roundtrip(reader, writer, checked(2))) == 2
    assert [verify(f) for f in server.frames] == [0, 2]
    assert net.stats()[(1, 2)].frames_dropped == 1
    writer.close()


async def test_cut_reply_direction_drops_replies_only(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)
    await roundtrip(reader, writer, checked(0))
    net.cut(2, 1)
    writer.write(frame(checked(1)))
    await writer.drain()
    await server.wait_until(lambda: len(server.frames) == 2)  # the request arrived...
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(read_frame(reader), 0.3)  # ...its echo did not
    net.uncut(2, 1)
    assert verify(await roundtrip(reader, writer, checked(2))) == 2
    writer.close()


async def test_new_connection_during_cut_carries_nothing_then_heal_works(net, server):
    addr = net.add_link(1, 2, server.addr)
    net.cut(1, 2)
    net.cut(2, 1)
    reader, writer = await dial(addr)  # the dial itself succeeds (proxy accepts)
    writer.write(frame(checked(7)))
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(read_frame(reader), 0.3)
    assert server.connections == 0  # the SYN never reached the node
    writer.close()
    net.heal()
    reader, writer = await dial(addr)
    assert verify(await roundtrip(reader, writer, checked(8))) == 8
    writer.close()


async def test_closes_from_a_cut_side_are_held_until_heal(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)
    await roundtrip(reader, writer, checked(0))
    net.cut(2, 1)
    for w in server.writers:
        w.close()  # the node closes; its FIN travels 2 -> 1, which is cut
    await server.wait_until(lambda: server.closed_connections == 1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)
    net.heal()
    assert await asyncio.wait_for(reader.read(1), 5) == b""  # now the close arrives
    writer.close()


def reachability_via_grudges(net: NetworkController, n: int) -> dict:
    return {k: v for k, v in net.reachability().items()}


def matrix(rows: list[str]) -> dict:
    """rows[a-1][b-1] == '1' when bytes from a reach b (diagonal ignored)."""
    n = len(rows)
    return {(a, b): rows[a - 1][b - 1] == "1" for a in range(1, n + 1) for b in range(1, n + 1) if a != b}


@pytest.fixture
def five(net):
    for a in range(1, 6):
        for b in range(1, 6):
            if a != b:
                net.add_link(a, b, ("127.0.0.1", 9))
    return net


def test_partition_helpers_give_exact_matrices_for_five_nodes(five):
    net = five
    net.isolate(3)
    assert net.reachability() == matrix(["11011", "11011", "00100", "11011", "11011"])
    net.partition_halves()  # [1,2] | [3,4,5]
    assert net.reachability() == matrix(["11000", "11000", "00111", "00111", "00111"])
    net.partition_bridge()  # [1,2] - 3 - [4,5]
    assert net.reachability() == matrix(["11100", "11100", "11111", "00111", "00111"])
    net.partition_majorities_ring()  # ring 1..5, each sees itself and its two neighbours
    assert net.reachability() == matrix(["11001", "11100", "01110", "00111", "10011"])
    seen = {frozenset(b for b in range(1, 6) if b == a or net.reachability()[(b, a)]) for a in range(1, 6)}
    assert len(seen) == 5 and all(len(s) == 3 for s in seen)
    net.partition([[1, 4], [2, 3, 5]])
    assert net.reachability() == matrix(["10010", "01101", "01101", "10010", "01101"])
    net.heal()
    assert all(net.reachability().values())


def test_partition_helpers_give_exact_matrices_for_three_nodes(net):
    for a in range(1, 4):
        for b in range(1, 4):
            if a != b:
                net.add_link(a, b, ("127.0.0.1", 9))
    net.partition_halves()
    assert net.reachability() == matrix(["100", "011", "011"])
    net.partition_bridge()
    assert net.reachability() == matrix(["110", "111", "011"])
    net.partition_majorities_ring()
    # One-way grudges: 2 hears {1,2}, 3 hears {2,3}, 1 hears {3,1}.
    assert net.reachability() == matrix(["110", "011", "101"])
    net.isolate(2)
    assert net.reachability() == matrix(["101", "010", "101"])


def test_bad_partitions_are_refused_with_a_clear_error(net):
    for a, b in [(1, 2), (2, 1)]:
        net.add_link(a, b, ("127.0.0.1", 9))
    with pytest.raises(ValueError, match="cover exactly"):
        net.partition([[1]])
    with pytest.raises(ValueError, match="two groups"):
        net.partition([[1, 2], [2]])
    with pytest.raises(ValueError, match="probability"):
        net.loss(1.5)
    with pytest.raises(ValueError, match="unknown node 7"):
        net.isolate(7)
    with pytest.raises(ValueError, match="different nodes"):
        net.add_link(1, 1, ("127.0.0.1", 9))


async def test_partition_really_blocks_traffic_as_the_matrix_says(net):
    """Three nodes, real links: a probe then (after heal) a marker on the same connection; the
    probe arrived iff the matrix says so (order per connection makes this timing-free)."""
    servers = {}
    for b in (1, 2, 3):
        servers[b] = FrameServer(echo=False)
        await servers[b].start()
    try:
        conns = {}
        for a in (1, 2, 3):
            for b in (1, 2, 3):
                if a != b:
                    conns[(a, b)] = await dial(net.add_link(a, b, servers[b].addr))
        for (a, b), (_, w) in conns.items():  # two handshake frames each, all must arrive
            w.write(frame(b"hello") * 2)
        for b in (1, 2, 3):
            await servers[b].wait_until(lambda s=servers[b]: len(s.frames) == 4)
        net.partition_majorities_ring()
        expected = net.reachability()
        for (a, b), (_, w) in conns.items():
            w.write(frame(f"probe {a}".encode()))

        def decided():  # the proxy judged every probe while the partition held
            st = net.stats()
            return all(st[k].frames_passed + st[k].frames_dropped == 3 for k in conns)

        await until(decided, what="the proxy to pass or drop every probe")
        net.heal()
        for (a, b), (_, w) in conns.items():
            w.write(frame(f"marker {a}".encode()))
        for b in (1, 2, 3):
            s = servers[b]
            await s.wait_until(lambda s=s: sum(f.startswith(b"marker") for f in s.frames) == 2)
            for a in (1, 2, 3):
                if a != b:
                    assert (f"probe {a}".encode() in s.frames) == expected[(a, b)], (a, b)
        for _, w in conns.values():
            w.close()
    finally:
        for s in servers.values():
            await s.stop()


async def test_delay_adds_at_least_the_delay_to_each_round_trip(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)

    async def rtts(k):
        out = []
        for seq in range(k):
            t0 = time.perf_counter()
            assert verify(await roundtrip(reader, writer, checked(seq))) == seq
            out.append(time.perf_counter() - t0)
        return out

    base = statistics.median(await rtts(10))
    net.delay(40)  # each direction: +40 ms, so +80 ms per round trip
    delayed = await rtts(10)
    assert min(delayed) >= 0.080
    assert statistics.median(delayed) - base >= 0.075
    assert statistics.median(delayed) < base + 0.5
    assert net.stats()[(1, 2)].frames_delayed == 10
    writer.close()


async def test_delay_keeps_order_even_with_large_jitter(net, server):
    addr = net.add_link(1, 2, server.addr)
    net.delay(5, jitter_ms=5)
    reader, writer = await dial(addr)
    for seq in range(200):
        writer.write(frame(checked(seq)))
    await writer.drain()
    got = [verify(await read_frame(reader)) for _ in range(200)]
    assert got == list(range(200))
    writer.close()


async def test_loss_drops_whole_frames_binomially_and_never_corrupts(net, seed):
    sink = FrameServer(echo=False)
    await sink.start()
    try:
        addr = net.add_link(1, 2, sink.addr)
        net.loss(0.5)
        _, writer = await dial(addr)
        n = 2000
        for seq in range(n):
            writer.write(frame(checked(seq, os.urandom(seq % 97))))
        await writer.drain()

        def judged():
            st = net.stats()[(1, 2)]
            return st.frames_passed + st.frames_dropped == n

        await until(judged, what="the proxy to judge all frames")
        net.loss(0)
        writer.write(frame(checked(n)))  # marker: everything before it has been decided
        await sink.wait_until(lambda: sink.frames and verify(sink.frames[-1]) == n, timeout=20)
        seqs = [verify(f) for f in sink.frames]  # raises on any corrupted frame
        assert seqs == sorted(seqs) and seqs[:2] == [0, 1]  # handshake frames protected, order kept
        passed = len(seqs) - 1 - 2
        # Binomial(1998, 0.5): mean 999, sd 22.4; +/- 5 sd.
        assert 887 <= passed <= 1111, f"{passed} of 1998 frames passed (seed {seed})"
        assert net.stats()[(1, 2)].frames_dropped == n + 1 - len(seqs)
        writer.close()
    finally:
        await sink.stop()


async def test_clog_holds_then_releases_in_order(net):
    sink = FrameServer(echo=False)
    await sink.start()
    try:
        addr = net.add_link(1, 2, sink.addr)
        _, writer = await dial(addr)
        writer.write(frame(checked(0)))
        await sink.wait_until(lambda: len(sink.frames) == 1)
        net.clog(1, 2)
        for seq in range(1, 21):
            writer.write(frame(checked(seq)))
        await writer.drain()
        await until(lambda: net.stats()[(1, 2)].frames_held == 1, what="the proxy to hold a frame")
        with pytest.raises(asyncio.TimeoutError):
            await sink.wait_until(lambda: len(sink.frames) > 1, timeout=0.3)
        net.unclog(1, 2)
        await sink.wait_until(lambda: len(sink.frames) == 21)
        assert [verify(f) for f in sink.frames] == list(range(21))
        writer.close()
    finally:
        await sink.stop()


async def test_reset_closes_both_sides_and_new_connections_work(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)
    await roundtrip(reader, writer, checked(0))
    assert net.reset(1, 2) == 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(read_frame(reader), 5)
    await server.wait_until(lambda: server.closed_connections == 1)
    reader, writer = await dial(addr)
    assert verify(await roundtrip(reader, writer, checked(1))) == 1
    writer.close()


async def test_bandwidth_limit_slows_a_bulk_transfer(net):
    sink = FrameServer(echo=False)
    await sink.start()
    try:
        addr = net.add_link(1, 2, sink.addr)
        _, writer = await dial(addr)
        payload = checked(0, b"z" * 4000)
        net.bandwidth(800)  # 100 kB/s: 40 kB must take >= ~0.4 s
        t0 = time.perf_counter()
        writer.write(frame(payload) * 10)
        await sink.wait_until(lambda: len(sink.frames) == 10)
        elapsed = time.perf_counter() - t0
        assert elapsed >= 0.35, elapsed
        assert elapsed < 3.0, elapsed
        writer.close()
    finally:
        await sink.stop()


async def test_oversized_or_garbage_length_passes_through_unframed_without_crashing(net, server):
    addr = net.add_link(1, 2, server.addr)
    reader, writer = await dial(addr)
    writer.write(b"\xff\xff\xff\xffgarbage")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the node hung up; the proxy passed it on
    reader, writer = await dial(addr)  # and the proxy still works
    assert verify(await roundtrip(reader, writer, checked(3))) == 3
    writer.close()


async def test_unreachable_target_resets_the_dialler(net):
    addr = net.add_link(1, 2, ("127.0.0.1", 1))  # nothing listens on port 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        reader, writer = await dial(addr)  # on loopback the RST may even beat the handshake
        try:
            await asyncio.wait_for(read_frame(reader), 5)
        finally:
            writer.close()
    assert net.stats()[(2, 1)].resets == 1  # the refusal travels back 2 -> 1


async def test_client_link_is_raw_and_isolate_client_blackholes_it(net, server):
    addr = net.add_client_link(2, server.addr)
    reader, writer = await dial(addr)
    assert verify(await roundtrip(reader, writer, checked(0))) == 0
    net.isolate_client(2)
    writer.write(frame(checked(1)))
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(read_frame(reader), 0.3)
    net.unisolate_client(2)
    # A raw connection that lost bytes stays a black hole (the stream would be corrupt)...
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(roundtrip(reader, writer, checked(2)), 0.3)
    writer.close()
    reader, writer = await dial(addr)  # ...but a new connection works
    assert verify(await roundtrip(reader, writer, checked(3))) == 3
    writer.close()


def test_close_leaks_no_sockets_or_threads():
    """Run a busy controller in a loop of its own, close it, and count fds and threads."""
    # libuv keeps two things for the life of the process once a first loop needs them: a signal pipe
    # and the worker threads that resolve addresses. Make both before counting, so that a run of this
    # test alone (or first) counts only what the controller leaves behind.
    warm = uvloop.new_event_loop()
    warm.run_until_complete(warm.getaddrinfo("127.0.0.1", 1))
    warm.close()
    proc = psutil.Process()
    fds0, threads0, py_threads0 = proc.num_fds(), proc.num_threads(), threading.active_count()

    async def scenario():
        srv = FrameServer()
        await srv.start()
        net = NetworkController(seed=1)
        try:
            conns = [await dial(net.add_link(a, b, srv.addr)) for a, b in [(1, 2), (2, 1), (1, 3)]]
            net.delay(20, links=[(1, 2)])
            net.clog(2, 1)
            for r, w in conns:
                w.write(frame(checked(0)))
            await srv.wait_until(lambda: len(srv.frames) >= 2)
        finally:
            net.close()
            net.close()  # idempotent
        for r, w in conns:
            w.close()
        await srv.stop()
        with pytest.raises(RuntimeError, match="closed"):
            net.add_link(5, 6, srv.addr)

    asyncio.run(scenario())
    assert proc.num_fds() == fds0
    assert threading.active_count() == py_threads0
    # a joined thread may take a moment to leave the kernel
    wait_for(lambda: proc.num_threads() == threads0, 5, f"the thread count to return to {threads0}", poll_s=0.01)


def test_controller_is_safe_to_drive_from_many_threads(net):
    for a, b in [(1, 2), (2, 1)]:
        net.add_link(a, b, ("127.0.0.1", 9))
    errors = []

    def flip(i):
        try:
            for _ in range(200):
                net.cut(1, 2) if i % 2 else net.uncut(1, 2)
                net.delay(i % 3)
                net.partition_halves()
                net.heal()
        except Exception as e:  # noqa: BLE001 - any error in a thread must fail the test
            errors.append(e)

    ts = [threading.Thread(target=flip, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    net.heal()
    assert all(net.reachability().values())
    assert struct.calcsize(">I") == 4


async def test_loss_on_a_raw_link_resets_instead_of_corrupting(net, server):
    addr = net.add_client_link(2, server.addr)
    net.loss(1.0, links=[("client", 2)])
    reader, writer = await dial(addr)
    writer.write(frame(checked(0)))
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(read_frame(reader), 5)
    writer.close()
    assert server.frames == []  # nothing half-delivered
    assert net.stats()[("client", 2)].resets == 1


async def test_retarget_sends_new_connections_to_the_new_address(net, server):
    other = FrameServer(echo=True)
    await other.start()
    try:
        addr = net.add_link(1, 2, server.addr)
        net.retarget(1, 2, other.addr)  # node 2 restarted on another port
        reader, writer = await dial(addr)
        await roundtrip(reader, writer, checked(0))
        assert len(other.frames) == 1 and server.frames == []
        writer.close()
    finally:
        await other.stop()


async def test_clog_pushes_back_on_the_sender_instead_of_buffering_forever(net):
    sink = FrameServer(echo=False)
    await sink.start()
    try:
        addr = net.add_link(1, 2, sink.addr)
        _, writer = await dial(addr)
        net.clog(1, 2)
        chunk = frame(checked(0, b"b" * 65000))
        with pytest.raises(asyncio.TimeoutError):  # the sender blocks: TCP backpressure
            async with asyncio.timeout(1.0):
                for _ in range(2000):  # 130 MB if nothing pushed back
                    writer.write(chunk)
                    await writer.drain()
        net.unclog(1, 2)
        await sink.wait_until(lambda: len(sink.frames) >= 64, timeout=10)
        writer.close()
    finally:
        await sink.stop()
