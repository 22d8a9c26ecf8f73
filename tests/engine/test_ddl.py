"""Namespaces and tables: KalamDB's DDL rules and messages."""

from __future__ import annotations

import pytest

from kalamdb.engine import Principal

USER = Principal("u_1", "bob", "user")


def test_default_namespace_exists_and_create_messages(node):
    assert ["default", "default"] in [r[:2] for r in node.rows("SHOW NAMESPACES")]
    assert node.sql("CREATE NAMESPACE app")[0]["message"] == "Namespace 'app' created successfully"
    assert node.sql("CREATE NAMESPACE IF NOT EXISTS app")[0]["message"] == "Namespace 'app' already exists"
    err = node.error("CREATE NAMESPACE app")
    assert err.code == "SQL_EXECUTION_ERROR" and "already exists" in err.message
    assert node.sql("DROP NAMESPACE app")[0]["message"] == "Namespace 'app' dropped successfully"


def test_namespace_name_rules_and_role(node):
    assert node.error("CREATE NAMESPACE bad-name").code == "INVALID_SQL"
    assert node.error("CREATE NAMESPACE x", who=USER).code == "PERMISSION_DENIED"
    assert node.error("CREATE NAMESPACE x", who=Principal("s", "svc", "service")).code == "PERMISSION_DENIED"
    node.sql("CREATE NAMESPACE ok_1", who=Principal("d", "admin", "dba"))


def test_drop_namespace_needs_cascade_when_not_empty(node):
    node.sql("CREATE NAMESPACE app; CREATE TABLE app.t (id INT PRIMARY KEY)")
    assert "CASCADE" in node.error("DROP NAMESPACE app").message
    node.sql("DROP NAMESPACE app CASCADE")
    assert node.error("SELECT * FROM app.t").code == "TABLE_NOT_FOUND"


def test_table_kinds_and_messages(node):
    node.sql("CREATE NAMESPACE app")
    assert node.sql("CREATE TABLE app.s (id INT PRIMARY KEY)")[0]["message"] == \
        "Shared table app.s created successfully"
    assert node.sql("CREATE USER TABLE app.u (id INT PRIMARY KEY)")[0]["message"] == \
        "User table app.u created successfully"
    assert node.sql("CREATE TABLE app.w (id INT PRIMARY KEY) WITH (TYPE='USER')")[0]["message"] == \
        "User table app.w created successfully"
    assert node.sql("CREATE STREAM TABLE app.ev (id INT, body TEXT) WITH (TTL_SECONDS=10)")[0]["message"] == \
        "Stream table app.ev created successfully"
    assert node.sql("CREATE TABLE IF NOT EXISTS app.s (id INT PRIMARY KEY)")[0]["message"] == \
        "Table app.s already exists (IF NOT EXISTS)"
    assert "already exists" in node.error("CREATE TABLE app.s (id INT PRIMARY KEY)").message
    types = {r[1]: r[2] for r in node.rows("SHOW TABLES IN app")}
    assert types == {"s": "shared", "u": "user", "w": "user", "ev": "stream"}  # as upstream shows them


@pytest.mark.parametrize("sql, fragment", [
    ("CREATE USER TABLE app.t (id INT PRIMARY KEY) WITH (TYPE='SHARED')", "conflict"),
    ("CREATE TABLE app.t (id INT PRIMARY KEY) WITH (COLOR='red')", "Unknown table option"),
    ("CREATE TABLE app.t (id INT, v TEXT)", "PRIMARY KEY"),
    ("CREATE USER TABLE app.t (a INT PRIMARY KEY, b INT PRIMARY KEY)", "single-column"),
    ("CREATE STREAM TABLE app.t (id INT)", "TTL_SECONDS"),
    ("CREATE TABLE app.t (id INT PRIMARY KEY, _seq INT)", "reserved"),
    ("CREATE TABLE app.t (id WIBBLE PRIMARY KEY)", "Unsupported data type"),
    ("CREATE TABLE app.t (id INT PRIMARY KEY, id TEXT)", "Duplicate column"),
])
def test_create_table_rules(node, sql, fragment):
    node.sql("CREATE NAMESPACE app")
    err = node.error(sql)
    assert err.code == "INVALID_SQL" and fragment in err.message


