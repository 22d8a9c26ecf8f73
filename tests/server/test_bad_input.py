"""Every kind of bad request gets the documented status, code and a useful message, leaves nothing
behind, and the server keeps serving. All through the HTTP API of a real server process."""

from __future__ import annotations

import pytest

from tests.server.helpers import assert_error, assert_serving, basic, post_raw, post_sql


@pytest.fixture(autouse=True)
def still_serving_afterwards(server):
    """Whatever a test sent, the server must still answer health and SQL afterwards."""
    yield
    assert_serving(server)


@pytest.fixture
def table(server, unique_ns):
    """A SHARED table ns.items(id INT PK, name TEXT, qty INT) with one row (1, 'one', 10)."""
    for sql in (f"CREATE NAMESPACE {unique_ns}",
                f"CREATE SHARED TABLE {unique_ns}.items (id INT PRIMARY KEY, name TEXT, qty INT)",
                f"INSERT INTO {unique_ns}.items (id, name, qty) VALUES (1, 'one', 10)"):
        assert server.sql(sql).ok, sql
    return f"{unique_ns}.items"


def count(server, table: str) -> int:
    resp = server.sql(f"SELECT COUNT(*) AS n FROM {table}")
    assert resp.ok, resp
    return int(resp.rows[0][0])


def table_names(server, ns: str) -> set[str]:
    resp = server.sql(f"SELECT table_name FROM system.tables WHERE namespace_id = '{ns}'")
    assert resp.ok, resp
    return {row[0] for row in resp.rows}


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"sql": "SELECT 1"', b"\xff\xfe"])
def test_malformed_json_is_invalid_input(server, body):
    resp = post_raw(server, "/v1/api/sql", body, {"Authorization": basic("root", "")})
    assert_error(resp, 400, "INVALID_INPUT", "Invalid JSON payload")
    assert_serving(server)


@pytest.mark.parametrize(("body", "fragment"), [
    ([1, 2], "expected an object"),
    ({"query": "SELECT 1"}, "sql"),
    ({"sql": 42}, "'sql' must be a string"),
    ({"sql": "SELECT 1", "params": {"a": 1}}, "'params' must be an array"),
    ({"sql": "SELECT 1", "namespace_id": 5}, "namespace_id"),
    ({"sql": "SELECT 1", "min_applied_index": -1}, "min_applied_index"),
])
def test_wrong_field_types_are_invalid_input(server, body, fragment):
    assert_error(post_sql(server, body), 400, "INVALID_INPUT", fragment)


def test_unknown_fields_are_ignored(server):
    resp = post_sql(server, {"sql": "SELECT 1 AS one", "future_field": {"x": 1}})
    assert resp.ok, resp


@pytest.mark.parametrize("sql", ["", "   ", " ;\n ; "])
def test_empty_sql(server, sql):
    assert_error(server.sql(sql), 400, "EMPTY_SQL")


def test_sql_over_one_megabyte_is_rejected(server, table):
    sql = f"INSERT INTO {table} (id, name) VALUES (2, '{'x' * (1024 * 1024)}')"
    assert_error(server.sql(sql), 400, "INVALID_SQL", "larger than")
    assert count(server, table) == 1
    assert_serving(server)


def test_more_than_fifty_params(server, table):
    params = list(range(51))
    assert_error(server.sql(f"SELECT * FROM {table} WHERE id = $1", params), 400, "INVALID_PARAMETER", "50")


def test_params_with_a_batch(server, table):
    resp = server.sql(f"INSERT INTO {table} (id) VALUES ($1); INSERT INTO {table} (id) VALUES (3)", [2])
    assert_error(resp, 400, "PARAMS_WITH_BATCH")
    assert count(server, table) == 1


def test_unknown_namespace(server, unique_ns):
    resp = server.sql(f"CREATE SHARED TABLE {unique_ns}_missing.t (id INT PRIMARY KEY)")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", f"Namespace '{unique_ns}_missing' does not exist")
    assert_serving(server)


def test_unknown_table(server, unique_ns, table):
    assert_error(server.sql(f"SELECT * FROM {unique_ns}.nope"), 400, "TABLE_NOT_FOUND", "nope")
    assert_error(server.sql(f"INSERT INTO {unique_ns}.nope (id) VALUES (1)"), 400, "TABLE_NOT_FOUND", "nope")
    assert "nope" not in table_names(server, unique_ns)


def test_syntax_error_and_unknown_table_option(server, unique_ns, table):
    assert_error(server.sql("SELEC 1"), 400, "INVALID_SQL", "SELEC")
    resp = server.sql(f"CREATE SHARED TABLE {unique_ns}.opt (id INT PRIMARY KEY) WITH (BOGUS = 1)")
    assert_error(resp, 400, "INVALID_SQL", "Unknown table option")
    assert "opt" not in table_names(server, unique_ns)


