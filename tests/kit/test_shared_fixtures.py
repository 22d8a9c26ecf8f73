"""The shared fixtures live together: the single-node `server` and the shared `cluster` run at once,
and the shared cluster comes back whole after a test left a node stopped or paused."""

from __future__ import annotations

import pytest

from kalamdb.testing.cluster import get_cluster_server

pytestmark = pytest.mark.cluster


def test_the_single_node_server_and_the_shared_cluster_run_side_by_side(server, cluster, unique_ns):
    assert server.url not in [n.url for n in cluster.nodes]
    server.sql(f"CREATE NAMESPACE {unique_ns}").raise_for_error()
    r = cluster.execute_sql_on_random(f"CREATE NAMESPACE {unique_ns}")
    assert r.ok, r  # the same name is free on the cluster: they share nothing
    assert cluster.verify_data_consistency("SHOW NAMESPACES")
    assert server.client().health()["status"] == "healthy"


@pytest.mark.process_control
def test_the_shared_cluster_is_healed_between_uses(cluster):
    assert get_cluster_server() is cluster
    stopped, paused = cluster.get_node(2), cluster.get_node(1)
    cluster.processes.stop(stopped)
    cluster.processes.pause(paused)
    again = get_cluster_server()
    assert again is cluster
    assert stopped.is_running() and not paused.paused
    assert all(n.health()["status"] == "healthy" for n in cluster.nodes)
    ns = cluster.unique_namespace("healed")
    r = cluster.execute_sql_on(2, f"CREATE NAMESPACE {ns}").raise_for_error()
    assert cluster.wait_for_replication(r.raft_index) == r.raft_index


@pytest.mark.process_control
def test_nodes_share_the_callers_scheduling_group_in_process_groups_of_their_own(server, cluster):
    """A node is its own process group (the kit signals and pauses it as one), but not its own
    session: the kernel's autogroup makes each session one scheduling group, and three nodes as
    three groups on a small machine left a busy node's Raft thread 200+ ms without a CPU behind its
    own apply thread (docs/PERFORMANCE.md, step 20)."""
    import os

    for pid in [n.pid for n in cluster.nodes] + [server.pid]:
        assert pid is not None
        assert os.getpgid(pid) == pid, "a process group of its own"
        assert os.getsid(pid) == os.getsid(0), "the caller's session (its scheduling group)"
