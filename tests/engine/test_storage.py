"""STORAGE statements, STORAGE FLUSH / COMPACT to Parquet, system.jobs and system.manifest, KILL JOB
(upstream's flush and storage tests: testserver/flush, testserver/storage, cli smoke flushing)."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from kalamdb.engine import Principal


def _files(node, *parts):
    root = node.db.data_dir / "storage"
    return sorted(p.relative_to(root).as_posix() for p in root.joinpath(*parts).rglob("*.parquet"))


def _job_id(message: str) -> str:
    return message.split("Job ID: ")[1]


def test_flush_writes_parquet_other_tools_can_read(node):
    node.sql("CREATE NAMESPACE app; CREATE TABLE app.items (id BIGINT PRIMARY KEY, name TEXT, price DOUBLE, "
             "ok BOOLEAN, at TIMESTAMP, d DATE, amount DECIMAL(10, 2), e EMBEDDING(2))")
    node.sql("INSERT INTO app.items (id, name, price, ok, at, d, amount, e) VALUES "
             "(1, 'a', 1.5, true, 1000000, '2024-02-29', '12.50', '[1, 2]'), (2, 'b', NULL, false, NULL, NULL, NULL, NULL), "
             "(3, 'c', 3.0, true, NULL, NULL, NULL, NULL)")
    node.sql("UPDATE app.items SET name = 'a2' WHERE id = 1")
    node.sql("DELETE FROM app.items WHERE id = 3")
    msg = node.sql("STORAGE FLUSH TABLE app.items")[0]["message"]
    assert msg.startswith("Storage flush started for table 'app.items'. Job ID: FL-")
    job = _job_id(msg)
    assert len(job) == 15
    assert node.rows(f"SELECT job_type, status FROM system.jobs WHERE job_id = '{job}'") == [["flush", "completed"]]
    assert node.rows(f"SELECT status FROM system.job_nodes WHERE job_id = '{job}'") == [["completed"]]
    assert _files(node, "app") == ["app/items/batch-0.parquet"]
    table = pq.read_table(node.db.data_dir / "storage/app/items/batch-0.parquet")
    rows = table.to_pylist()
    # latest version per key, tombstones dropped
    assert [(r["id"], r["name"], r["_deleted"]) for r in rows] == [(1, "a2", False), (2, "b", False)]
    assert str(table.schema.field("amount").type) == "decimal128(10, 2)" and rows[0]["e"] == [1.0, 2.0]
    assert str(rows[0]["d"]) == "2024-02-29" and table.schema.field("at").type.unit == "us"
    # nothing new: skipped, as upstream
    assert node.sql("STORAGE FLUSH TABLE app.items")[0]["message"] == \
        "Storage flush skipped: no pending writes for table 'app.items'"
    # queries, updates and deletes keep working across flushed and unflushed rows
    node.sql("INSERT INTO app.items (id, name) VALUES (4, 'd')")
    node.sql("UPDATE app.items SET name = 'b2' WHERE id = 2")
    node.sql("DELETE FROM app.items WHERE id = 1")
    assert node.rows("SELECT id, name FROM app.items ORDER BY id") == [["2", "b2"], ["4", "d"]]
    msg = node.sql("STORAGE FLUSH ALL IN app")[0]["message"]
    assert msg.startswith("Storage flush started for 1 table(s) in namespace 'app'. Job IDs: [FL-")
    assert _files(node, "app") == ["app/items/batch-0.parquet", "app/items/batch-1.parquet"]
    assert sorted(r["id"] for r in pq.read_table(node.db.data_dir / "storage/app/items/batch-1.parquet").to_pylist()) \
        == [2, 4]
    manifest = node.rows("SELECT scope, sync_state, manifest_json FROM system.manifest WHERE table_name = 'items'")
    assert manifest[0][:2] == ["shared", "in_sync"] and '"batch-1.parquet"' in manifest[0][2]
    # COMPACT folds the batches into one file of the current rows
    msg = node.sql("STORAGE COMPACT TABLE app.items")[0]["message"]
    assert msg.startswith("Storage compaction started for table 'app.items'. Job ID: CO-")
    assert _files(node, "app") == ["app/items/batch-2.parquet"]
    assert sorted(r["id"] for r in pq.read_table(node.db.data_dir / "storage/app/items").to_pylist()) == [2, 4]


def test_user_tables_flush_per_user(node):
    node.sql("CREATE NAMESPACE app; CREATE USER TABLE app.notes (id INT PRIMARY KEY, body TEXT)")
    alice, bob = Principal("alice", "alice", "user"), Principal("bob", "bob", "user")
    node.sql("INSERT INTO app.notes (id, body) VALUES (1, 'a')", who=alice)
    node.sql("INSERT INTO app.notes (id, body) VALUES (1, 'b'), (2, 'b2')", who=bob)
    svc = Principal("svc", "svc", "service")
    assert node.error("EXECUTE AS USER '../../etc' (SELECT 1)", who=svc).code == "INVALID_SQL"
    node.sql("EXECUTE AS USER '..' (INSERT INTO app.notes (id, body) VALUES (1, 'x'))", who=svc)
    node.sql("STORAGE FLUSH TABLE app.notes", who=svc)  # service may flush
    files = _files(node, "app")
    assert "app/notes/alice/batch-0.parquet" in files and "app/notes/bob/batch-0.parquet" in files
    # an odd user id never leaves the table's directory
    assert all(f.startswith("app/notes/") and ".." not in f for f in files) and len(files) == 3
    assert [r["body"] for r in pq.read_table(node.db.data_dir / "storage/app/notes/bob/batch-0.parquet").to_pylist()] \
        == ["b", "b2"]
    assert node.rows("SELECT COUNT(*) FROM system.manifest WHERE table_name = 'notes'") == [["3"]]
    err = node.error("STORAGE FLUSH TABLE app.notes", who=alice)
    assert err.code == "PERMISSION_DENIED"


def test_stream_tables_are_not_flushed(node):
    node.sql("CREATE STREAM TABLE ev (id INT) WITH (TTL_SECONDS = 10)")
    assert "not supported for STREAM tables" in node.error("STORAGE FLUSH TABLE ev").message


def test_storage_ddl_and_show(node):
    assert node.sql("CREATE STORAGE archive TYPE filesystem NAME 'Archive' PATH 'archive' "
                    "SHARED_TABLES_TEMPLATE '{namespace}/{tableName}'")[0]["message"] == \
        "Storage 'archive' created successfully"
    assert "already exists" in node.error("CREATE STORAGE archive TYPE filesystem PATH 'x'").message
    assert "Invalid storage type" in node.error("CREATE STORAGE z TYPE ftp PATH 'x'").message
    assert "'..'" in node.error("CREATE STORAGE z TYPE filesystem PATH '../outside'").message
    assert node.sql("ALTER STORAGE archive SET DESCRIPTION 'old rows'")[0]["message"] == \
        "Storage 'archive' altered successfully"
    assert node.rows("SELECT storage_id, storage_name, description FROM system.storages ORDER BY storage_id") == \
        [["archive", "Archive", "old rows"], ["local", "Local Storage", "Default local filesystem storage"]]
    assert [r[0] for r in node.rows("SHOW STORAGES")] == ["archive", "local"]
    node.sql("CREATE TABLE t (id INT PRIMARY KEY) WITH (STORAGE_ID = 'archive')")
    node.sql("INSERT INTO t (id) VALUES (1)")
    node.sql("STORAGE FLUSH TABLE t")
    assert (node.db.data_dir / "archive/default/t/batch-0.parquet").is_file()
    assert "1 table(s) still using it" in node.error("DROP STORAGE archive").message
    node.sql("DROP TABLE t")
    assert node.sql("DROP STORAGE archive")[0]["message"] == "Storage 'archive' dropped successfully"
    assert node.sql("DROP STORAGE IF EXISTS archive")[0]["message"] == "Storage 'archive' does not exist (skipped)"
    node.sql("CREATE STORAGE s3x TYPE s3 BUCKET 'b'; CREATE TABLE r (id INT PRIMARY KEY) WITH (STORAGE_ID = 's3x'); "
             "INSERT INTO r (id) VALUES (1)")
    assert "filesystem storages only" in node.error("STORAGE FLUSH TABLE r").message
    user = Principal("u", "u", "user")
    assert node.error("CREATE STORAGE y TYPE filesystem PATH 'y'", who=user).code == "PERMISSION_DENIED"


def test_kill_job(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t (id) VALUES (1)")
    job = _job_id(node.sql("STORAGE FLUSH TABLE t")[0]["message"])
    assert "already completed" in node.error(f"KILL JOB {job}").message
    assert "not found" in node.error("KILL JOB FL-000000000000").message
    assert node.error(f"KILL JOB {job}", who=Principal("s", "s", "service")).code == "PERMISSION_DENIED"


def test_replicas_write_identical_files_and_state(make_node):
    """Each replica writes its own files while applying: same log in, same bytes out."""
    a, b = make_node("a"), make_node("b", node_id=2)
    a.sql("CREATE NAMESPACE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT); CREATE USER TABLE app.u "
          "(id INT PRIMARY KEY)")
    a.sql("INSERT INTO app.t (id, v) VALUES (1, 'x'), (2, 'y')")
    a.sql("INSERT INTO app.u (id) VALUES (7)", who=Principal("alice", "alice", "user"))
    a.sql("STORAGE FLUSH ALL IN app")
    a.sql("UPDATE app.t SET v = 'z' WHERE id = 2")
    a.sql("STORAGE FLUSH TABLE app.t; STORAGE COMPACT ALL IN app")
    for index, command in a.log:
        b.db.apply(index, command)
    assert a.db.digest_with_index() == b.db.digest_with_index()

    def tree(n):
        root = n.db.data_dir / "storage"
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(a) == tree(b) and len(tree(a)) == 4  # t and alice's u: one compacted file + manifest each


def test_drop_table_runs_a_cleanup_job_that_removes_its_files(node):
    node.sql("CREATE NAMESPACE app; CREATE USER TABLE app.n (id INT PRIMARY KEY)")
    node.sql("INSERT INTO app.n (id) VALUES (1)", who=Principal("alice", "alice", "user"))
    node.sql("STORAGE FLUSH TABLE app.n")
    assert _files(node, "app") == ["app/n/alice/batch-0.parquet"]
    msg = node.sql("DROP TABLE app.n")[0]["message"]
    assert msg.startswith("Table app.n dropped successfully. Cleanup job: CL-")
    job = msg.split("Cleanup job: ")[1]
    assert node.rows(f"SELECT job_type, status FROM system.jobs WHERE job_id = '{job}'") == [["cleanup", "completed"]]
    assert not (node.db.data_dir / "storage/app/n").exists()
    assert node.rows("SELECT COUNT(*) FROM system.manifest WHERE table_name = 'n'") == [["0"]]
    assert node.sql("DROP TABLE IF EXISTS app.n")[0]["message"] == "Table app.n does not exist (skipped)"


@pytest.mark.parametrize("shared, user, why", [
    ("{tableName}/{namespace}", None, "must appear before"),
    ("{namespace}", None, "are required"),
    (None, "users/{namespace}/{tableName}", "{userId} is required"),
    (None, "{userId}/{namespace}/{tableName}", "order must be"),
])
def test_storage_templates_are_checked_as_upstream(node, shared, user, why):
    opts = (f" SHARED_TABLES_TEMPLATE '{shared}'" if shared else "") + (f" USER_TABLES_TEMPLATE '{user}'" if user else "")
    assert why in node.error(f"CREATE STORAGE bad TYPE filesystem PATH 'bad'{opts}").message
