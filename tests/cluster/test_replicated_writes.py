"""Every write is replicated: written on any node, read back from every replica's own state.
All on the shared cluster: these tests change no membership and stop no node."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.cluster


def test_a_write_on_each_node_is_read_locally_on_every_node(cluster):
    ns = cluster.unique_namespace("w")
    cluster.execute_sql_on(0, f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.execute_sql_on(1, f"CREATE SHARED TABLE {ns}.items (id BIGINT PRIMARY KEY, name TEXT)").raise_for_error()
    last = 0
    for i, node in enumerate(cluster.nodes):
        r = node.sql(f"INSERT INTO {ns}.items (id, name) VALUES ($1, $2)", [i, f"from-node-{node.node_id}"])
        assert r.ok, r
        assert isinstance(r.raft_index, int) and r.raft_index > last, r
        last = r.raft_index
    for node in cluster.nodes:
        local = node.sql(f"SELECT id, name FROM {ns}.items ORDER BY id", consistency="local",
                         min_applied_index=last).raise_for_error()
        assert local.rows == [["0", "from-node-1"], ["1", "from-node-2"], ["2", "from-node-3"]], (node, local)
    report = cluster.verify_data_consistency(f"SELECT id, name FROM {ns}.items ORDER BY id")
    assert report, report
    assert cluster.verify_state_digest()


def test_a_follower_forwards_writes_and_errors_to_the_leader(cluster):
    ns = cluster.unique_namespace("fwd")
    follower = cluster.followers()[0]
    assert follower.sql(f"CREATE NAMESPACE {ns}").ok
    again = follower.sql(f"CREATE NAMESPACE {ns}")
    assert again.http_status == 400 and "already exists" in again.error["message"], again
    bad = follower.sql("CREATE NAMESPACE bad-name")
    assert bad.http_status == 400 and bad.error["code"] in ("INVALID_SQL", "SQL_EXECUTION_ERROR"), bad


def test_linearizable_read_on_a_follower_sees_the_latest_acknowledged_write(cluster):
    ns = cluster.unique_namespace("lin")
    leader = cluster.leader()
    leader.sql(f"CREATE NAMESPACE {ns}").raise_for_error()
    leader.sql(f"CREATE SHARED TABLE {ns}.reg (k INT PRIMARY KEY, v INT)").raise_for_error()
    leader.sql(f"INSERT INTO {ns}.reg (k, v) VALUES (1, 0)").raise_for_error()
    followers = cluster.followers()
    for v in range(1, 30):
        leader.sql(f"UPDATE {ns}.reg SET v = {v} WHERE k = 1").raise_for_error()
        # no min_applied_index: the default (linearizable) read must not be stale
        got = followers[v % 2].sql(f"SELECT v FROM {ns}.reg WHERE k = 1").raise_for_error().rows
        assert got == [[v]], (v, got)


def test_write_answers_carry_the_raft_index_and_local_reads_wait_for_it(cluster):
    ns = cluster.unique_namespace("idx")
    r = cluster.execute_sql_on_random(f"CREATE NAMESPACE {ns}")
    assert r.ok and r.raft_index > 0
    for node in cluster.nodes:
        shown = node.sql("SHOW NAMESPACES", consistency="local", min_applied_index=r.raft_index).raise_for_error()
        assert [ns] in [row[:1] for row in shown.rows]
    too_far = cluster.get_node(0).sql("SHOW NAMESPACES", consistency="local", min_applied_index=r.raft_index + 10**6)
    assert too_far.http_status == 503, too_far


def test_cluster_list_and_status_point_to_system_cluster(cluster):
    for stmt in ("CLUSTER LIST", "CLUSTER STATUS"):
        r = cluster.execute_sql_on_random(stmt)
        assert not r.ok and "system.cluster" in r.error["message"], r


def test_system_cluster_reports_real_values(cluster):
    leader = cluster.leader()
    rows = leader.sql("SELECT node_id, role, is_leader, current_term, last_applied_log, memory_usage_mb, "
                      "uptime_seconds, is_self FROM system.cluster ORDER BY node_id").raise_for_error().dicts()
    me = next(r for r in rows if r["is_self"])
    assert me["is_leader"] is True and me["role"] == "leader"
    assert int(me["current_term"]) >= 1 and int(me["last_applied_log"]) >= 1
    assert 5 < me["memory_usage_mb"] < 1000
    health = leader.health()
    assert health["status"] == "healthy" and health["is_cluster_mode"] is True
    assert len(health["nodes"]) == 3


def test_every_node_says_when_it_applied_a_write_on_the_machines_monotonic_clock(cluster):
    ns = cluster.unique_namespace("at")
    cluster.execute_sql_on_random(f"CREATE NAMESPACE {ns}").raise_for_error()
    before = time.monotonic()
    r = cluster.execute_sql_on_random(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
    for node in cluster.nodes:
        answer = node._request("GET", f"/v1/api/cluster/wait?index={r.raft_index}&timeout_ms=10000", timeout=11)
        assert answer["reached"] is True, (node, answer)
        at = answer["applied_at_monotonic_s"]
        assert before <= at <= time.monotonic(), (node, before, at)  # same clock: the nodes run on this machine
    never = cluster.get_node(0)._request("GET", f"/v1/api/cluster/wait?index={r.raft_index + 10**6}&timeout_ms=0",
                                         timeout=5)
    assert never["reached"] is False and never["applied_at_monotonic_s"] is None, never
