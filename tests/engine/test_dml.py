"""INSERT/UPDATE/DELETE/SELECT: encoding, system columns, errors, multi-statement requests."""

from __future__ import annotations

import re

import pytest

from kalamdb.engine import Principal

ROOT = Principal("root", "root", "system")


@pytest.fixture
def items(node):
    node.sql("CREATE NAMESPACE app")
    node.sql("CREATE TABLE app.items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty INT, small SMALLINT, "
             "price DOUBLE, ok BOOLEAN, at TIMESTAMP, meta JSON, uid UUID, d DATE, amount DECIMAL(10,2))")
    return node


def test_cell_encoding_and_schema_names(items):
    items.sql("INSERT INTO app.items (id, name, qty, small, price, ok, at, meta, uid, d, amount) VALUES "
              "(9007199254740993, 'a', 5, 2, 1.5, true, '2024-01-01T00:00:01Z', '{\"b\": 1}', "
              "'6f1c1c5e-1d2f-4c39-9d5e-2c7a5a3f0e11', '2024-02-29', '12.50')")
    res = items.sql("SELECT *, COUNT(*) OVER () AS n FROM app.items")[0]  # * ends with _seq, _deleted
    types = [c["data_type"] for c in res["schema"]]
    assert types[:11] == ["BigInt", "Text", "Int", "SmallInt", "Double", "Boolean", "Timestamp", "Json", "Uuid",
                          "Date", "Decimal"]
    row = res["rows"][0]
    assert row[:11] == ["9007199254740993", "a", 5, 2, 1.5, True, 1_704_067_201_000_000, '{"b":1}',
                        "6f1c1c5e-1d2f-4c39-9d5e-2c7a5a3f0e11", "2024-02-29", "12.50"]
    assert isinstance(row[11], str) and int(row[11]) > 0  # _seq is a JSON string
    assert row[12] is False and types[11:13] == ["BigInt", "Boolean"]
    assert row[13] == "1"  # untyped 64-bit integer
    assert items.rows("SELECT COUNT(*) FROM app.items") == [["1"]]


@pytest.mark.parametrize("column, value", [("qty", "'lots'"), ("small", "40000"), ("ok", "'maybe'"),
                                           ("at", "'yesterday'"), ("meta", "'{bad'"), ("uid", "'nope'"),
                                           ("d", "'2024-13-01'"), ("price", "'cheap'")])
def test_wrong_type_values_are_rejected_clearly(items, column, value):
    err = items.error(f"INSERT INTO app.items (id, name, {column}) VALUES (1, 'a', {value})")
    assert err.code == "SQL_EXECUTION_ERROR"
    assert re.search(r"Invalid value|out of range", err.message), err.message
    assert items.rows("SELECT COUNT(*) FROM app.items") == [["0"]]


def test_primary_key_violation_message_and_atomic_multi_row(items):
    items.sql("INSERT INTO app.items (id, name) VALUES (1, 'a')")
    err = items.error("INSERT INTO app.items (id, name) VALUES (2, 'b'), (1, 'again')")
    assert err.message == "Statement 1 failed: Primary key violation: value '1' already exists in column 'id'"
    assert items.rows("SELECT id FROM app.items") == [["1"]]  # row 2 was not left behind
    err = items.error("INSERT INTO app.items (id, name) VALUES (3, 'c'), (3, 'd')")
    assert "value '3' already exists" in err.message
    err = items.error("INSERT INTO app.items (id, name) VALUES ($1, $2)", [1, "p"])
    assert "value '1' already exists" in err.message


def test_unknown_table_column_namespace(items):
    assert items.error("SELECT * FROM app.nope").code == "TABLE_NOT_FOUND"
    assert items.error("SELECT * FROM nons.t").code == "TABLE_NOT_FOUND"
    assert items.error("INSERT INTO app.nope (id) VALUES (1)").code == "TABLE_NOT_FOUND"
    err = items.error("INSERT INTO app.items (id, name, color) VALUES (1, 'a', 'red')")
    assert "Column 'color' does not exist" in err.message
    assert "Column 'color' does not exist" in items.error("SELECT color FROM app.items").message
    assert items.error("INSERT INTO app.items (id) VALUES (1)").message.endswith("cannot be NULL (no value and no DEFAULT)")


