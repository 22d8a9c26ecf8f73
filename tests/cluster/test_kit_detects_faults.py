"""The kit tested itself: its checks must fail when the cluster is really wrong.

A replica whose SQLite state was changed behind Raft's back must be named by verify_data_consistency
(with its differing rows) and by verify_state_digest; a replication barrier over a hung node must time
out naming it and its lag; the leader helpers must never return a node that is not a safe answer.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from kalamdb.testing.cluster import ClusterError

pytestmark = pytest.mark.cluster


def test_a_tampered_replica_is_named_with_its_differing_rows(fresh_cluster):
    c = fresh_cluster
    ns = c.unique_namespace("tamper")
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    c.execute_sql_on_leader(f"INSERT INTO {ns}.t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')").raise_for_error()
    query = f"SELECT id, v FROM {ns}.t ORDER BY id"
    assert c.verify_data_consistency(query)
    assert c.verify_state_digest()

    victim = c.get_node(2)
    c.processes.stop(victim)
    db = sqlite3.connect(victim.data_dir / "state.sqlite")
    try:
        with db:
            assert db.execute(f'UPDATE "{ns}.t" SET v = \'tampered\' WHERE id = 2').rowcount == 1
            assert db.execute(f'DELETE FROM "{ns}.t" WHERE id = 3').rowcount == 1
    finally:
        db.close()
    c.processes.start(victim)

    report = c.verify_data_consistency(query)
    assert not report, f"tampering went unnoticed: {report}"
    assert report.differing_nodes == [victim.node_id]
    diff = report.diff_for(victim.node_id)
    assert diff.different == [(("2", "tampered"), ("2", "b"))], diff
    assert diff.missing == [("3", "c")] and diff.extra == [], diff
    text = str(report)
    assert f"node {victim.node_id}" in text and "tampered" in text and "missing 1 row" in text, text

    digests = c.verify_state_digest()
    assert not digests, digests
    assert digests.differing_nodes == [victim.node_id], digests
    assert "DIFFER" in str(digests)


@pytest.mark.process_control
def test_a_barrier_over_a_paused_node_times_out_naming_it_and_its_lag(cluster):
    ns = cluster.unique_namespace("hung")
    first = cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.wait_for_replication(first.raft_index)
    hung = cluster.followers()[-1]
    cluster.processes.pause(hung)
    try:
        cluster.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
        last = cluster.execute_sql_on_leader(f"INSERT INTO {ns}.t (id) VALUES (1)").raise_for_error()
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as err:
            cluster.wait_for_replication(last.raft_index, timeout=1.0)
        took = time.monotonic() - t0
    finally:
        cluster.processes.resume(hung)
    message = str(err.value)
    assert f"node {hung.node_id} (paused)" in message, message
    assert f"index {last.raft_index}" in message and "behind by at least" in message, message
    assert "replication lag" in message, message  # the leader's view of the hung node
    assert not any(f"node {n.node_id}" in message for n in cluster.nodes if n is not hung), message
    assert took < 3.0, f"a 1 s barrier took {took:.1f}s to give up"
    # resumed, it catches up and the same barrier passes
    assert cluster.wait_for_replication(last.raft_index, timeout=10) == last.raft_index


def test_leader_helpers_never_return_a_paused_or_unconfirmed_leader(fresh_cluster):
    c = fresh_cluster
    old = c.leader()
    c.processes.pause(old)
    try:
        new = c.leader(timeout=10)
        assert new is not old and not new.paused
        assert new.is_leader()
        assert old not in c.followers() or old.paused
        # with two of three nodes hung the one left cannot be a confirmed leader
        c.processes.pause(new)
        try:
            t0 = time.monotonic()
            with pytest.raises(ClusterError) as err:
                c.leader(timeout=1.5)
            assert time.monotonic() - t0 < 4.0
            assert "majority" in str(err.value) or "no node knows a leader" in str(err.value), err.value
        finally:
            c.processes.resume(new)
    finally:
        c.processes.resume(old)
    # both back: exactly one node claims leadership and everyone names it
    lead = c.leader(timeout=10)
    claims = [n.node_id for n in c.nodes if n.is_leader()]
    assert claims == [lead.node_id], claims


def test_a_stopped_node_answers_node_down_in_execute_sql_on_all(fresh_cluster):
    c = fresh_cluster
    c.processes.kill(1)
    answers = c.execute_sql_on_all("SELECT 1")
    assert [a.ok for a in answers] == [True, False, True]
    assert answers[1].error["code"] == "NODE_DOWN"
    stats = c.node_stats(1)
    assert stats.running is False and stats.rss_mb is None
    live = c.node_stats(0)
    assert live.running and live.rss_mb > 5 and live.term >= 1 and live.applied_index >= 1
    assert live.cpu_seconds is not None and live.cpu_seconds > 0
    assert live.replication_lag is not None and live.replication_lag >= 0
