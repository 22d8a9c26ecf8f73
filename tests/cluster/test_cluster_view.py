"""system.cluster on any node: every node's status, replication lag and memory, as the best
knowledge that node has, with `info_age_ms` saying how old it is (real 3-node clusters)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from kalamdb.node.cluster_view import AUTH_HEADER, NODE_REPORT_PATH, member_token
from kalamdb.testing.waiting import wait_for

pytestmark = pytest.mark.cluster

QUERY = ("SELECT node_id, status, replication_lag, memory_usage_mb, uptime_seconds, last_applied_log, "
         "info_age_ms FROM system.cluster ORDER BY node_id")


def view(node) -> list[dict]:
    return node.sql(QUERY).raise_for_error().typed_dicts()


def complete(rows: list[dict], max_age_ms: int = 5000) -> bool:
    return all(r["status"] == "active" and r["replication_lag"] is not None and r["memory_usage_mb"]
               and r["uptime_seconds"] is not None and r["info_age_ms"] is not None
               and r["info_age_ms"] <= max_age_ms for r in rows)


def test_every_node_reports_every_nodes_status_lag_and_memory(cluster):
    ids = sorted(n.node_id for n in cluster.nodes)
    for node in cluster.nodes:
        wait_for(lambda node=node: complete(view(node)), timeout=20, what=f"a complete system.cluster on {node}")
        rows = view(node)
        assert [r["node_id"] for r in rows] == ids  # the same membership everywhere
        mine = next(r for r in rows if r["node_id"] == node.node_id)
        assert mine["memory_usage_mb"] > 1 and mine["last_applied_log"] >= 1
    leader = cluster.leader()
    own = next(r for r in view(leader) if r["node_id"] == leader.node_id)
    assert own["info_age_ms"] == 0  # the leader's own row is all live knowledge


def test_knowledge_of_a_paused_node_ages_and_the_leader_reports_it_offline(make_cluster):
    c = make_cluster(3)
    leader = c.leader()
    followers = [n for n in c.nodes if n is not leader]
    paused, reader = followers
    wait_for(lambda: complete(view(reader)), timeout=20, what="a complete system.cluster on a follower")
    c.processes.pause(paused)
    try:
        def stale() -> bool:
            row = next(r for r in view(reader) if r["node_id"] == paused.node_id)
            return row["status"] == "offline" and row["info_age_ms"] >= 2500 and row["memory_usage_mb"] > 1
        wait_for(stale, timeout=20, what="the paused node offline with old knowledge, seen from the other follower")
    finally:
        c.processes.resume(paused)
    wait_for(lambda: complete(view(reader), max_age_ms=2500), timeout=20, what="fresh knowledge after resume")


def test_the_node_report_answers_cluster_members_only(cluster):
    node = cluster.nodes[0]
    url = node.url + NODE_REPORT_PATH

    def get(header: str | None) -> tuple[int, bytes]:
        req = urllib.request.Request(url, headers={AUTH_HEADER: header} if header else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    good = member_token(cluster.secret, cluster.cluster_id, 2)
    status, body = get(good)
    assert status == 200 and b'"rows"' in body
    forged = "2:" + "0" * 64
    other_cluster = member_token(cluster.secret, "another-cluster", 2)
    for header in (None, forged, other_cluster, good[:-1], "x" * 4000, "2"):
        status, body = get(header)
        assert status == 403 and b"PERMISSION_DENIED" in body, (header, body)
