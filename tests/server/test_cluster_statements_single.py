"""A single node answers the CLUSTER statements that make sense for a one-node group (SNAPSHOT,
REBALANCE, CLEAR) in upstream's columns, refuses them to regular users, refuses membership and
leadership statements with a clear error, and reports its own CPU, memory and uptime in its health."""

from __future__ import annotations

from kalamdb.client import Client
from tests.server.helpers import assert_error, basic, post_sql


def cluster_health(c: Client) -> dict:
    resp = c._request("GET", "/v1/api/cluster/health", None, c._creds.header())
    assert resp.http_status == 200, resp
    return dict(resp)


def test_snapshot_rebalance_and_clear_answer_upstreams_columns(server):
    with server.client() as c:
        applied = int(cluster_health(c)["last_applied"])
        snap = c.sql("CLUSTER SNAPSHOT").raise_for_error().dicts()
        assert len(snap) == 1 and snap[0]["action"] == "snapshot" and snap[0]["group_id"] == "meta", snap
        assert snap[0]["success"] is True and snap[0]["error"] is None
        assert int(snap[0]["snapshot_index"]) >= applied  # the database file holds every applied write

        rebalance = c.sql("CLUSTER REBALANCE").raise_for_error()
        assert [col["name"] for col in rebalance.results[0]["schema"]] == [
            "action", "group_id", "success", "error", "snapshot_index", "target_node_id", "upto", "snapshots_dir"]
        assert rebalance.dicts()[0]["action"] == "rebalance" and rebalance.dicts()[0]["success"] is True

        clear = c.sql("CLUSTER CLEAR").raise_for_error().dicts()
        assert len(clear) == 1, clear
        assert clear[0]["action"] == "clear" and clear[0]["snapshots_dir"].endswith("snapshots")
        assert clear[0]["snapshots_dir_exists"] is False and int(clear[0]["snapshots_cleared"]) == 0
        assert int(clear[0]["error_count"]) == 0 and clear[0]["error"] is None


def test_regular_users_may_not_run_cluster_statements(server, unique_ns):
    name = f"carol_{unique_ns}"[:60]
    assert server.sql(f"CREATE USER {name} WITH PASSWORD 'carol-pw-1' ROLE user").ok
    try:
        for stmt in ("CLUSTER SNAPSHOT", "CLUSTER REBALANCE", "CLUSTER CLEAR"):
            assert_error(post_sql(server, {"sql": stmt}, auth=basic(name, "carol-pw-1")), 403,
                         "PERMISSION_DENIED", "dba or system")
    finally:
        server.sql(f"DROP USER IF EXISTS {name}")


def test_membership_and_leadership_statements_need_a_cluster(server):
    for stmt, fragment in [("CLUSTER JOIN 2 127.0.0.1:9001 127.0.0.1:8081", "CLUSTER JOIN needs cluster mode"),
                           ("CLUSTER LEAVE 2", "CLUSTER LEAVE needs cluster mode"),
                           ("CLUSTER STEPDOWN", "needs cluster mode"),
                           ("CLUSTER LIST", "system.cluster")]:
        assert_error(post_sql(server, {"sql": stmt}), 400, "INVALID_SQL", fragment)


def test_health_lists_this_node_with_cpu_memory_and_uptime(server):
    with server.client() as c:
        health = cluster_health(c)
    (me,) = health["nodes"]
    assert me["is_self"] is True and me["is_leader"] is True and me["node_id"] == health["node_id"]
    assert me["memory_usage_mb"] > 1 and isinstance(me["cpu_usage_percent"], float)
    assert me["uptime_seconds"] >= 0 and me["uptime_human"].endswith("s")
