"""The KalamDB dialect parser: statement splitting, DDL grammar, users, cluster commands."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.parser import ParseCache, parse_statement
from kalamdb.sql.splitter import split_statements


def parse(sql):
    return parse_statement(sql, ParseCache())


def test_split_respects_quotes_and_comments():
    sql = "SELECT 'a;b'; -- c;d\nSELECT \"x;y\" /* ; */ FROM t;; SELECT 'it''s;'"
    assert split_statements(sql) == ["SELECT 'a;b'", 'SELECT "x;y"   FROM t', "SELECT 'it''s;'"]
    with pytest.raises(KalamError) as info:
        split_statements("SELECT 'open")
    assert info.value.code == "INVALID_SQL"


@given(hs.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_parser_never_crashes_on_garbage(text):
    """Any input either parses or raises KalamError with a client error code."""
    cache = ParseCache()
    try:
        for stmt in split_statements(text):
            parse_statement(stmt, cache)
    except KalamError as e:
        assert e.status == 400, e


def test_create_table_full_grammar():
    s = parse("CREATE STREAM TABLE IF NOT EXISTS App.Events (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), "
              "body VARCHAR(20) NOT NULL DEFAULT 'x', amt DECIMAL(10, 2), n INT DEFAULT -3, "
              "flag BOOLEAN DEFAULT TRUE, ts TIMESTAMP DEFAULT CURRENT_TIMESTAMP) "
              "WITH (TTL_SECONDS = 60, STORAGE_ID = 'local', FLUSH_POLICY = 'rows:100')")
    assert isinstance(s, st.CreateTable)
    assert (s.namespace, s.name, s.table_type, s.if_not_exists, s.primary_key) == ("app", "events", "STREAM", True, "id")
    assert [c.data_type for c in s.columns] == ["BigInt", "Text", "Decimal", "Int", "Boolean", "Timestamp"]
    assert [c.default for c in s.columns] == [{"fn": "SNOWFLAKE_ID"}, {"lit": "x"}, None, {"lit": -3},
                                              {"lit": True}, {"fn": "NOW"}]
    assert s.columns[2].type_args == [10, 2]
    assert s.options == {"TTL_SECONDS": 60, "STORAGE_ID": "local", "FLUSH_POLICY": "rows:100"}


def test_table_level_primary_key_and_type_option():
    s = parse("CREATE TABLE t (a INT, b TEXT, PRIMARY KEY (a)) WITH (TYPE = 'user')")
    assert s.table_type == "USER" and s.primary_key == "a" and s.columns[0].not_null
    s = parse("CREATE TABLE t (a INT PRIMARY KEY) WITH (TYPE = 'shared', ACCESS_LEVEL = 'public')")
    assert s.table_type == "SHARED" and s.options == {"ACCESS_LEVEL": "PUBLIC"}
    with pytest.raises(KalamError, match="ACCESS_LEVEL is only supported for SHARED tables"):
        parse("CREATE TABLE t (a INT PRIMARY KEY) WITH (TYPE = 'user', ACCESS_LEVEL = 'public')")


@pytest.mark.parametrize("sql, cls", [
    ("CREATE NAMESPACE IF NOT EXISTS a1", st.CreateNamespace),
    ("DROP NAMESPACE IF EXISTS a1 CASCADE", st.DropNamespace),
    ("SHOW NAMESPACES", st.ShowNamespaces), ("SHOW TABLES IN a1", st.ShowTables),
    ("DESCRIBE TABLE a1.t", st.DescribeTable), ("DESC t", st.DescribeTable), ("USE a1", st.UseNamespace),
    ("DROP SHARED TABLE IF EXISTS a1.t", st.DropTable), ("ALTER TABLE t ADD COLUMN c INT", st.AlterTableAddColumn),
    ("ALTER TABLE t DROP COLUMN c", st.AlterTableDropColumn), ("BEGIN", st.Begin), ("START TRANSACTION", st.Begin),
    ("COMMIT", st.Commit), ("ROLLBACK", st.Rollback), ("DROP USER IF EXISTS bob", st.DropUser),
    ("ALTER USER bob SET ROLE dba", st.AlterUser), ("CREATE USER bob WITH PASSWORD 'p' ROLE service", st.CreateUser),
])
def test_statement_kinds(sql, cls):
    assert isinstance(parse(sql), cls)


def test_user_statements_keep_password_off_the_wire():
    s = parse("CREATE USER 'bob' WITH PASSWORD 'se''cret' ROLE dba EMAIL 'b@x.io'")
    assert (s.username, s.password, s.role, s.email) == ("bob", "se'cret", "dba", "b@x.io")
    assert "password" not in s.to_wire() and "se'cret" not in repr(s)
    assert parse("ALTER USER bob SET PASSWORD 'n'").password == "n"
    with pytest.raises(KalamError, match="Invalid role"):
        parse("CREATE USER bob WITH PASSWORD 'p' ROLE king")


def test_execute_as_user_wraps_one_query():
    s = parse("EXECUTE AS USER 'alice' ( INSERT INTO t (id) VALUES (1) )")
    assert isinstance(s, st.ExecuteAs) and s.username == "alice" and s.is_write
    assert not parse("EXECUTE AS USER alice (SELECT * FROM t)").is_write
    with pytest.raises(KalamError):
        parse("EXECUTE AS USER 'alice' (CREATE NAMESPACE x)")
    with pytest.raises(KalamError):
        parse("EXECUTE AS USER 'alice' SELECT 1")


@pytest.mark.parametrize("sql, op", [
    ("CLUSTER SNAPSHOT", st.ClusterOp("snapshot")),
    ("CLUSTER PURGE 100", st.ClusterOp("purge", upto=100)),
    ("CLUSTER TRIGGER ELECTION", st.ClusterOp("trigger_election")),
    ("CLUSTER TRANSFER LEADER 2", st.ClusterOp("transfer_leader", node_id=2)),
    ("CLUSTER STEPDOWN", st.ClusterOp("stepdown")),
    ("CLUSTER JOIN 4 127.0.0.1:9191 http://127.0.0.1:8084",
     st.ClusterOp("join", node_id=4, rpc_addr="127.0.0.1:9191", api_addr="http://127.0.0.1:8084")),
    ("CLUSTER JOIN 5 '127.0.0.1:9192' '127.0.0.1:8085'",
     st.ClusterOp("join", node_id=5, rpc_addr="127.0.0.1:9192", api_addr="127.0.0.1:8085")),
    ("CLUSTER LEAVE 3", st.ClusterOp("leave", node_id=3)),
    ("CLUSTER LIST", st.ClusterOp("list")), ("CLUSTER STATUS", st.ClusterOp("status")),
])
def test_cluster_statements(sql, op):
    s = parse(sql)
    assert isinstance(s, st.ClusterStatement) and s.op == op and not s.is_write


@pytest.mark.parametrize("sql", ["CLUSTER PURGE", "CLUSTER DANCE", "CLUSTER TRANSFER LEADER x", "SHOW ME",
                                 "CREATE TABLE t (", "CREATE NAMESPACE a-b", "DROP SOMETHING x", "USE"])
def test_bad_statements_are_invalid_sql(sql):
    with pytest.raises(KalamError) as info:
        parse(sql)
    assert info.value.code == "INVALID_SQL"


def test_wire_round_trip():
    for sql in ["CREATE TABLE a.t (id INT PRIMARY KEY, v TEXT DEFAULT 'x') WITH (TYPE='USER')",
                "ALTER TABLE t ADD COLUMN c INT DEFAULT 1", "EXECUTE AS USER 'a' (SELECT 1)", "DROP USER x"]:
        s = parse(sql)
        back = st.statement_from_wire(s.to_wire())
        assert back.to_wire() == s.to_wire()


def test_parse_cache_returns_the_same_tree():
    cache = ParseCache(capacity=2)
    a = cache.parse("SELECT 1")
    assert cache.parse("SELECT 1") is a and cache.hits == 1
    cache.parse("SELECT 2")
    cache.parse("SELECT 3")  # evicts SELECT 1
    assert cache.parse("SELECT 1") is not a and cache.misses == 4


@pytest.mark.parametrize("sql, template, values", [
    ("SELECT a = 5 FROM t WHERE id = 5 AND n LIKE 'a%' OR v IN (1, -3) GROUP BY 1, 2 ORDER BY 2 LIMIT 10",
     "SELECT a = 5 FROM t WHERE id = $1  AND n LIKE $2  OR v IN ($3 , $4 ) GROUP BY 1, 2 ORDER BY 2 LIMIT 10",
     [5, "a%", 1, -3]),
    ("UPDATE acct SET bal = bal - 10 WHERE id = 7", "UPDATE acct SET bal = bal - $1  WHERE id = $2 ", [10, 7]),
    ("DELETE FROM t WHERE s <> 'it''s'", "DELETE FROM t WHERE s <> $1 ", ["it's"]),
    ("INSERT INTO t (a, b) VALUES (1, 'x'), (-2, NULL)", "INSERT INTO t (a, b) VALUES ($1 , $2 ), ($3 , $4 )",
     [1, "x", -2, None]),
    ("INSERT INTO t (a) VALUES (3-5)", None, None),
    ("SELECT * FROM t WHERE x = CAST(3 AS DECIMAL(10, 2)) AND y IS NULL", None, None),
    ("SELECT * FROM t WHERE id = $1", None, None),
])
def test_literals_become_parameters_only_where_meaning_is_kept(sql, template, values):
    q = parse(sql)
    if template is None:
        assert q.params is None
    else:
        assert (q.sql, q.params) == (template, values)
