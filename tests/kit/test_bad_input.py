"""Wrong arguments to the kit fail at once with a message that says what is wrong."""

from __future__ import annotations

import pytest

from kalamdb.testing.cluster import ClusterError, ClusterTestServer, default_seed, start_cluster_server


@pytest.mark.parametrize("nodes", [0, -1, "3"])
def test_a_cluster_needs_a_positive_node_count(nodes):
    with pytest.raises(ValueError, match="at least 1 node"):
        start_cluster_server(nodes)


def test_unknown_options_and_log_levels_are_refused():
    with pytest.raises(TypeError, match="heartbeat"):
        start_cluster_server(3, heartbeat=50)
    with pytest.raises(ValueError, match="log_level must be"):
        ClusterTestServer(size=3, log_level="loud")


def test_the_seed_comes_from_kalamdb_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("KALAMDB_SEED", "1234")
    assert default_seed() == 1234 == ClusterTestServer(size=1, root=tmp_path).seed
    monkeypatch.setenv("KALAMDB_SEED", "abc")
    with pytest.raises(ValueError, match="KALAMDB_SEED must be an integer"):
        default_seed()


@pytest.mark.cluster
def test_node_indexes_are_checked(cluster):
    with pytest.raises(IndexError, match="0-based"):
        cluster.get_node(len(cluster.nodes))
    with pytest.raises(IndexError, match="out of range"):
        cluster.execute_sql_on(-1, "SELECT 1")


def test_the_old_seed_variable_still_works_with_a_deprecation_note(monkeypatch):
    monkeypatch.delenv("KALAMDB_SEED", raising=False)
    monkeypatch.setenv("KALAMDB_TEST_SEED", "77")
    with pytest.warns(DeprecationWarning, match="KALAMDB_SEED=77"):
        assert default_seed() == 77


def test_network_options_are_checked_and_faults_need_asking_for(tmp_path):
    with pytest.raises(ValueError, match="network must be one of proxy, netns"):
        ClusterTestServer(size=1, root=tmp_path, network="wifi")
    c = ClusterTestServer(size=1, root=tmp_path)
    try:
        assert c.network_mode == "loopback"
        with pytest.raises(ClusterError, match="faults=True"):
            c.net.isolate(0)
    finally:
        c.shutdown()


@pytest.mark.cluster
def test_node_handles_are_accepted_wherever_an_index_is(cluster):
    node = cluster.get_node(1)
    assert cluster.get_node(node) is node
    assert cluster.execute_sql_on(node, "SELECT 1").ok
    assert cluster.select([node, 1, 0]) == [cluster.get_node(0), node]
    assert cluster.node_stats(node).node_id == node.node_id
    other = ClusterTestServer(size=1)
    try:
        with pytest.raises(ClusterError, match="not a node of this cluster"):
            other.get_node(node)
    finally:
        other.shutdown()
