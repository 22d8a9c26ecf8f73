"""Three processes configured only by environment variables form one Raft cluster."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster


def test_three_processes_form_one_cluster_with_one_leader(fresh_cluster):
    c = fresh_cluster
    leader = c.leader()
    seen: dict[str, object] = {}

    def all_active() -> tuple[bool, str]:
        # "active" needs a recent answer to the leader's heartbeat: on a starved machine a follower
        # can show "offline" for a moment, so this is a condition with a deadline, not a snapshot
        rows = leader.sql("SELECT node_id, role, status FROM system.cluster ORDER BY node_id").raise_for_error().rows
        seen["rows"] = rows
        return all(r[2] == "active" for r in rows), f"system.cluster: {rows}"

    c.wait_until("every member active in system.cluster", all_active, 10)
    rows = seen["rows"]
    assert [str(r[0]) for r in rows] == ["1", "2", "3"], rows
    roles = [r[1] for r in rows]
    assert roles.count("leader") == 1 and roles.count("follower") == 2, rows
    # every node reports the same voters and the same leader
    healths = [n.health() for n in c.nodes]
    assert {h["leader_id"] for h in healths} == {leader.node_id}, healths
    assert all(h["voters"] == [1, 2, 3] and h["learners"] == [] for h in healths), healths
    assert all(h["status"] == "healthy" for h in healths), healths


def test_peers_join_as_learners_then_become_voters(fresh_cluster):
    c = fresh_cluster
    log = c.get_node(0).log_path.read_text()
    # node 1 bootstrapped alone and promoted each peer after it caught up (add_learner -> voter)
    assert "bootstraps a one-voter cluster" in log
    assert "promoting node 2 to voter" in log and "promoting node 3 to voter" in log
    groups = c.get_node(1).sql("SELECT voters, learners FROM system.cluster_groups").raise_for_error().rows
    assert groups == [["1,2,3", ""]]


def test_a_restarted_node_never_bootstraps_again(fresh_cluster):
    c = fresh_cluster
    r = c.execute_sql_on_leader("CREATE NAMESPACE boot_once").raise_for_error()
    c.processes.kill("all")
    c.processes.restart_all()
    log = c.get_node(0).log_path.read_text()
    assert log.count("bootstraps a one-voter cluster") == 1
    local = c.get_node(0).sql("SHOW NAMESPACES", consistency="local", min_applied_index=r.raft_index)
    assert ["boot_once"] in [row[:1] for row in local.raise_for_error().rows]


@pytest.mark.cluster(nodes=5)
def test_five_processes_form_one_cluster_and_replicate_to_all(fresh_cluster):
    c = fresh_cluster
    leader = c.leader()
    assert len(c.followers()) == 4 and leader not in c.followers()
    healths = [n.health() for n in c.nodes]
    assert all(h["voters"] == [1, 2, 3, 4, 5] and h["leader_id"] == leader.node_id for h in healths), healths
    ns = c.unique_namespace("five")
    c.execute_sql_on_random(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_random(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
    for i in range(5):
        c.execute_sql_on(i, f"INSERT INTO {ns}.t (id) VALUES ({i})").raise_for_error()
    report = c.verify_data_consistency(f"SELECT id FROM {ns}.t ORDER BY id")
    assert report and report.rows == [(str(i),) for i in range(5)] and len(report.row_counts) == 5, report
    # a 5-node cluster survives two failures
    c.processes.kill(leader)
    c.processes.kill(c.followers()[0])
    assert len(c.running_nodes()) == 3
    c.execute_sql_on_random(f"INSERT INTO {ns}.t (id) VALUES (99)").raise_for_error()
    assert len(c.verify_data_consistency(f"SELECT id FROM {ns}.t").rows) == 6
