"""Live queries on a real 3-node cluster: every node serves its own subscribers from its own applied
state, in log order, for writes through any node; a subscriber resumes on another node; a
subscriber of a follower that installs a snapshot receives exactly what it missed."""

import asyncio
import random

import pytest

from tests.live.helpers import View

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]


async def next_change(events, timeout: float = 15.0) -> dict:
    while True:
        ev = await asyncio.wait_for(anext(events), timeout)
        if ev["type"] == "change":
            return ev


async def test_subscribers_on_every_node_see_every_write_in_log_order(cluster):
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    ns = cluster.unique_namespace("live")
    table = f"{ns}.t"
    r = cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}")
    assert r.ok, r
    r = cluster.execute_sql_on_leader(f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT)")
    assert r.ok, r
    cluster.wait_for_replication(r.raft_index)
    subs = [cluster.subscribe(i, f"SELECT * FROM {table}") for i in range(len(cluster.nodes))]
    for s in subs:
        await s.start()
    streams = [aiter(s) for s in subs]
    views = [View() for _ in subs]
    for events, view in zip(streams, views, strict=True):
        assert (await anext(events))["type"] == "subscription_ack"
        view.load((await anext(events))["rows"])
    writes = 0
    for k in range(40):
        node = rng.randrange(len(cluster.nodes))
        op = rng.random()
        if op < 0.5 or k < 5:
            sql = f"INSERT INTO {table} (id, v) VALUES ({k}, {k})"
        elif op < 0.8:
            sql = f"UPDATE {table} SET v = v + 1 WHERE id = {rng.randrange(k)}"
        else:
            sql = f"DELETE FROM {table} WHERE id = {rng.randrange(k)}"
        resp = await cluster.execute_sql_on_async(node, sql)
        assert resp.ok, resp
        writes += resp.row_count > 0
    index = cluster.wait_for_replication()
    final = {r["id"]: {"id": r["id"], "v": r["v"]} for r in cluster.get_node(0).sql(
        f"SELECT id, v FROM {table}", consistency="local", min_applied_index=index).dicts()}
    orders = []
    for i, (events, view) in enumerate(zip(streams, views, strict=True)):
        seqs = []
        for _ in range(writes):
            ev = await next_change(events)
            view.apply(ev)
            seqs.append((ev.get("rows") or ev.get("old_values"))[0]["_seq"])
            # the node applied the change before it told the subscriber
            node = cluster.get_node(i)
            local = node.sql(f"SELECT COUNT(*) FROM {table} WHERE _seq >= {seqs[-1]}", consistency="local")
            assert local.ok, local
        assert view.problems == [], view.problems
        assert view.user_values() == final
        orders.append(seqs)
    assert orders[0] == orders[1] == orders[2]
    for s in subs:
        await s.close()


async def test_resume_on_another_node(cluster):
    ns = cluster.unique_namespace("live")
    table = f"{ns}.t"
    cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.execute_sql_on_leader(f"CREATE USER TABLE {table} (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    cluster.execute_sql_on_leader(f"INSERT INTO {table} (id, v) VALUES (1, 'a')").raise_for_error()
    first = cluster.subscribe(1, f"SELECT * FROM {table}")
    view = View()
    async with first:
        events = aiter(first)
        await anext(events)
        view.load((await anext(events))["rows"])
        view.last_seq = first.last_seq
        cluster.execute_sql_on(2, f"UPDATE {table} SET v = 'b' WHERE id = 1").raise_for_error()
        view.apply(await next_change(events))
        resume_from = first.last_seq
    cluster.execute_sql_on(0, f"INSERT INTO {table} (id, v) VALUES (2, 'c')").raise_for_error()
    cluster.execute_sql_on(1, f"DELETE FROM {table} WHERE id = 1").raise_for_error()
    second = cluster.subscribe(2, f"SELECT * FROM {table}", from_seq=resume_from)
    async with second:
        events = aiter(second)
        for _ in range(2):
            view.apply(await next_change(events))
        assert view.problems == []
        assert view.user_values() == {"2": {"id": "2", "v": "c"}}


@pytest.mark.cluster(nodes=3, faults=True)
async def test_follower_installing_a_snapshot_delivers_exactly_what_it_missed(fresh_cluster):
    c = fresh_cluster
    ns = c.unique_namespace("live")
    table = f"{ns}.t"
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, v BIGINT)").raise_for_error()
    c.wait_for_replication()
    follower = c.followers()[0]
    sub = c.subscribe(follower, f"SELECT * FROM {table}")
    view = View()
    async with sub:
        events = aiter(sub)
        await anext(events)
        view.load((await anext(events))["rows"])
        c.net.isolate(follower)  # its subscriber stays connected to it
        leader = c.leader(among=[n for n in c.nodes if n is not follower])
        for k in range(300):
            leader.sql(f"INSERT INTO {table} (id, v) VALUES ({k}, {k})").raise_for_error()
        for k in range(0, 300, 3):
            leader.sql(f"UPDATE {table} SET v = -1 WHERE id = {k}").raise_for_error()
        leader.sql("CLUSTER SNAPSHOT").raise_for_error()
        leader.sql(f"CLUSTER PURGE {leader.applied_index()}").raise_for_error()
        c.net.heal()
        index = c.wait_for_replication(timeout=60)
        assert "installed snapshot" in follower.log_path.read_text()
        final = {r["id"]: {"id": r["id"], "v": r["v"]} for r in follower.sql(
            f"SELECT id, v FROM {table}", consistency="local", min_applied_index=index).dicts()}
        while view.user_values() != final:
            view.apply(await next_change(events))
            assert not view.problems, view.problems[:3]
        assert view.problems == []
