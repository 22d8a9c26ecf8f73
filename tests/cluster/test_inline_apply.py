"""Light committed batches are applied on each node's HTTP loop, everything else on its apply
thread (node/apply_router.py, engine/light.py), on real nodes: the counters say where each went,
and the replicas still hold the same state."""

from __future__ import annotations

import urllib.request

import pytest

from kalamdb.server.metrics import parse

pytestmark = pytest.mark.cluster


def apply_counters(node) -> tuple[float, float]:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        samples = parse(resp.read().decode())
    return samples["kalamdb_apply_inline_batches_total"], samples["kalamdb_apply_thread_batches_total"]


def test_plain_inserts_apply_on_the_loop_and_a_delete_on_the_apply_thread_everywhere(cluster):
    ns = cluster.unique_namespace("inline")
    leader = cluster.leader()
    leader.sql(f"CREATE NAMESPACE {ns}").raise_for_error()
    leader.sql(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    cluster.wait_for_replication()
    nodes = cluster.nodes
    before = {n.node_id: apply_counters(n) for n in nodes}
    for i in range(20):
        leader.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, $2)", [i, f"v{i}"]).raise_for_error()
    cluster.wait_for_replication()
    middle = {n.node_id: apply_counters(n) for n in nodes}
    for n in nodes:
        assert middle[n.node_id][0] - before[n.node_id][0] >= 1, (n.node_id, before, middle)
    leader.sql(f"DELETE FROM {ns}.t WHERE id < 10").raise_for_error()
    cluster.wait_for_replication()
    after = {n.node_id: apply_counters(n) for n in nodes}
    for n in nodes:
        assert after[n.node_id][1] - middle[n.node_id][1] >= 1, (n.node_id, middle, after)
    assert cluster.verify_state_digest()
    assert int(leader.sql(f"SELECT count(*) AS n FROM {ns}.t").raise_for_error().rows[0][0]) == 10
