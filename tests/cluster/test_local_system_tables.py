"""System tables are answered from the node's own state (as upstream), data tables are not."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.cluster


def test_system_tables_are_answered_locally_without_a_reachable_leader(make_cluster):
    """Readable on a node that can reach nobody, where a linearizable data read cannot be served."""
    c = make_cluster(3)
    ns = c.unique_namespace("sysloc")
    c.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").raise_for_error()
    c.wait_for_replication()
    lone = c.get_node(0)
    for n in c.nodes[1:]:
        c.processes.pause(n)  # SIGSTOP: node 1 can reach nobody
    try:
        t0 = time.monotonic()
        rows = lone.sql("SELECT node_id, is_self FROM system.cluster ORDER BY node_id")
        assert rows.ok, rows
        assert len(rows.rows) == 3 and time.monotonic() - t0 < 1.0
        assert lone.sql("SHOW NAMESPACES").ok
        data = lone.sql(f"SELECT COUNT(*) FROM {ns}.t")
        assert data.http_status == 503, data
    finally:
        for n in c.nodes[1:]:
            c.processes.resume(n)