def test_update_gives_new_seq_and_delete_is_soft(items):
    items.sql("INSERT INTO app.items (id, name, qty) VALUES (1, 'a', 1), (2, 'b', 2)")
    seq_before = dict(items.rows("SELECT id, _seq FROM app.items"))
    res = items.sql("UPDATE app.items SET qty = qty + 10 WHERE id = 1")
    assert res[0]["message"] == "Updated 1 row(s)" and res[0]["row_count"] == 1
    seq_after = dict(items.rows("SELECT id, _seq FROM app.items"))
    assert int(seq_after["1"]) > int(seq_before["1"]) and seq_after["2"] == seq_before["2"]
    assert items.sql("DELETE FROM app.items WHERE id = 2")[0]["message"] == "Deleted 1 row(s)"
    assert items.rows("SELECT id, qty FROM app.items") == [["1", 11]]
    # the row is still stored, flagged deleted, invisible to every read (including aggregates/joins)
    raw = items.db._wconn.execute('SELECT id, _deleted FROM "app.items" ORDER BY id').fetchall()
    assert raw == [(1, 0), (2, 1)]
    assert items.rows("SELECT COUNT(*) FROM app.items a JOIN app.items b ON a.id = b.id") == [["1"]]
    assert items.sql("DELETE FROM app.items WHERE id = 2")[0]["row_count"] == 0
    # a deleted key can be inserted again
    items.sql("INSERT INTO app.items (id, name) VALUES (2, 'back')")
    assert items.rows("SELECT name FROM app.items WHERE id = 2") == [["back"]]


def test_defaults_functions(node):
    node.sql("CREATE TABLE t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), at TIMESTAMP DEFAULT NOW(), "
             "ts2 TIMESTAMP DEFAULT CURRENT_TIMESTAMP, u TEXT DEFAULT UUID_V7(), l TEXT DEFAULT ULID(), "
             "who TEXT DEFAULT CURRENT_USER(), n INT DEFAULT 42, flag BOOLEAN DEFAULT false, v TEXT)")
    node.sql("INSERT INTO t (v) VALUES ('x')")
    now = node.now_us
    row = node.rows("SELECT id, at, ts2, u, l, who, n, flag FROM t")[0]
    assert int(row[0]) > 0 and row[1] == now and row[2] == now
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", row[3])
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", row[4])
    assert row[5:] == ["root", 42, False]


def test_select_features(node):
    node.sql("CREATE TABLE a (id INT PRIMARY KEY, g TEXT, v INT); CREATE TABLE b (id INT PRIMARY KEY, a_id INT, w TEXT)")
    node.sql("INSERT INTO a (id, g, v) VALUES (1, 'x', 10), (2, 'x', 20), (3, 'y', 5)")
    node.sql("INSERT INTO b (id, a_id, w) VALUES (1, 1, 'one'), (2, 3, 'three')")
    assert node.rows("SELECT g, SUM(v) AS s, COUNT(*) AS c FROM a GROUP BY g ORDER BY g") == \
        [["x", "30", "2"], ["y", "5", "1"]]
    assert node.rows("SELECT a.id, b.w FROM a JOIN b ON b.a_id = a.id ORDER BY a.id DESC LIMIT 1") == [[3, "three"]]
    assert node.rows("SELECT a.id, b.w FROM a LEFT JOIN b ON b.a_id = a.id WHERE b.w IS NULL") == [[2, None]]
    assert node.rows("WITH big AS (SELECT * FROM a WHERE v >= 10) SELECT id FROM big ORDER BY id") == [[1], [2]]
    assert node.rows("SELECT id FROM a WHERE id IN (SELECT a_id FROM b) ORDER BY id") == [[1], [3]]
    assert node.rows("SELECT default.a.v FROM default.a WHERE default.a.id = 1") == [[10]]
    assert node.rows("SELECT v FROM a WHERE g = $1 ORDER BY v", ["x"]) == [[10], [20]]


