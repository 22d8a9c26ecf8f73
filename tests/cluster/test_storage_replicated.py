"""STORAGE FLUSH, ALTER TABLE and storage DDL sent through followers: replicated like every write,
covered by the state digest, and every node writes the same Parquet files to its own storage."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.cluster


def _storage_tree(node) -> dict[str, str]:
    root = node.data_dir / "storage"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_flush_through_a_follower_writes_identical_files_on_every_node(make_cluster):
    c = make_cluster(3)
    leader = c.leader()
    follower = next(n for n in c.nodes if n is not leader)
    follower.sql("CREATE NAMESPACE app").raise_for_error()
    follower.sql("CREATE TABLE app.items (id BIGINT PRIMARY KEY, name TEXT, price DOUBLE)").raise_for_error()
    follower.sql("INSERT INTO app.items (id, name, price) VALUES (1, 'a', 1.5), (2, 'b', 2.5)").raise_for_error()
    follower.sql("ALTER TABLE app.items ADD COLUMN note TEXT").raise_for_error()
    follower.sql("CREATE STORAGE cold TYPE filesystem PATH 'cold'").raise_for_error()
    r = follower.sql("STORAGE FLUSH TABLE app.items").raise_for_error()
    job = r.results[0]["message"].split("Job ID: ")[1]
    index = c.wait_for_replication(r.raft_index)
    report = c.verify_state_digest()
    assert report, report
    for n in c.nodes:
        rows = n.sql(f"SELECT status FROM system.jobs WHERE job_id = '{job}'", consistency="local",
                     min_applied_index=index).raise_for_error().rows
        assert rows == [["completed"]], (n, rows)
    trees = [_storage_tree(n) for n in c.nodes]
    assert trees[0] == trees[1] == trees[2] and "app/items/batch-0.parquet" in trees[0]
    table = pq.read_table(c.nodes[0].data_dir / "storage/app/items/batch-0.parquet")
    assert sorted(r["id"] for r in table.to_pylist()) == [1, 2]
