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


class _Loop:
    """The caller's loop as the router sees it: what was posted, run when the test says so."""

    def __init__(self):
        self.posted: list = []

    def post(self, fn, *args) -> None:
        self.posted.append((fn, args))

    def run_posted(self) -> int:
        todo, self.posted = self.posted, []
        for fn, args in todo:
            fn(*args)
        return len(todo)


@pytest.fixture
def router():
    from kalamdb.node.applier import Applier
    from kalamdb.node.apply_router import ApplyRouter
    from kalamdb.raft.types import Entry, EntryKind
    from tests.raft.driver_harness import ListMachine

    sm = ListMachine(1)
    applier = Applier(sm, node_id=1, on_applied=lambda batch, outcomes: None, on_failure=lambda exc: None)
    applier.start()
    loop = _Loop()
    r = ApplyRouter(applier, light=lambda entries: sm.light_batch(applier.commands(entries)), post=loop.post)
    index = iter(range(1, 1_000))

    def batch(*cmds: bytes) -> list:
        return [Entry(1, next(index), EntryKind.NORMAL, c) for c in cmds]

    yield r, sm, applier, loop, batch
    applier.stop(5)


def test_batches_that_queue_up_meanwhile_share_one_wake_up_and_one_transaction(router):
    r, sm, _, loop, batch = router
    for i in range(3):
        r.submit(batch(b"a%d" % i, b"b%d" % i))
    assert len(loop.posted) == 1  # one wake-up of the loop for all three
    loop.run_posted()
    assert sm.batches == [[b"a0", b"b0", b"a1", b"b1", b"a2", b"b2"]]
    assert (r.inline_batches, r.coalesced_batches, r.handed_batches) == (1, 2, 0)
    r.submit(batch(b"later"))  # the drain took the queue: the next batch wakes the loop again
    assert loop.run_posted() == 1 and sm.batches[-1] == [b"later"]


def test_a_run_with_a_heavy_batch_is_routed_batch_by_batch_in_order(router):
    r, sm, applier, loop, batch = router
    r.submit(batch(b"light-1"))
    r.submit(batch(b"heavy-2"))
    r.submit(batch(b"light-3"))
    loop.run_posted()
    assert r.coalesced_batches == 0
    assert sm.batches[0] == [b"light-1"]  # applied on the loop before the heavy one was handed over
    wait_until(lambda: applier.completed == 2 and len(sm.items) == 3)
    assert sm.items == [b"light-1", b"heavy-2", b"light-3"]
    assert sm.threads[0] == threading.current_thread().name and sm.threads[1:] == ["raft-apply-1"] * 2


def test_a_job_between_batches_keeps_its_place(router):
    r, sm, _, loop, batch = router
    seen: list = []
    r.submit(batch(b"before"))
    job = r.run(lambda: seen.append(list(sm.items)) or len(sm.items))
    r.submit(batch(b"after"))
    assert len(loop.posted) == 1
    loop.run_posted()
    assert job.result(5) == 1 and seen == [[b"before"]]  # the job saw the batch before it, not the one after
    wait_until(lambda: sm.items == [b"before", b"after"])
    assert sm.threads[1] == "raft-apply-1"  # behind the job, on the apply thread


def wait_until(cond, timeout: float = 5.0) -> None:
    from kalamdb.testing.waiting import wait_for

    wait_for(cond, timeout, "the apply thread")
