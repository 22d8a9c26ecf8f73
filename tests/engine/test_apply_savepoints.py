"""Which SQLite calls an applied write makes: a one-row INSERT runs as one SQLite statement with no
savepoint of ours (SQLite's statement rollback undoes it if it fails), anything that writes more
than that keeps its savepoint, and a failed command leaves nothing behind either way."""

from __future__ import annotations

import re

import pytest

SAVEPOINT = re.compile(r"^\s*(SAVEPOINT|RELEASE|ROLLBACK TO)\b", re.IGNORECASE)


@pytest.fixture
def traced(node):
    """The statements the writer connection runs while a test applies batches."""
    seen: list[str] = []
    node.db._wconn.set_trace_callback(seen.append)
    yield seen
    node.db._wconn.set_trace_callback(None)


def apply(node, *texts: str):
    base = node.db.applied_index
    batch = [(base + i, node.command(t)) for i, t in enumerate(texts, 1)]
    return node.db.apply_batch(batch)


def savepoints(seen: list[str]) -> list[str]:
    return [s for s in seen if SAVEPOINT.match(s)]


def test_one_row_inserts_run_without_savepoints(node, traced):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    traced.clear()
    outcomes = apply(node, "INSERT INTO t (id, v) VALUES (1, 'a')", "INSERT INTO t (id, v) VALUES (2, 'b')")
    assert [o.error for o in outcomes] == [None, None]
    assert savepoints(traced) == []
    assert len([s for s in traced if s.startswith('INSERT INTO "default.t"')]) == 2
    assert node.rows("SELECT id, v FROM t ORDER BY id") == [[1, "a"], [2, "b"]]


def test_a_failed_one_row_insert_leaves_nothing_and_the_batch_goes_on(node, traced):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    traced.clear()
    outcomes = apply(node, "INSERT INTO t (id, v) VALUES (1, 'a')", "INSERT INTO t (id, v) VALUES (1, 'again')",
                     "INSERT INTO t (id, v) VALUES (3, 'c')")
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert savepoints(traced) == []
    assert node.rows("SELECT id, v FROM t ORDER BY id") == [[1, "a"], [3, "c"]]
    assert node.rows("SELECT COUNT(*) FROM t") == [["2"]]


def test_a_multi_row_insert_keeps_its_savepoint_and_fails_whole(node, traced):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    traced.clear()
    # the second row collides with the first command's row: the first row of the same statement,
    # already written by then, must go too
    outcomes = apply(node, "INSERT INTO t (id, v) VALUES (1, 'a')", "INSERT INTO t (id, v) VALUES (2, 'b'), (1, 'x')",
                     "INSERT INTO t (id, v) VALUES (4, 'd')")
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert "SAVEPOINT kdb_stmt" in savepoints(traced)
    assert node.rows("SELECT id FROM t ORDER BY id") == [[1], [4]]


def test_a_multi_statement_command_keeps_the_statements_before_the_failing_one(node, traced):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    node.sql("INSERT INTO t (id, v) VALUES (9, 'z')")
    traced.clear()
    outcomes = apply(node, "INSERT INTO t (id, v) VALUES (5, 'e'); INSERT INTO t (id, v) VALUES (9, 'dup')")
    assert outcomes[0].error is not None and "Statement 2" in outcomes[0].error.message
    assert savepoints(traced)[:1] == ["SAVEPOINT kdb_cmd"]
    assert node.rows("SELECT id, v FROM t ORDER BY id") == [[5, "e"], [9, "z"]]


def test_a_failed_transaction_undoes_its_one_row_inserts(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    node.sql("INSERT INTO t (id, v) VALUES (9, 'z')")
    outcomes = apply(node, "BEGIN; INSERT INTO t (id, v) VALUES (6, 'f'); INSERT INTO t (id, v) VALUES (9, 'dup'); "
                           "COMMIT")
    assert outcomes[0].error is not None
    assert node.rows("SELECT id FROM t ORDER BY id") == [[9]]


def test_an_insert_into_a_routed_table_keeps_its_savepoint(node, traced):
    node.sql("CREATE NAMESPACE app")
    node.sql("CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT)")
    node.sql("CREATE TOPIC app.tp")
    node.sql("ALTER TOPIC app.tp ADD SOURCE app.t ON INSERT")
    traced.clear()
    outcomes = apply(node, "INSERT INTO app.t (id, v) VALUES (1, 'a')")
    assert outcomes[0].error is None
    assert "SAVEPOINT kdb_stmt" in savepoints(traced)  # the topic message is a second write


def test_the_batch_saves_its_position_in_one_statement(node, traced):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    traced.clear()
    apply(node, "INSERT INTO t (id, v) VALUES (1, 'a')", "INSERT INTO t (id, v) VALUES (2, 'b')")
    meta = [s for s in traced if "_kdb_meta" in s]
    assert len(meta) == 1, meta
    rows = node.db._wconn.execute(
        "SELECT key, value FROM _kdb_meta WHERE key IN ('applied_index', 'last_snowflake') ORDER BY key").fetchall()
    assert rows[0] == ("applied_index", node.db.applied_index)
    assert rows[1][1] > 0  # the last snowflake moved with the batch, not the applied index's value
    assert rows[1][1] != node.db.applied_index
