"""Exactly once, in order, no gap: initial loads (paged or not) while writers insert, update and
delete concurrently, and resumes with `from`. Each subscriber materialises what it receives
(tests.live.helpers.View checks every update against the `_seq` it holds) and must end with the
table's final rows. Randomness is seeded; the seed is printed."""

import asyncio
import random

import pytest

from kalamdb.client import AsyncClient
from tests.live.helpers import View, Ws, login

pytestmark = pytest.mark.asyncio


async def writer(db: AsyncClient, table: str, rng: random.Random, stop: asyncio.Event, keys: int,
                 started: asyncio.Event | None = None, at_least: int = 0, at_most: int = 1500) -> int:
    """Random writes until `stop` and at least `at_least` of them; `started` is set after the 5th.

    At most `at_most`: a subscription buffers at most 10,000 changes during its initial load (then
    it fails with BATCH_FETCH_FAILED, by design), and a slow machine can stretch a one-row-per-batch
    load long enough for unbounded writers to pass that limit."""
    n = 0
    while (not stop.is_set() or n < at_least) and n < at_most:
        if n == 5 and started is not None:
            started.set()
        k = rng.randrange(keys)
        roll = rng.random()
        if roll < 0.4:
            sql, params = f"INSERT INTO {table} (id, v, grp) VALUES ($1, $2, $3)", [k, rng.randrange(1000), k % 3]
        elif roll < 0.8:
            sql, params = f"UPDATE {table} SET v = $2 WHERE id = $1", [k, rng.randrange(1000)]
        else:
            sql, params = f"DELETE FROM {table} WHERE id = $1", [k]
        await db.sql(sql, params)  # a duplicate key or a missing row is fine: the table decides
        n += 1
    return n


async def final_rows(db: AsyncClient, table: str, where: str = "") -> dict[str, dict]:
    resp = await db.sql(f"SELECT id, v, grp FROM {table}{where}")
    assert resp.ok, resp
    return {r["id"]: r for r in resp.dicts()}


async def drain_until(ws: Ws, view: View, expected: dict[str, dict], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while view.user_values() != expected:
        left = deadline - loop.time()
        assert left > 0, f"view never matched the table: {view.problems[:3]}\nview={view.user_values()}\nwant={expected}"
        try:
            msg = await ws.recv(timeout=left)
        except TimeoutError:
            continue
        assert msg["type"] == "change", msg
        view.apply(msg)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
async def test_paged_initial_load_under_concurrent_writes(server, unique_ns, batch_size):
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    table = f"{unique_ns}.t"
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT, grp INT)").ok
    rows = ", ".join(f"({k}, {k}, {k % 3})" for k in range(0, 120, 2))
    assert server.sql(f"INSERT INTO {table} (id, v, grp) VALUES {rows}").ok
    token = await login(server.url)
    async with AsyncClient(server.url) as db:
        stop, started = asyncio.Event(), asyncio.Event()
        writers = [asyncio.create_task(writer(db, table, random.Random(rng.random()), stop, 150, started, 30))
                   for _ in range(3)]
        try:
            views = []
            await started.wait()  # the loads below run while the writers write
            for where in ("", " WHERE grp = 1"):
                ws = await Ws.connect(server.url, token)
                await ws.recv_type("auth_success")
                _, rows, control = await ws.load("s", f"SELECT * FROM {table}{where}", {"batch_size": batch_size})
                view = View()
                view.load(rows)
                view.last_seq = control["last_seq_id"]
                assert len({r["id"] for r in rows}) == len(rows), "a row twice in the initial data"
                assert all(int(r["_seq"]) <= control["last_seq_id"] for r in rows)
                views.append((ws, view, where))
        finally:
            stop.set()
            counts = await asyncio.gather(*writers)
        assert sum(counts) >= 90
        for ws, view, where in views:
            await drain_until(ws, view, await final_rows(db, table, where))
            assert view.problems == []
            await ws.close()


