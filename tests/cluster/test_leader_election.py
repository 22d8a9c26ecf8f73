"""Leader election with real processes: a killed leader is replaced by exactly one new leader that
every node names, and leadership moves on request (transfer, campaign, step-down)."""

from __future__ import annotations

import time

import pytest

from tests.cluster.helpers import insert_ids, local_ids, setup_table

pytestmark = pytest.mark.cluster


def _terms(c) -> dict[int, int]:
    return {n.node_id: int(n.health()["current_term"]) for n in c.running_nodes()}


def test_killing_the_leader_elects_one_new_leader_and_loses_nothing(fresh_cluster):
    c = fresh_cluster
    ns = c.unique_namespace("fo")
    setup_table(c, ns)
    acked = insert_ids(c, ns, list(range(200)))
    assert acked == list(range(200))
    old = c.leader()
    old_term = int(old.health()["current_term"])
    t0 = time.monotonic()
    c.processes.kill(old)
    survivors = [n for n in c.nodes if n is not old]
    new = c.leader(timeout=5, among=survivors)
    elected_s = time.monotonic() - t0
    assert new is not old
    assert elected_s < 2.0, f"new leader after {elected_s:.2f}s"
    claims = [n.node_id for n in survivors if n.is_leader()]
    assert claims == [new.node_id], claims
    assert all(t > old_term for t in _terms(c).values()), (old_term, _terms(c))
    more = insert_ids(c, ns, list(range(200, 300)), nodes=survivors)
    assert more == list(range(200, 300))
    c.processes.start(old)
    index = c.wait_for_replication()
    assert c.leader() is new  # the old leader rejoined as a follower
    for node in c.nodes:
        assert local_ids(node, ns, index) == list(range(300)), node
    assert c.verify_state_digest()


def test_leadership_moves_by_transfer_campaign_and_stepdown(cluster):
    """Leadership changes keep every node and its data: fine on the shared cluster."""
    first = cluster.leader()
    target = cluster.followers()[0]
    term = int(first.health()["current_term"])
    r = first.sql(f"CLUSTER TRANSFER LEADER {target.node_id}")
    assert r.ok and f"node {target.node_id}" in r.results[0]["message"], r
    assert cluster.leader() is target
    assert int(target.health()["current_term"]) > term

    # a campaign against a healthy leader: pre-vote keeps it from disrupting anything
    campaigner = cluster.followers()[0]
    term = int(cluster.leader().health()["current_term"])
    r = campaigner.sql("CLUSTER TRIGGER ELECTION").raise_for_error()
    assert f"node {campaigner.node_id}" in r.results[0]["message"], r
    assert int(cluster.leader().health()["current_term"]) >= term

    # step-down: some node leads again, in a newer term
    leader = cluster.leader()
    term = int(leader.health()["current_term"])
    leader.sql("CLUSTER STEPDOWN").raise_for_error()
    cluster.wait_until("a leader in a newer term",
                   lambda: (int(cluster.leader().health()["current_term"]) > term, f"term still {term}"), 10)
    # whoever leads now, the cluster takes writes through every node and stays consistent
    ns = cluster.unique_namespace("moved")
    for n in cluster.nodes:
        n.sql(f"CREATE NAMESPACE IF NOT EXISTS {ns}").raise_for_error()
    assert cluster.verify_data_consistency("SHOW NAMESPACES")


def test_transfer_to_an_unknown_node_is_refused(cluster):
    r = cluster.execute_sql_on_leader("CLUSTER TRANSFER LEADER 77")
    assert not r.ok and r.http_status == 400, r
    assert cluster.leader().is_leader()
