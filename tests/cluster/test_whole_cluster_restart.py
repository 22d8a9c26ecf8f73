"""Every node down at once (crash or graceful stop) and up again: nothing acknowledged is lost,
one leader is elected, and the cluster takes writes again."""

from __future__ import annotations

import pytest

from tests.cluster.helpers import insert_ids, local_ids, setup_table

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("crash", [True, False], ids=["kill-9", "sigterm"])
def test_the_whole_cluster_restarted_keeps_every_acknowledged_write(fresh_cluster, crash):
    c = fresh_cluster
    ns = c.unique_namespace("all")
    setup_table(c, ns)
    acked = insert_ids(c, ns, list(range(300)))
    assert len(acked) == 300
    c.processes.restart_all(kill=crash)
    index = c.wait_for_replication(timeout=20)
    for node in c.nodes:
        assert local_ids(node, ns, index) == acked
    after = insert_ids(c, ns, [1000, 1001])
    assert after == [1000, 1001]
    assert c.verify_data_consistency(f"SELECT id, v FROM {ns}.t ORDER BY id").rows[-1] == ("1001", "x")
    assert c.verify_state_digest()
