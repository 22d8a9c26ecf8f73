"""STREAM rows expire by one replicated command, so every replica drops the same rows."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.cluster


def test_expired_stream_rows_disappear_on_every_replica_identically(cluster):
    ns = cluster.unique_namespace("stream")
    cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.execute_sql_on_leader(
        f"CREATE STREAM TABLE {ns}.events (id BIGINT, body TEXT) WITH (TTL_SECONDS=1)").raise_for_error()
    r = cluster.execute_sql_on_random(f"INSERT INTO {ns}.events (id, body) VALUES (1, 'a'), (2, 'b')")
    assert r.ok, r
    for node in cluster.nodes:  # present everywhere first
        rows = node.sql(f"SELECT COUNT(*) FROM {ns}.events", consistency="local", min_applied_index=r.raft_index)
        assert rows.raise_for_error().rows == [["2"]], node

    def expired_everywhere():
        counts = {n.node_id: n.sql(f"SELECT COUNT(*) FROM {ns}.events", consistency="local").rows
                  for n in cluster.nodes}
        return all(c == [["0"]] for c in counts.values()), f"row counts per node: {counts}"

    t0 = time.monotonic()
    cluster.wait_until("the stream rows to expire on every node", expired_everywhere, timeout=15)
    assert time.monotonic() - t0 < 15
    assert cluster.verify_state_digest()
