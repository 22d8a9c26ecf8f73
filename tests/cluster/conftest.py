"""Cluster tests start real processes; every cluster made here is shut down by its fixture."""

from __future__ import annotations

import pytest

from kalamdb.testing.cluster import ClusterTestServer, start_cluster_server


@pytest.fixture
def make_cluster(request):
    """Factory for fresh clusters owned by one test (shut down at its end, whatever happens)."""
    made: list[ClusterTestServer] = []

    def make(nodes: int = 3, **options) -> ClusterTestServer:
        options.setdefault("verbose", request.config.getoption("capture") == "no")
        c = start_cluster_server(nodes, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for n in c.nodes:
                print(f"--- node {n.node_id} log tail ---\n{n.log_tail(40)}")
        c.shutdown()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