def test_namespace_must_exist(node):
    err = node.error("CREATE TABLE nowhere.t (id INT PRIMARY KEY)")
    assert "Namespace 'nowhere' does not exist" in err.message


def test_role_user_creates_user_and_stream_tables_only(node):
    node.sql("CREATE NAMESPACE app")
    assert node.error("CREATE TABLE app.s (id INT PRIMARY KEY)", who=USER).code == "PERMISSION_DENIED"
    node.sql("CREATE USER TABLE app.u (id INT PRIMARY KEY)", who=USER)
    node.sql("CREATE STREAM TABLE app.e (id INT) WITH (TTL_SECONDS=5)", who=USER)


def test_serial_types_default_to_snowflake(node):
    node.sql("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n INT AUTO_INCREMENT, v TEXT)")
    node.sql("INSERT INTO t (v) VALUES ('a'), ('b')")
    rows = node.rows("SELECT id, n FROM t ORDER BY id")
    ids = [int(r[0]) for r in rows]
    assert len(set(ids)) == 2 and all(i > 0 for i in ids)
    desc = {r[0]: r[6] for r in node.rows("DESCRIBE TABLE t")}
    assert desc["id"] == "SNOWFLAKE_ID()"


def test_alter_table_add_and_drop_column(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, a TEXT)")
    node.sql("INSERT INTO t (id, a) VALUES (1, 'x')")
    node.sql("ALTER TABLE t ADD COLUMN score INT DEFAULT 7")
    assert node.rows("SELECT id, a, score FROM t") == [[1, "x", 7]]
    node.sql("ALTER TABLE t DROP COLUMN a")
    assert node.sql("SELECT * FROM t")[0]["schema"] == [
        {"name": "id", "data_type": "Int", "index": 0}, {"name": "score", "data_type": "Int", "index": 1},
        {"name": "_seq", "data_type": "BigInt", "index": 2}, {"name": "_deleted", "data_type": "Boolean", "index": 3}]
    assert "primary key" in node.error("ALTER TABLE t DROP COLUMN id").message
    assert "already exists" in node.error("ALTER TABLE t ADD COLUMN score INT").message
    assert "literal" in node.error("ALTER TABLE t ADD COLUMN z INT NOT NULL").message
    schema_version = node.rows("SELECT schema_version FROM system.schemas WHERE table_name = 't'")[0][0]
    assert schema_version == 3


def test_drop_table(node):
    node.sql("CREATE USER TABLE t (id INT PRIMARY KEY)")
    assert "not SHARED" in node.error("DROP SHARED TABLE t").message
    node.sql("DROP USER TABLE t")
    assert node.error("DROP TABLE t").code == "TABLE_NOT_FOUND"
    node.sql("DROP TABLE IF EXISTS t")


def test_describe_and_system_tables(node):
    node.sql("CREATE TABLE t (id BIGINT PRIMARY KEY, body TEXT NOT NULL, at TIMESTAMP DEFAULT NOW())")
    desc = node.rows("DESCRIBE TABLE default.t")
    # upstream's describe view: column_name, ordinal_position, column_id, data_type, is_nullable,
    # is_primary_key, column_default, column_comment, schema_version
    assert desc == [["id", 1, "1", "BIGINT", False, True, None, None, 1],
                    ["body", 2, "2", "TEXT", False, False, None, None, 1],
                    ["at", 3, "3", "TIMESTAMP", True, False, "NOW()", None, 1]]
    rows = node.rows("SELECT table_id, table_type FROM system.schemas WHERE namespace_id = 'default'")
    assert rows == [["default:t", "shared"]]  # upstream's table ids and type names
    counts = dict(node.rows("SELECT name, table_count FROM system.namespaces"))
    assert counts["default"] == 1  # table_count is an Int upstream