def test_multi_statement_results_and_stop_on_failure(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    res = node.sql("INSERT INTO t (id) VALUES (1), (2); UPDATE t SET id = id WHERE id > 0; DELETE FROM t WHERE id = 1")
    # an UPDATE that leaves rows as they were updates nothing (as upstream reports it)
    assert [r["message"] for r in res] == ["Inserted 2 row(s)", "Updated 0 row(s)", "Deleted 1 row(s)"]
    err = node.error("INSERT INTO t (id) VALUES (5); INSERT INTO t (id) VALUES (2); INSERT INTO t (id) VALUES (6)")
    assert err.message.startswith("Statement 2 failed: Primary key violation")
    # statements before the failure stay (each statement commits on its own), the failing one and the
    # ones after it leave nothing
    assert node.rows("SELECT id FROM t ORDER BY id") == [[2], [5]]


def test_transactions(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    node.sql("BEGIN; INSERT INTO t (id) VALUES (1); INSERT INTO t (id) VALUES (2); COMMIT")
    node.sql("BEGIN; INSERT INTO t (id) VALUES (3); ROLLBACK")
    err = node.error("BEGIN; INSERT INTO t (id) VALUES (4); INSERT INTO t (id) VALUES (1); COMMIT")
    assert err.message.startswith("Statement 3 failed")
    err = node.error("BEGIN; INSERT INTO t (id) VALUES (5)")
    assert "rolled back" in err.message
    assert node.rows("SELECT id FROM t ORDER BY id") == [[1], [2]]
    # DDL inside a rolled back transaction disappears from the catalog too
    node.error("BEGIN; CREATE TABLE t2 (id INT PRIMARY KEY)")
    assert node.error("SELECT * FROM t2").code == "TABLE_NOT_FOUND"


def test_request_validation(node):
    from kalamdb.errors import KalamError

    def code(sql, params=None):
        with pytest.raises(KalamError) as info:
            node.db.prepare(sql, params, None, ROOT)
        return info.value.code

    assert code("") == "EMPTY_SQL" and code("  ;; ") == "EMPTY_SQL"
    assert code("SELECT '" + "x" * (1024 * 1024) + "'") == "INVALID_SQL"
    assert code("SELECT 1", list(range(51))) == "INVALID_PARAMETER"
    assert code("SELECT $1; SELECT 2", [1]) == "PARAMS_WITH_BATCH"
    assert code("SELEKT 1") == "INVALID_SQL"
    assert code("SELECT FROM WHERE (") == "INVALID_SQL"
    assert code("SELECT $1", [{"a": 1}]) == "INVALID_PARAMETER"
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    assert node.error("SELECT * FROM t WHERE id = $2", [1]).code == "INVALID_PARAMETER"


def test_stream_tables_reject_update_and_expire_by_command(node):
    node.sql("CREATE STREAM TABLE ev (id INT, body TEXT) WITH (TTL_SECONDS=1)")
    node.sql("INSERT INTO ev (id, body) VALUES (1, 'a')")
    assert "UPDATE is not supported" in node.error("UPDATE ev SET body = 'b'").message
    assert node.db.expiry_command(node.now_us + 500_000) is None  # not yet expired
    cmd = node.db.expiry_command(node.now_us + 1_000_001)
    assert cmd is not None
    outcome = node.db.apply(node.db.applied_index + 1, cmd)
    assert outcome.error is None and outcome.results[0]["row_count"] == 1
    assert node.rows("SELECT COUNT(*) FROM ev") == [["0"]]


def test_non_deterministic_sqlite_functions_are_refused(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, b BYTES)")
    assert node.error("INSERT INTO t (id, b) VALUES (1, RANDOMBLOB(4))").code == "INVALID_SQL"
    node.sql("INSERT INTO t (id, b) VALUES (1, 'hi')")
    assert node.rows("SELECT b FROM t") == [["aGk="]]  # bytes are base64 in JSON


def test_node_local_system_table_joins(node):
    members = [(1, "leader"), (2, "follower")]
    node.db.register_system_table("cluster", [("node_id", "Int"), ("role", "Text")], lambda: members)
    assert node.rows("SELECT role FROM system.cluster WHERE node_id = 2") == [["follower"]]
    members.append((3, "learner"))
    assert node.rows("SELECT COUNT(*) FROM system.cluster") == [["3"]]
    assert node.rows("SELECT c.role, n.name FROM system.cluster c JOIN system.namespaces n ON c.node_id = 1") == \
        [["leader", "default"]]
    assert node.error("SELECT * FROM system.nothing").code == "TABLE_NOT_FOUND"


def test_params_without_spaces_and_dollar_inside_strings(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    node.sql("INSERT INTO t (id,v) VALUES ($1,$2)", [1, "$1,$2 stays"])
    node.sql("INSERT INTO t (id, v) VALUES (2, '$1,$2')")
    assert node.rows("SELECT v FROM t WHERE id=$1", [1]) == [["$1,$2 stays"]]
    assert node.rows("SELECT v FROM t WHERE id = 2") == [["$1,$2"]]


def test_clock_reading_functions_use_the_command_time(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, d TEXT, ts TIMESTAMP)")
    for bad in ["datetime('now')", "DATE('now')", "strftime('%s', 'now')", "UNIXEPOCH()"]:
        assert node.error(f"INSERT INTO t (id, d) VALUES (1, {bad})").code == "INVALID_SQL", bad
    node.sql("INSERT INTO t (id, d, ts) VALUES (1, CURRENT_DATE, NOW())")
    assert node.rows("SELECT d, ts FROM t") == [["2025-06-15", node.now_us]]


def test_literal_inserts_share_one_compilation(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT, f DOUBLE, b BOOLEAN)")
    node.sql("INSERT INTO t (id, v, f, b) VALUES (1, 'it''s', -1.5, TRUE)")
    compiled = len(node.db._compile_cache)
    for i in range(2, 10):
        node.sql(f"INSERT INTO t (id, v, f, b) VALUES ({i}, 'v{i}', {i}.5, NULL)")
    assert len(node.db._compile_cache) == compiled
    assert node.rows("SELECT v, f, b FROM t WHERE id <= 2 ORDER BY id") == [["it's", -1.5, True], ["v2", 2.5, None]]
    cmd = node.command("INSERT INTO t (id, v) VALUES (77, 'seventy-seven')")
    assert b"seventy-seven" in cmd  # the literal travels as a parameter of the template


def test_insert_select_and_use_namespace(node):
    node.sql("CREATE NAMESPACE app; USE app; CREATE TABLE src (id INT PRIMARY KEY, v TEXT); "
             "CREATE TABLE dst (id INT PRIMARY KEY, v TEXT, at TIMESTAMP DEFAULT NOW())")
    node.sql("INSERT INTO src (id, v) VALUES (1, 'a'), (2, 'b')", ns="app")
    res = node.sql("INSERT INTO dst (id, v) SELECT id, v FROM src WHERE id > 1", ns="app")
    assert res[0]["message"] == "Inserted 1 row(s)"
    assert node.rows("SELECT id, v, at FROM app.dst") == [[2, "b", node.now_us]]
    assert node.error("USE nowhere").code == "SQL_EXECUTION_ERROR"


def test_runaway_statement_is_stopped_identically(node, monkeypatch):
    from kalamdb.engine import limits

    monkeypatch.setattr(limits, "WRITE_STEP_BUDGET", 2_000_000)
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    counting = ("INSERT INTO t (id, v) SELECT {id}, COUNT(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                "SELECT x + 1 FROM c WHERE x < 400000) SELECT x FROM c)")
    # refused before it is proposed: the proposer runs the statement's reading part first
    base = node.db.applied_index
    err = node.error(counting.format(id=1))
    assert "execution budget" in err.message and "not applied" in err.message
    assert node.db.applied_index == base and node.rows("SELECT COUNT(*) FROM t") == [["0"]]
    # a replica applying such a command (proposed under a larger budget) stops it identically
    monkeypatch.setattr(limits, "WRITE_STEP_BUDGET", 100_000_000)
    runaway = node.command(counting.format(id=10))
    monkeypatch.setattr(limits, "WRITE_STEP_BUDGET", 2_000_000)
    batch = [(base + 1, node.command("INSERT INTO t (id, v) VALUES (1, 1)")), (base + 2, runaway),
             (base + 3, node.command("INSERT INTO t (id, v) VALUES (2, 2)"))]
    outcomes = node.db.apply_batch(batch)
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert "execution budget" in outcomes[1].error.message
    assert node.rows("SELECT id FROM t ORDER BY id") == [[1], [2]] and node.db.applied_index == base + 3


def test_a_write_of_too_many_rows_is_refused_before_it_is_proposed(node, monkeypatch):
    from kalamdb.engine import limits

    monkeypatch.setattr(limits, "MAX_WRITE_ROWS", 1000)
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    base = node.db.applied_index
    err = node.error("INSERT INTO t (id, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                     "SELECT x, x FROM c")
    assert "more than 1000 rows" in err.message and node.db.applied_index == base


def test_result_columns_are_named_by_the_users_text(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, x INT)")
    node.sql("INSERT INTO t (id, x) VALUES (1, 10)")
    schema = node.sql("SELECT CAST(x AS BIGINT), x AS renamed, t.id, COUNT(*) FROM t GROUP BY x, t.id")[0]["schema"]
    assert [(c["name"], c["data_type"]) for c in schema] == [
        ("CAST(x AS BIGINT)", "BigInt"), ("renamed", "Int"), ("id", "Int"), ("COUNT(*)", "BigInt")]


def test_runaway_read_is_stopped_by_its_time_budget(node, monkeypatch):
    from kalamdb.engine import limits

    monkeypatch.setattr(limits, "READ_SECONDS_BUDGET", 0.2)
    err = node.error("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c")
    assert "execution budget" in err.message
    assert node.rows("SELECT 1") == [["1"]]  # the reader connection still works
    node.db.digest()  # digests are not limited by a user statement's budget


@pytest.mark.parametrize("sql", ["SELECT * FROM pragma_table_info('default.t')", "SELECT name FROM pragma_table_list()",
                                 "SELECT * FROM _kdb_users", "SELECT * FROM \"default.t\"", "SELECT sqlite_version()"])
def test_internal_storage_is_unreachable(node, sql):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY)")
    assert node.error(sql).code in ("INVALID_SQL", "TABLE_NOT_FOUND")


def test_update_counts_only_rows_it_changes(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT, f DOUBLE)")
    node.sql("INSERT INTO t (id, v, f) VALUES (1, 'a', 1.5), (2, 'b', 2.0), (3, 'a', 3.0)")
    assert node.sql("UPDATE t SET v = 'a' WHERE id > 0")[0]["row_count"] == 1  # only row 2 changes
    assert node.sql("UPDATE t SET f = 2 WHERE id = 2")[0]["row_count"] == 0  # 2 is stored as 2.0
    assert node.sql("UPDATE t SET v = v, f = f + 1")[0]["row_count"] == 3
    assert node.rows("SELECT id, v, f FROM t ORDER BY id") == [[1, "a", 2.5], [2, "a", 3.0], [3, "a", 4.0]]


def test_a_double_quoted_name_is_always_a_name_never_a_string(items):
    """SQLite reads a double-quoted name that matches no column as a string literal; compiled SQL
    writes names in backticks (sql/dialects.py), so a missing column is an error, as in upstream."""
    items.sql("INSERT INTO app.items (id, name) VALUES (1, 'one')")
    assert items.rows('SELECT "name", "id" FROM app.items') == [["one", "1"]]
    for text in ('SELECT "nope" FROM app.items', 'SELECT "nope"', 'SELECT id FROM app.items WHERE "nope" = \'x\'',
                 'UPDATE app.items SET name = "nope"'):
        err = items.error(text)
        assert err.code == "SQL_EXECUTION_ERROR" and "nope" in err.message and "does not exist" in err.message, text
    err = items.error('INSERT INTO app.items (id, name) VALUES (2, "abc")')
    assert "abc" in err.message and "does not exist" in err.message
    assert items.rows("SELECT id, name FROM app.items ORDER BY id") == [["1", "one"]], "nothing else was written"


def test_an_alias_with_a_backtick_or_a_double_quote_in_it_comes_back_as_written(items):
    res = items.sql('SELECT 1 AS "a`b", 2 AS "c""d", 3 AS "e f"')[0]
    assert [c["name"] for c in res["schema"]] == ["a`b", 'c"d', "e f"] and res["rows"] == [["1", "2", "3"]]
