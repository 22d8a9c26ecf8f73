"""Snapshots and log replication: after CLUSTER SNAPSHOT and a purge of the leader's log, a node
that joins later can only get the state from the snapshot, and ends with the same state digest."""

from __future__ import annotations

import pytest

from tests.cluster.helpers import insert_ids, local_ids, setup_table

pytestmark = pytest.mark.cluster


def test_a_new_node_joins_from_the_snapshot_and_has_the_same_digest(fresh_cluster):
    c = fresh_cluster
    ns = c.unique_namespace("snap")
    setup_table(c, ns)
    acked = insert_ids(c, ns, list(range(400)))
    leader = c.leader()
    snap = leader.sql("CLUSTER SNAPSHOT").raise_for_error()
    row = snap.dicts()[0]
    assert row["action"] == "snapshot" and row["success"] is True and int(row["snapshot_index"]) > 0, snap
    applied = leader.applied_index()
    purged = leader.sql(f"CLUSTER PURGE {applied}").raise_for_error()
    assert "purged" in purged.results[0]["message"], purged
    health = leader.health()
    assert health["snapshot_index"] >= applied - 1, health  # the log before it is gone

    new = c.add_node()
    assert new.node_id == 4 and c.leader().health()["voters"] == [1, 2, 3, 4]
    log = new.log_path.read_text()
    assert "installed snapshot" in log, log[-2000:]
    index = c.wait_for_replication()
    assert local_ids(new, ns, index) == acked == list(range(400))
    # writes after the snapshot reach the new node through the log
    more = insert_ids(c, ns, [1000, 1001], nodes=[new])
    assert more == [1000, 1001]
    assert c.verify_data_consistency(f"SELECT id, v FROM {ns}.t ORDER BY id")
    digests = c.verify_state_digest()
    assert digests and set(digests.digests) == {1, 2, 3, 4}, digests