def test_unknown_column(server, table):
    resp = server.sql(f"INSERT INTO {table} (id, colour) VALUES (2, 'red')")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", "Column 'colour' does not exist")
    assert count(server, table) == 1
    assert_error(server.sql(f"SELECT colour FROM {table}"), 400, "SQL_EXECUTION_ERROR", "colour")


def test_duplicate_primary_key_leaves_the_first_row(server, table):
    resp = server.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'again')")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", "Primary key violation", "'1'", "'id'")
    rows = server.sql(f"SELECT name FROM {table} WHERE id = 1").rows
    assert rows == [["one"]]


def test_failing_statement_stops_the_batch(server, table):
    resp = server.sql(f"INSERT INTO {table} (id) VALUES (5); INSERT INTO {table} (id, name) VALUES (1, 'dup'); "
                      f"INSERT INTO {table} (id) VALUES (6)")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", "Statement 2", "Primary key violation")
    ids = {row[0] for row in server.sql(f"SELECT id FROM {table}").rows}
    assert 6 not in ids  # nothing after the failing statement ran
    assert server.sql(f"SELECT name FROM {table} WHERE id = 1").rows == [["one"]]


def test_failing_statement_in_a_transaction_leaves_nothing(server, table):
    resp = server.sql(f"BEGIN; INSERT INTO {table} (id) VALUES (7); INSERT INTO {table} (id) VALUES (1); COMMIT")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", "Primary key violation")
    assert count(server, table) == 1


def test_wrong_type_value(server, table):
    resp = server.sql(f"INSERT INTO {table} (id, qty) VALUES (2, 'many')")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", "Invalid value 'many'", "Int")
    assert count(server, table) == 1


@pytest.mark.parametrize("name", ["bad-name", "spaces here", "semi;colon"])
def test_invalid_namespace_identifier(server, name):
    resp = server.sql(f"CREATE NAMESPACE \"{name}\"")
    assert_error(resp, 400, "INVALID_SQL", f"Invalid namespace name '{name}'")
    assert not any(row[0] == name for row in server.sql("SELECT name FROM system.namespaces").rows)


@pytest.mark.parametrize(("ddl", "fragment"), [
    ('CREATE SHARED TABLE {ns}."bad-t" (id INT PRIMARY KEY)', "Invalid table name 'bad-t'"),
    ('CREATE SHARED TABLE {ns}.ok_t ("bad col" INT PRIMARY KEY)', "Invalid column name 'bad col'"),
])
def test_invalid_table_and_column_identifiers(server, unique_ns, table, ddl, fragment):
    assert_error(server.sql(ddl.format(ns=unique_ns)), 400, "INVALID_SQL", fragment)
    assert table_names(server, unique_ns) == {"items"}


def test_user_table_without_primary_key(server, unique_ns, table):
    resp = server.sql(f"CREATE USER TABLE {unique_ns}.nopk (a INT, b TEXT)")
    assert_error(resp, 400, "INVALID_SQL", "PRIMARY KEY")
    assert "nopk" not in table_names(server, unique_ns)


def test_stream_without_ttl(server, unique_ns, table):
    resp = server.sql(f"CREATE STREAM TABLE {unique_ns}.events (id INT PRIMARY KEY, body TEXT)")
    assert_error(resp, 400, "INVALID_SQL", "TTL_SECONDS")
    assert "events" not in table_names(server, unique_ns)


def test_update_on_stream(server, unique_ns, table):
    create = server.sql(f"CREATE STREAM TABLE {unique_ns}.events (id INT PRIMARY KEY, body TEXT) "
                        "WITH (TTL_SECONDS = 3600)")
    assert create.ok, create
    assert server.sql(f"INSERT INTO {unique_ns}.events (id, body) VALUES (1, 'a')").ok
    resp = server.sql(f"UPDATE {unique_ns}.events SET body = 'b' WHERE id = 1")
    assert_error(resp, 400, "SQL_EXECUTION_ERROR", "UPDATE is not supported on STREAM")
    assert server.sql(f"SELECT body FROM {unique_ns}.events").rows == [["a"]]


def test_body_over_the_size_limit_is_413(server):
    body = b'{"sql": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    resp = post_raw(server, "/v1/api/sql", body, {"Authorization": basic("root", "")})
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE", "max_body_bytes")
    assert_serving(server)


def test_unknown_route_and_wrong_method_answer_json(server):
    with server.client() as c:
        assert c._request("GET", "/v1/api/nope", None, {}).http_status == 404
        wrong = c._request("GET", "/v1/api/sql", None, {})
    assert_error(wrong, 405, "INVALID_INPUT", "POST")
