"""CLUSTER SNAPSHOT, REBALANCE and CLEAR on a real 3-node cluster answer upstream KalamDB's columns
(one row for kalamdb's one Raft group, `meta`); CLEAR removes snapshot files older than the latest one
and never the latest; health lists every node with its uptime as upstream spells it."""

from __future__ import annotations

import pytest

from kalamdb.testing.waiting import wait_for

pytestmark = pytest.mark.cluster


def test_snapshot_then_clear_keeps_the_latest_snapshot_and_removes_older_leftovers(cluster):
    node = cluster.nodes[0]
    snap = node.sql("CLUSTER SNAPSHOT").raise_for_error().dicts()
    assert [(r["action"], r["group_id"], r["success"]) for r in snap] == [("snapshot", "meta", True)], snap
    index = int(snap[0]["snapshot_index"])
    assert index >= 1 and snap[0]["snapshots_dir"].endswith("snapshots")
    snapshots = node.data_dir / "raft" / "snapshots"
    latest = snapshots / f"snap-{index:020d}.sqlite"
    assert latest.is_file()
    # a leftover an interrupted clean-up could leave: an older snapshot beside the latest
    leftover = snapshots / f"snap-{max(index - 1, 0):020d}.sqlite"
    leftover.write_bytes(b"x" * 1000)

    clear = node.sql("CLUSTER CLEAR").raise_for_error().dicts()
    assert len(clear) == 1, clear
    row = clear[0]
    assert row["action"] == "clear" and row["snapshots_dir"] == str(snapshots) and row["snapshots_dir_exists"]
    assert int(row["total_snapshots_found"]) == 2 and int(row["snapshots_cleared"]) == 1
    assert int(row["cleared_size_bytes"]) == 1000 and int(row["error_count"]) == 0
    assert latest.is_file() and not leftover.exists()


def test_rebalance_answers_one_row_and_keeps_the_leader(cluster):
    leader = cluster.leader()
    row = cluster.execute_sql_on_random("CLUSTER REBALANCE").raise_for_error().dicts()
    assert [(r["action"], r["group_id"], r["success"]) for r in row] == [("rebalance", "meta", True)], row
    assert cluster.leader().node_id == leader.node_id


def test_health_lists_every_node_with_upstreams_uptime_figures(cluster):
    for node in cluster.nodes:
        wait_for(lambda node=node: len(node.health()["nodes"]) == len(cluster.nodes), timeout=20,
                 what=f"every node in the health of {node}")
        me = next(n for n in node.health()["nodes"] if n["is_self"])
        assert me["node_id"] == node.node_id and me["memory_usage_mb"] > 1
        assert isinstance(me["cpu_usage_percent"], (int, float)) and me["uptime_human"].endswith("s")
