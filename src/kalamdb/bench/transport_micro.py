"""Micro benchmark of the Raft peer transport on loopback: small-frame rate, round trip, bulk MB/s.

Both nodes run in this one process on one event loop (one core does the sending, the receiving and
the kernel's loopback work), so the figures are a floor for a real two-process cluster.

    python -m kalamdb.bench.transport_micro [--frames 300000] [--no-uvloop] [--json]
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import click

from kalamdb.raftio.transport import PeerTransport

SECRET = b"bench-secret-bench-secret"
# Shaped like an AppendEntries heartbeat: [type, term, leader, prev_index, prev_term, entries, commit]
SMALL = [3, 7, 1, 123456, 7, [], 123450]


async def _pair(max_queue_frames: int = 1 << 20, max_queue_bytes: int = 256 << 20
                ) -> tuple[list[PeerTransport], dict[int, Callable[[int, Any], object]]]:
    sinks: dict[int, Callable[[int, Any], object]] = {}

    def sink_for(node_id):
        def sink(src, payload):
            sinks[node_id](src, payload)

        return sink

    nodes = [
        PeerTransport(i, ("127.0.0.1", 0), SECRET, on_message=sink_for(i), rng=random.Random(i),
                      max_queue_frames=max_queue_frames, max_queue_bytes=max_queue_bytes)
        for i in (1, 2)
    ]
    for n in nodes:
        await n.start()
    port1, port2 = nodes[0].bound_port, nodes[1].bound_port
    assert port1 is not None and port2 is not None  # start() published them
    nodes[0].set_peer(2, ("127.0.0.1", port2))
    nodes[1].set_peer(1, ("127.0.0.1", port1))
    return nodes, sinks


async def small_frames(total: int, batch: int, use_send_many: bool) -> dict:
    """One-way rate of small frames: the sender yields to the loop every `batch` frames."""
    (a, b), sinks = await _pair()
    got = 0
    done = asyncio.get_running_loop().create_future()

    def on_b(src, payload):
        nonlocal got
        got += 1
        if got == total and not done.done():
            done.set_result(None)

    sinks[1] = lambda s, p: None
    sinks[2] = on_b
    try:
        # warm the connection so connect + handshake is not in the measurement
        warm = asyncio.get_running_loop().create_future()
        def warmed(s: int, p: Any) -> None:
            if not warm.done():
                warm.set_result(None)

        sinks[2] = warmed
        a.send(2, "warm")
        await asyncio.wait_for(warm, 10)
        sinks[2] = on_b
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            n = min(batch, total - sent)
            if use_send_many:
                ok = a.send_many(2, [SMALL] * n)
            else:
                ok = all(a.send(2, SMALL) for _ in range(n))
            if not ok:
                raise RuntimeError("queue overflow in the benchmark; raise max_queue_frames")
            sent += n
            await asyncio.sleep(0)
        await asyncio.wait_for(done, 120)
        dt = time.perf_counter() - t0
        return {"frames": total, "seconds": round(dt, 3), "frames_per_s": round(total / dt),
                "mb_per_s": round(a.stats["bytes_sent"] / dt / 1e6, 1), "batch": batch,
                "api": "send_many" if use_send_many else "send"}
    finally:
        await a.stop()
        await b.stop()


async def round_trips(count: int) -> dict:
    """Ping-pong of one small message: one-way latency is about half of this."""
    (a, b), sinks = await _pair()
    loop = asyncio.get_running_loop()
    pong: asyncio.Future | None = None

    def on_a(src, payload):
        if pong is not None and not pong.done():
            pong.set_result(None)

    sinks[1] = on_a
    sinks[2] = lambda src, payload: b.send(1, payload)
    samples = []
    try:
        for i in range(count + 100):
            pong = loop.create_future()
            t0 = time.perf_counter()
            a.send(2, SMALL)
            await asyncio.wait_for(pong, 5)
            if i >= 100:  # the first ones include connect + handshake and a cold cache
                samples.append(time.perf_counter() - t0)
        samples.sort()
        return {"round_trips": count, "p50_us": round(statistics.median(samples) * 1e6),
                "p99_us": round(samples[int(len(samples) * 0.99) - 1] * 1e6)}
    finally:
        await a.stop()
        await b.stop()


async def bulk(chunks: int, chunk_bytes: int) -> dict:
    """Snapshot-sized chunks (~1 MiB): throughput in MB/s."""
    (a, b), sinks = await _pair()
    got = 0
    done = asyncio.get_running_loop().create_future()

    def on_b(src, payload):
        nonlocal got
        got += 1
        if got == chunks + 1 and not done.done():
            done.set_result(None)

    sinks[1] = lambda s, p: None
    sinks[2] = on_b
    blob = random.Random(0).randbytes(chunk_bytes)
    try:
        a.send(2, "warm")
        t0 = time.perf_counter()
        for i in range(chunks):
            while not a.send(2, ["chunk", i, blob]):  # queue full: let the writer drain it
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        await asyncio.wait_for(done, 120)
        dt = time.perf_counter() - t0
        return {"chunks": chunks, "chunk_bytes": chunk_bytes, "seconds": round(dt, 3),
                "mb_per_s": round(chunks * chunk_bytes / dt / 1e6)}
    finally:
        await a.stop()
        await b.stop()


async def run_all(frames: int) -> dict:
    return {
        "send_batch_1000": await small_frames(frames, 1000, False),
        "send_batch_1": await small_frames(min(frames, 50_000), 1, False),
        "send_many_100": await small_frames(frames, 100, True),
        "round_trip": await round_trips(2000),
        "bulk_1MiB": await bulk(200, 1 << 20),
    }


@click.command()
@click.option("--frames", default=300_000, show_default=True, help="small frames per throughput run")
@click.option("--uvloop/--no-uvloop", "use_uvloop", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def main(frames: int, use_uvloop: bool, as_json: bool) -> None:
    """Measure the peer transport on 127.0.0.1 (both ends in this process)."""
    loop_name = "asyncio"
    if use_uvloop:
        try:
            import uvloop

            uvloop.install()
            loop_name = "uvloop"
        except ImportError:
            pass
    result = asyncio.run(run_all(frames))
    result["loop"] = loop_name
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"event loop: {loop_name}")
    for name, r in result.items():
        if isinstance(r, dict):
            click.echo(f"{name:16s} " + "  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
