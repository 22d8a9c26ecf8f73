"""Group commit in the standalone node, against a real Database on a real SQLite file."""

from __future__ import annotations

import asyncio
import time

import pytest

from kalamdb.engine import Database
from kalamdb.errors import KalamError
from kalamdb.server.standalone import StandaloneNode


def command(db: Database, sql: str) -> bytes:
    root = db.authenticate("root", "")
    return db.to_command(db.prepare(sql, None, None, root), now_us=time.time_ns() // 1000, node_id=1)


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "data")
    try:
        yield database
    finally:
        database.close()


async def test_concurrent_commands_share_one_batch_and_get_consecutive_indexes(db):
    node = StandaloneNode(db)
    await node.start()
    try:
        assert (await node.submit(command(db, "CREATE NAMESPACE g")))[1].error is None
        assert (await node.submit(command(db, "CREATE SHARED TABLE g.t (id INT PRIMARY KEY)")))[1].error is None
        batches_before = node._committer.batches
        cmds = [command(db, f"INSERT INTO g.t (id) VALUES ({i})") for i in range(100)]
        answers = await asyncio.gather(*(node.submit(c) for c in cmds))
    finally:
        await node.stop()
    indexes = [index for index, _ in answers]
    assert indexes == list(range(3, 103))  # in submission order, no gaps
    assert all(outcome.error is None for _, outcome in answers)
    # the first command finds the writer idle; the other 99 wait and go in ONE apply_batch
    assert node._committer.batches - batches_before == 2
    assert db.applied_index == 102


async def test_a_failing_command_fails_alone(db):
    node = StandaloneNode(db)
    await node.start()
    try:
        await node.submit(command(db, "CREATE NAMESPACE f"))
        await node.submit(command(db, "CREATE SHARED TABLE f.t (id INT PRIMARY KEY)"))
        cmds = [command(db, "INSERT INTO f.t (id) VALUES (1)"), command(db, "INSERT INTO f.t (id) VALUES (1)"),
                command(db, "INSERT INTO f.t (id) VALUES (2)")]
        answers = await asyncio.gather(*(node.submit(c) for c in cmds))
    finally:
        await node.stop()
    errors = [outcome.error for _, outcome in answers]
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "Primary key violation" in errors[1].message


async def test_storage_failure_fails_the_requests_without_hanging_the_node(db):
    node = StandaloneNode(db)
    await node.start()
    good = command(db, "CREATE NAMESPACE s")
    db.close()  # the storage goes away under the node
    with pytest.raises(KalamError) as info:
        await asyncio.wait_for(node.submit(good), timeout=10)
    assert info.value.code == "INTERNAL_ERROR"
    await asyncio.wait_for(node.stop(), timeout=10)


async def test_stop_drains_accepted_commands_then_refuses_new_ones(db):
    node = StandaloneNode(db)
    await node.start()
    cmds = [command(db, f"CREATE NAMESPACE d{i}") for i in range(20)]
    pending = [asyncio.ensure_future(node.submit(c)) for c in cmds]
    await asyncio.sleep(0)  # let every submit enqueue (a scheduling step, not a wait for state)
    await node.stop()
    assert all(p.done() and p.result()[1].error is None for p in pending)
    assert db.applied_index == 20
    with pytest.raises(KalamError) as info:
        await node.submit(command(db, "CREATE NAMESPACE late"))
    assert info.value.status == 503
