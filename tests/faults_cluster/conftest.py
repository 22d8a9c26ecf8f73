"""Fixtures for the fault scenarios: fresh clusters with network faults (`start_cluster_server(n,
faults=True)`), always shut down, seed printed to replay. A test parametrized over `network` runs
in the proxy mode and, as root, in the netns mode (skipped with the reason where unavailable)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from kalamdb.testing.cluster import ClusterTestServer, start_cluster_server
from kalamdb.testing.seeds import default_seed, replay_hint


@pytest.fixture
def seed():
    value = default_seed()
    print(f"fault seed={value} ({replay_hint(value)})")
    return value


@pytest.fixture
def network(request) -> str:
    """The network mode of `faulty` clusters: "proxy" unless the test is parametrized over it."""
    mode = getattr(request, "param", "proxy")
    if mode == "netns":
        from kalamdb.testing.netns_cluster import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            pytest.skip(f"netns mode unavailable: {reason}")
    return mode


@pytest.fixture
def faulty(request, seed, network):
    """Factory for fault-injection clusters owned by one test; node log tails are printed when it fails."""
    made: list[ClusterTestServer] = []

    def make(nodes: int = 3, **options) -> ClusterTestServer:
        options.setdefault("log_level", "info")
        options.setdefault("network", network)
        c = start_cluster_server(nodes, faults=True, seed=seed, **options)
        made.append(c)
        return c

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for c in made:
        if failed:
            for n in c.nodes:
                print(f"--- node {n.node_id} log tail ---\n{n.log_tail(40)}")
        c.shutdown()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
