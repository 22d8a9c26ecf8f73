"""Membership at run time: CLUSTER JOIN of a new node, removal, and upstream's rejoin bug."""

from __future__ import annotations

import threading

import pytest

pytestmark = pytest.mark.cluster


def test_a_new_node_joins_and_serves_local_reads_of_everything_before(fresh_cluster):
    c = fresh_cluster
    ns = c.unique_namespace("join")
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    values = ", ".join(f"({i}, 'v{i}')" for i in range(300))
    r = c.execute_sql_on_random(f"INSERT INTO {ns}.t (id, v) VALUES {values}").raise_for_error()
    new = c.add_node()
    assert new.node_id == 4
    rows = new.sql(f"SELECT COUNT(*) FROM {ns}.t", consistency="local", min_applied_index=r.raft_index)
    assert rows.raise_for_error().rows == [["300"]]
    assert c.leader().health()["voters"] == [1, 2, 3, 4]
    # the new node takes writes too (forwarded) and everyone agrees
    new.sql(f"INSERT INTO {ns}.t (id, v) VALUES (1000, 'via-4')").raise_for_error()
    assert c.verify_data_consistency(f"SELECT id, v FROM {ns}.t ORDER BY id")


def test_a_joining_node_is_a_learner_in_system_cluster_until_it_caught_up(fresh_cluster):
    c = fresh_cluster
    leader = c.leader()
    new = c.new_node()
    c.processes.pause(new)  # it cannot catch up, so it stays a learner while we look
    answer = {}

    def join():
        with leader.client(timeout=60) as cl:  # JOIN answers once the node is a voter
            answer["r"] = cl.sql(f"CLUSTER JOIN {new.node_id} '{new.rpc_addr}' '{new.url}'")

    joiner = threading.Thread(target=join)
    joiner.start()
    try:
        def role_of_new() -> tuple[bool, str]:
            rows = leader.sql("SELECT node_id, role FROM system.cluster ORDER BY node_id").raise_for_error().rows
            return [str(new.node_id), "learner"] in rows, f"system.cluster: {rows}"

        c.wait_until("the new node listed as a learner", role_of_new, 10)
        h = leader.health()
        assert h["voters"] == [1, 2, 3] and h["learners"] == [new.node_id], h
    finally:
        c.processes.resume(new)
        joiner.join(60)
    assert answer["r"].ok and "as a voter" in answer["r"].results[0]["message"], answer
    c.wait_for_voters({1, 2, 3, 4})
    rows = leader.sql("SELECT node_id, role FROM system.cluster ORDER BY node_id").raise_for_error().rows
    assert rows[-1] == [str(new.node_id), "follower"] and [r[1] for r in rows].count("leader") == 1, rows


def test_a_node_can_be_removed(fresh_cluster):
    c = fresh_cluster
    c.remove_node(2)
    assert c.leader().health()["voters"] == [1, 2]
    r = c.execute_sql_on_random(f"CREATE NAMESPACE {c.unique_namespace('after_remove')}")
    assert r.ok, r


@pytest.mark.parametrize("via_snapshot", [False, True], ids=["from-log", "from-snapshot"])
def test_a_node_down_during_create_and_inserts_applies_the_create_first(fresh_cluster, via_snapshot):
    """Upstream bug: a rejoining node could apply a data write before the DDL that created its table."""
    c = fresh_cluster
    down = c.followers()[-1]
    c.processes.kill(down)
    ns = c.unique_namespace("rejoin")
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE USER TABLE {ns}.notes (id BIGINT PRIMARY KEY, body TEXT)").raise_for_error()
    last = None
    for i in range(50):
        last = c.execute_sql_on_leader(f"INSERT INTO {ns}.notes (id, body) VALUES ({i}, 'n{i}')").raise_for_error()
    if via_snapshot:
        c.execute_sql_on_leader("CLUSTER SNAPSHOT").raise_for_error()
    c.processes.start(down)
    got = down.sql(f"SELECT COUNT(*) FROM {ns}.notes", consistency="local", min_applied_index=last.raft_index)
    assert got.raise_for_error().rows == [["50"]], got
    log = down.log_path.read_text()
    assert "Command could not be applied" not in log and "does not exist" not in log
    assert c.verify_state_digest()
