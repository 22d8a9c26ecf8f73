"""Fixtures for the fault scenarios: fresh FaultyClusters, always shut down, seed printed to replay."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from kalamdb.testing.faults import FaultyCluster, start_faulty_cluster


@pytest.fixture
def seed():
    value = int(os.environ.get("KALAMDB_TEST_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    print(f"fault seed={value} (replay with KALAMDB_TEST_SEED={value})")
    return value


@pytest.fixture
def faulty(request, seed):
    """Factory for FaultyClusters owned by one test; node log tails are printed when it fails."""
    made: list[FaultyCluster] = []

    def make(nodes: int = 3, **options) -> FaultyCluster:
        options.setdefault("log_level", "info")
        c = start_faulty_cluster(nodes, seed=seed, **options)
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
