"""Where committed batches are applied (node/apply_router.py): light ones on the caller's loop when
the apply thread is idle, the rest on the apply thread, and always in log order, snapshots included."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kalamdb.testing.waiting import async_wait_for
from tests.raft.driver_harness import start_cluster, stop_all


@pytest.fixture
async def drivers(tmp_path):
    started = await start_cluster(tmp_path)
    yield started
    await stop_all(started)


async def _all_applied(drivers, index: int) -> None:
    await async_wait_for(lambda: all(d.applied_index >= index for d in drivers), 5, f"index {index} everywhere")


async def test_light_batches_are_applied_on_the_callers_loop_heavy_ones_on_the_apply_thread(drivers):
    loop_thread = threading.current_thread().name
    leader = drivers[0]
    await asyncio.wait_for(leader.propose(b"light"), 5)
    index, _ = await asyncio.wait_for(leader.propose(b"heavy"), 5)
    await _all_applied(drivers, index)
    for d in drivers:
        by_cmd = dict(zip(d.db.items, d.db.threads, strict=True))
        assert by_cmd[b"light"] == loop_thread, (d.node_id, by_cmd)
        assert by_cmd[b"heavy"] == f"raft-apply-{d.node_id}", (d.node_id, by_cmd)
        assert d.router.inline_batches >= 1 and d.router.handed_batches >= 1


async def test_light_batches_behind_a_busy_apply_thread_wait_their_turn_in_log_order(drivers):
    leader = drivers[0]
    heavy_index = leader.core.last_index + 1
    heavy = leader.propose(b"heavy-0")
    # committed, and now applying for HEAVY_APPLY_S on every apply thread: propose light ones
    await async_wait_for(lambda: leader.core.commit_index >= heavy_index, 5, "the heavy write to commit")
    lights = [leader.propose(b"light-%d" % i) for i in (1, 2)]
    results = await asyncio.wait_for(asyncio.gather(heavy, *lights), 10)
    await _all_applied(drivers, max(i for i, _ in results))
    for d in drivers:
        assert d.db.items[-3:] == [b"heavy-0", b"light-1", b"light-2"], (d.node_id, d.db.items)
    # light-1 came while the apply thread was busy: it went there, behind heavy-0
    threads = dict(zip(leader.db.items, leader.db.threads, strict=True))
    assert threads[b"light-1"] == f"raft-apply-{leader.node_id}", threads


async def test_a_snapshot_taken_right_after_light_writes_holds_them(drivers):
    leader = drivers[0]
    for i in range(5):
        last, _ = await asyncio.wait_for(leader.propose(b"w%d" % i), 5)
    assert leader.router.inline_batches >= 1
    index = await asyncio.wait_for(leader.take_snapshot(), 10)
    assert index >= last
    snap = leader.snapshots.path(index).read_text()
    assert all((b"w%d" % i).hex() in snap for i in range(5))