async def test_resume_from_last_seq_gets_exactly_the_missed_changes(server, unique_ns):
    table = f"{unique_ns}.t"
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT, grp INT)").ok
    token = await login(server.url)
    async with AsyncClient(server.url) as db:
        for k in range(5):
            await db.sql(f"INSERT INTO {table} (id, v, grp) VALUES ({k}, 0, 0)")
        ws = await Ws.connect(server.url, token)
        await ws.recv_type("auth_success")
        _, rows, control = await ws.load("s", f"SELECT * FROM {table}")
        view = View()
        view.load(rows)
        view.last_seq = control["last_seq_id"]
        await db.sql(f"UPDATE {table} SET v = 1 WHERE id = 1")
        view.apply(await ws.recv_type("change"))
        await ws.close()
        # missed while away: every kind of change, some rows twice
        await db.sql(f"UPDATE {table} SET v = 2 WHERE id = 1")
        await db.sql(f"DELETE FROM {table} WHERE id = 2")
        await db.sql(f"INSERT INTO {table} (id, v, grp) VALUES (9, 9, 0)")
        await db.sql(f"UPDATE {table} SET v = 3 WHERE id = 1")
        await db.sql(f"INSERT INTO {table} (id, v, grp) VALUES (2, 7, 0)")
        ws = await Ws.connect(server.url, token)
        await ws.recv_type("auth_success")
        _, rows, control = await ws.load("s", f"SELECT * FROM {table}", {"from": view.last_seq})
        assert rows == [] and control == {"batch_num": 0, "has_more": False, "status": "ready",
                                          "last_seq_id": view.last_seq}
        kinds = []
        for _ in range(5):
            msg = await ws.recv_type("change")
            kinds.append(msg["change_type"])
            view.apply(msg)
        assert kinds == ["update", "delete", "insert", "update", "insert"]
        await db.sql(f"UPDATE {table} SET v = 4 WHERE id = 9")  # then live ones
        view.apply(await ws.recv_type("change"))
        assert view.problems == []
        assert view.user_values() == await final_rows(db, table)
        with pytest.raises(TimeoutError):
            await ws.recv(timeout=0.3)
        await ws.close()


async def test_python_client_resumes_after_disconnect(server, unique_ns):
    table = f"{unique_ns}.t"
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT, grp INT)").ok
    async with AsyncClient(server.url) as db:
        await db.sql(f"INSERT INTO {table} (id, v, grp) VALUES (1, 1, 0)")
        async with db.subscribe(f"SELECT * FROM {table}", batch_size=1) as sub:
            view = View()
            events = aiter(sub)
            ev = await anext(events)
            assert ev["type"] == "subscription_ack"
            ev = await anext(events)
            view.load(ev["rows"])
            await db.sql(f"INSERT INTO {table} (id, v, grp) VALUES (2, 2, 0)")
            ev = await anext(events)
            view.apply(ev)
            await sub._ws.close()  # the connection breaks (as when a node dies)
            await db.sql(f"UPDATE {table} SET v = 5 WHERE id = 1")
            await db.sql(f"DELETE FROM {table} WHERE id = 2")
            seen = []
            while len([e for e in seen if e["type"] == "change"]) < 2:
                ev = await anext(events)
                seen.append(ev)
                if ev["type"] == "change":
                    view.apply(ev)
            assert seen[0]["type"] == "reconnected" and sub.reconnects == 1
            assert view.problems == [] and view.user_values() == await final_rows(db, table)


async def test_resume_older_than_the_change_log_is_a_clear_error_then_a_full_reload(tmp_path):
    """The change log keeps 24 h (by the commands' clock): a node restarted 25 h later prunes it at
    the next pruning index, and a resume from before that is refused with RESUME_TOO_OLD (never a
    silent gap); the Python client then reloads the whole subscription."""
    from kalamdb.engine.changes import PRUNE_EVERY
    from kalamdb.testing.single import start_server

    srv = start_server(tmp_path / "data")
    try:
        assert srv.sql("CREATE NAMESPACE n").ok
        assert srv.sql("CREATE SHARED TABLE n.t (id BIGINT PRIMARY KEY, v BIGINT)").ok
        assert srv.sql("INSERT INTO n.t (id, v) VALUES (1, 1)").ok
        ws = await Ws.connect(srv.url, await login(srv.url))
        await ws.recv_type("auth_success")
        _, _, control = await ws.load("s", "SELECT * FROM n.t")
        old_point = control["last_seq_id"]
        await ws.close()
        assert srv.sql("INSERT INTO n.t (id, v) VALUES (2, 2)").ok  # missed by the subscriber, then pruned
        srv.env["KALAMDB_CLOCK_OFFSET_MS"] = str(25 * 3600 * 1000)
        srv.restart()
        async with AsyncClient(srv.url) as db:
            sem = asyncio.Semaphore(16)

            async def touch(i: int) -> None:
                async with sem:
                    assert (await db.sql("UPDATE n.t SET v = $1 WHERE id = 1", [i])).ok

            await asyncio.gather(*(touch(i) for i in range(PRUNE_EVERY + 10)))
            ws = await Ws.connect(srv.url, await login(srv.url))
            await ws.recv_type("auth_success")
            await ws.subscribe("s", "SELECT * FROM n.t", {"from": old_point})
            await ws.recv_type("subscription_ack")
            await ws.recv_type("initial_data_batch")
            msg = await ws.recv()
            assert (msg["subscription_id"], msg["code"]) == ("s", "RESUME_TOO_OLD"), msg
            assert "subscribe again without `from`" in msg["message"]
            await ws.close()
            async with db.subscribe("SELECT * FROM n.t", from_seq=old_point) as sub:
                events = aiter(sub)
                kinds = [(await anext(events))["type"] for _ in range(5)]
                assert kinds == ["subscription_ack", "initial_data_batch", "reload", "subscription_ack",
                                 "initial_data_batch"]
                assert sub.ready and sub.last_seq > old_point
    finally:
        srv.kill()
