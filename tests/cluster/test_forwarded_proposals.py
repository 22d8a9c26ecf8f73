"""Writes sent to a follower reach the leader inside the Raft transport (node/forwarding.py), not as
a second HTTP request, and the follower answers from its own apply of the entry."""

from __future__ import annotations

import urllib.request

import pytest

from kalamdb.server.metrics import parse

pytestmark = pytest.mark.cluster


def sql_requests_seen(node) -> float:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as resp:
        samples = parse(resp.read().decode())
    return sum(v for k, v in samples.items() if k.startswith("kalamdb_sql_requests_total"))


def test_a_follower_write_costs_the_leader_no_http_request(cluster):
    ns = cluster.unique_namespace("fwdprop")
    leader = cluster.leader()
    leader.sql(f"CREATE NAMESPACE {ns}").raise_for_error()
    leader.sql(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    follower = cluster.followers()[0]
    cluster.wait_for_replication()
    before = sql_requests_seen(leader)
    indexes = []
    for i in range(20):
        r = follower.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, $2)", [i, f"v{i}"])
        assert r.ok, r
        indexes.append(r.raft_index)
    assert indexes == sorted(indexes) and len(set(indexes)) == 20, indexes
    assert sql_requests_seen(leader) - before == 0, "the leader served HTTP requests for forwarded writes"
    assert cluster.verify_state_digest()


def test_the_forwarding_follower_already_holds_the_write_it_acknowledged(cluster):
    """Its answer comes from its own apply: a local read on the same node right after the
    acknowledgement sees the row, with no min_applied_index."""
    ns = cluster.unique_namespace("fwdryw")
    cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, v TEXT)").raise_for_error()
    cluster.wait_for_replication()
    for follower in cluster.followers():
        for i in range(10):
            key = follower.node_id * 100 + i
            follower.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, 'x')", [key]).raise_for_error()
            got = follower.sql(f"SELECT id FROM {ns}.t WHERE id = $1", [key], consistency="local")
            assert got.ok and got.rows == [[str(key)]], got


def test_errors_of_a_forwarded_write_come_back_unchanged(cluster):
    ns = cluster.unique_namespace("fwderr")
    follower = cluster.followers()[0]
    follower.sql(f"CREATE NAMESPACE {ns}").raise_for_error()
    follower.sql(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
    follower.sql(f"INSERT INTO {ns}.t (id) VALUES (1)").raise_for_error()
    dup = follower.sql(f"INSERT INTO {ns}.t (id) VALUES (1)")
    assert dup.http_status == 400 and not dup.ok, dup
    on_leader = cluster.leader().sql(f"INSERT INTO {ns}.t (id) VALUES (1)")
    assert (dup.error["code"], dup.error["message"]) == (on_leader.error["code"], on_leader.error["message"])
