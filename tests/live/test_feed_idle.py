"""The live service does not wake its event loop for feed events nobody can want (no subscription,
no waiter, nothing in flight), yet its processed index and waits stay exact."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from kalamdb.engine import Database, Principal
from kalamdb.live.service import LiveService
from kalamdb.testing.waiting import async_wait_for

ROOT = Principal("root", "root", "system")


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path), durable=False)
    yield d
    d.close()


@pytest.fixture
async def svc(db):
    service = LiveService(db, node_id=1)
    await service.start()
    yield service
    await service.close()


class Writer:
    """Applies one-row INSERTs as the apply thread would (here: on the calling thread)."""

    def __init__(self, db: Database):
        self.db = db
        self.index = db.applied_index
        self.keys = itertools.count(1)
        self._apply("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)")

    def _apply(self, sql: str, params: list | None = None) -> int:
        prepared = self.db.prepare(sql, params, None, ROOT)
        self.index += 1
        outcome = self.db.apply(self.index, self.db.to_command(prepared, now_us=time.time_ns() // 1000, node_id=1))
        assert outcome.error is None, outcome.error
        return self.index

    def insert(self) -> int:
        k = next(self.keys)
        return self._apply("INSERT INTO t (id, v) VALUES ($1, $2)", [k, f"v{k}"])


async def test_without_subscribers_events_do_not_wake_the_loop_and_processed_keeps_up(db, svc):
    w = Writer(db)
    loop = asyncio.get_running_loop()
    calls = 0
    original = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        for _ in range(20):
            index = w.insert()
            # no loop iteration ran since the apply: the skip itself moved the processed index
            assert svc.processed_index == index
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
    assert calls == 0
    await asyncio.wait_for(svc.wait_processed(w.index), 1)


async def test_a_waiter_gets_the_event_it_waits_for(db, svc):
    w = Writer(db)
    target = w.index + 1
    waiting = asyncio.create_task(svc.wait_processed(target))
    # once it is registered, events go to the dispatcher
    await async_wait_for(lambda: not svc._idle(), 5, "the waiter to register")
    assert not waiting.done()
    # applied on another thread, as the apply thread does
    await asyncio.to_thread(w.insert)
    await asyncio.wait_for(waiting, 5)
    assert svc.processed_index >= target


async def test_events_after_a_dispatched_one_are_skipped_again_once_it_is_handled(db, svc):
    w = Writer(db)
    waiting = asyncio.create_task(svc.wait_processed(w.index + 1))
    await async_wait_for(lambda: not svc._idle(), 5, "the waiter to register")
    w.insert()  # a waiter exists: this one is queued to the dispatcher
    await asyncio.wait_for(waiting, 5)
    await async_wait_for(svc._idle, 5, "the dispatcher to finish the event it took")
    later = w.insert()
    assert svc.processed_index == later  # skipped: nothing in flight, nobody waits
