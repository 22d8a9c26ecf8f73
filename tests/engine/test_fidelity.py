"""Upstream KalamDB's behaviour where its own tests check it (backend/tests/testserver, misc,
cli/tests/smoke), translated into this project's engine tests: user identity, system tables, the
ALTER TABLE forms, `_seq`/`_deleted`, EMBEDDING/FILE, parameters and redaction."""

from __future__ import annotations

import json

import pytest

from kalamdb.engine import Principal
from kalamdb.engine.types import public_error
from kalamdb.errors import KalamError

ROOT = Principal("root", "root", "system")


@pytest.fixture
def users(node):
    node.sql("CREATE USER alice WITH PASSWORD 'a-pw' ROLE viewer; CREATE USER svc WITH PASSWORD 's-pw' ROLE developer; "
             "CREATE USER ops WITH PASSWORD 'o-pw' ROLE admin; CREATE NAMESPACE app")
    return {name: node.db.principal_for(name) for name in ("alice", "svc", "ops")}


# ------------------------------------------------------------------------------------ users


def test_user_id_is_the_created_name_and_role_aliases(node, users):
    # upstream test_user_sql_commands_http: WHERE user_id = 'alice', developer -> service
    rows = node.rows("SELECT user_id, role, auth_type FROM system.users WHERE user_id IN ('alice', 'svc', 'ops') "
                     "ORDER BY user_id")
    assert rows == [["alice", "user", "password"], ["ops", "dba", "password"], ["svc", "service", "password"]]
    assert node.login("alice", "a-pw") == Principal("alice", "alice", "user")
    for alias, role in [("analyst", "service"), ("readonly", "user"), ("DBA", "dba")]:
        node.sql(f"CREATE USER u_{alias.lower()} WITH PASSWORD 'p' ROLE {alias}")
        assert node.db.principal_for(f"u_{alias.lower()}").role == role
    assert "Invalid role" in node.error("CREATE USER z WITH PASSWORD 'p' ROLE wizard").message


def test_oauth_and_internal_users(node):
    msg = node.sql("CREATE USER 'bob' WITH OAUTH '{\"provider\": \"google\", \"subject\": \"12345\"}' ROLE viewer "
                   "EMAIL 'bob@example.com'")[0]["message"]
    assert msg == "User 'bob' created"
    user_id, auth_type, auth_data, role = node.rows(
        "SELECT user_id, auth_type, auth_data, role FROM system.users WHERE user_id = 'bob'")[0]
    assert (user_id, auth_type, role) == ("bob", "oauth", "user")
    assert json.loads(auth_data)["subject"] == "12345"
    with pytest.raises(KalamError):
        node.login("bob", "")  # an OAuth user never logs in with a password
    assert "requires 'subject'" in node.error("CREATE USER c WITH OAUTH '{\"provider\": \"google\"}'").message
    assert "provider and subject" in node.error("CREATE USER c WITH OAUTH ROLE user").message
    node.sql("CREATE USER robot WITH INTERNAL ROLE service")
    with pytest.raises(KalamError):
        node.login("robot", "")


def test_user_messages_email_and_recreate(node, users):
    assert node.sql("ALTER USER alice SET EMAIL 'a@x.io'")[0]["message"] == "User 'alice' updated"
    assert node.rows("SELECT email FROM system.users WHERE user_id = 'alice'") == [["a@x.io"]]
    assert node.sql("DROP USER alice")[0]["message"] == "User 'alice' dropped (soft delete)"
    assert node.rows("SELECT COUNT(*) FROM system.users WHERE user_id = 'alice' AND deleted_at IS NOT NULL") == [["1"]]
    assert node.sql("DROP USER IF EXISTS alice")[0]["message"] == "User 'alice' does not exist (skipped)"
    assert "not found" in node.error("ALTER USER ghost SET ROLE dba").message
    node.sql("CREATE USER alice WITH PASSWORD 'again' ROLE user")  # the same id comes back
    assert node.login("alice", "again").user_id == "alice"


def test_execute_as_denial_wording(node, users):
    err = node.error("EXECUTE AS USER 'ops' (SELECT 1)", who=users["svc"])
    assert err.code == "PERMISSION_DENIED"
    assert err.message == ("Statement 1 failed: Unauthorized: EXECUTE AS USER is not authorized: actor 'svc' with "
                           "role Service cannot target 'ops' with role Dba")


# ------------------------------------------------------------------------------------ namespaces, params


@pytest.mark.parametrize("name", ["sys", "root", "kalamdb", "kalam", "main", "sql", "admin", "internal",
                                  "information_schema", "pg_catalog", "datafusion", "system"])
def test_reserved_namespaces(node, name):
    assert node.error(f"CREATE NAMESPACE {name}").message.endswith(
        f"Namespace '{name}' is reserved and cannot be used")


def test_missing_namespace_guidance(node):
    err = node.error("CREATE TABLE nowhere.t (id INT PRIMARY KEY)")
    assert "Namespace 'nowhere' does not exist. Create it first with CREATE NAMESPACE nowhere" in err.message


def test_parameter_limits_as_upstream(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, s TEXT)")
    err = node.error("INSERT INTO t (id, s) VALUES ($1, 'x')", params=list(range(51)))
    assert err.message == "Statement 1 failed: Parameter count exceeded: maximum 50 parameters allowed, got 51"
    err = node.error("INSERT INTO t (id, s) VALUES ($1, $2)", params=[1, "a" * 600_000])
    assert "Parameter size exceeded: parameter at index 1 is 600000 bytes (max 524288 bytes)" in err.message
    node.sql("INSERT INTO t (id, s) VALUES ($1, $2)", params=[1, "a" * 524_288])  # the limit itself is fine


# ------------------------------------------------------------------------------------ system tables


SYSTEM_TABLES = ["users", "namespaces", "schemas", "storages", "jobs", "job_nodes", "audit_log", "manifest",
                 "live", "stats", "settings", "server_logs", "cluster", "cluster_groups", "datatypes", "tables",
                 "columns", "transactions", "sessions"]


@pytest.mark.parametrize("name", SYSTEM_TABLES)
def test_every_system_table_is_queryable_by_admins_only(node, users, name):
    # upstream smoke_test_all_system_tables_and_views_queryable
    node.sql(f"SELECT * FROM system.{name} LIMIT 5", who=users["ops"])
    for who in ("alice", "svc"):
        err = node.error(f"SELECT * FROM system.{name}", who=users[who])
        assert err.code == "PERMISSION_DENIED" and "System tables require 'dba' or 'system' role" in err.message


def test_single_node_cluster_and_information_schema(node):
    assert node.rows("SELECT node_id, role, is_leader FROM system.cluster") == [["1", "leader", True]]
    assert node.rows("SELECT COUNT(*) FROM system.cluster_groups") == [["1"]]
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, s TEXT NOT NULL)")
    rows = node.rows("SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                     "WHERE table_catalog = 'kalam' AND table_schema IN ('system', 'default') "
                     "AND table_name IN ('users', 't') ORDER BY table_name, ordinal_position")
    assert ["users", "user_id", "TEXT", "YES"] in rows
    assert [r for r in rows if r[0] == "t"] == [["t", "id", "INT", "NO"], ["t", "s", "TEXT", "NO"],
                                                 ["t", "_seq", "BIGINT", "NO"], ["t", "_deleted", "BOOLEAN", "NO"]]


def test_schemas_and_tables_views(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY) WITH (ACCESS_LEVEL = 'public'); CREATE USER TABLE u (id INT PRIMARY KEY)")
    rows = node.rows("SELECT table_id, table_type, access_level, is_latest, storage_id FROM system.schemas "
                     "ORDER BY table_id")
    assert rows == [["default:t", "shared", "public", True, "local"], ["default:u", "user", None, True, "local"]]
    assert node.rows("SELECT table_name, table_type, version FROM system.tables ORDER BY table_name") == \
        [["t", "shared", 1], ["u", "user", 1]]
    assert ["default", "t", 1, "1", "id", None, "INT", None, 1, False, True, 1] in node.rows("SELECT * FROM system.columns")


def test_audit_log_records_ddl(node, users):
    actions = [r[0] for r in node.rows("SELECT action FROM system.audit_log ORDER BY audit_id")]
    assert actions.count("CREATE_USER") == 3 and "CREATE_NAMESPACE" in actions


# ------------------------------------------------------------------------------------ _seq / _deleted


def test_seq_and_deleted_as_upstream(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    node.sql("INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b')")
    node.sql("DELETE FROM t WHERE id = 2")
    res = node.sql("SELECT * FROM t")[0]
    assert [c["name"] for c in res["schema"]] == ["id", "v", "_seq", "_deleted"]
    assert [r[0] for r in res["rows"]] == [1] and res["rows"][0][3] is False
    assert node.rows("SELECT id, _deleted FROM t WHERE _deleted = true") == [[2, True]]
    assert node.rows("SELECT id FROM t WHERE _deleted = false OR _deleted = true ORDER BY id") == [[1], [2]]
    node.sql("CREATE TABLE c (id INT PRIMARY KEY, v TEXT)")
    assert node.sql("INSERT INTO c SELECT * FROM t")[0]["row_count"] == 1  # declared columns only


# ------------------------------------------------------------------------------------ types


def test_embedding_file_and_datetime_types(node):
    node.sql("CREATE TABLE docs (id BIGINT PRIMARY KEY, e EMBEDDING(3), f FILE, at DATETIME)")
    node.sql("INSERT INTO docs (id, e, f, at) VALUES (1, '[0.5, 1, 2]', '{\"id\": \"f1\", \"name\": \"a.txt\"}', "
             "'2024-01-01T00:00:00Z')")
    res = node.sql("SELECT id, e, f, at FROM docs")[0]
    assert [c["data_type"] for c in res["schema"]] == ["BigInt", "Embedding", "File", "DateTime"]
    assert res["rows"] == [["1", [0.5, 1.0, 2.0], {"id": "f1", "name": "a.txt"}, 1_704_067_200_000_000]]
    assert "EMBEDDING(3)" in node.error("INSERT INTO docs (id, e) VALUES (2, '[1, 2]')").message
    assert "between 1 and 8192" in node.error("CREATE TABLE bad (id INT PRIMARY KEY, e EMBEDDING(0))").message
    assert node.rows("SELECT data_type FROM system.columns WHERE table_name = 'docs' AND column_name = 'e'") == \
        [["EMBEDDING(3)"]]


def test_stream_writes_refused_inside_transactions(node):
    node.sql("CREATE STREAM TABLE ev (id INT, body TEXT) WITH (TTL_SECONDS = 60)")
    err = node.error("BEGIN; INSERT INTO ev (id, body) VALUES (1, 'x'); COMMIT")
    assert "stream tables are not supported inside explicit transactions" in err.message
    assert node.rows("SELECT COUNT(*) FROM ev") == [["0"]]
    node.sql("INSERT INTO ev (id, body) VALUES (1, 'x')")  # outside a transaction it is fine


# ------------------------------------------------------------------------------------ ALTER TABLE


def test_alter_table_forms_and_messages(node):
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, a TEXT, n INT)")
    node.sql("INSERT INTO t (id, a, n) VALUES (1, 'x', 5), (2, 'y', NULL)")

    def msg(sql):
        return node.sql(sql)[0]["message"]

    assert msg("ALTER TABLE t ADD COLUMN b TEXT") == "Table default.t altered successfully: ADD COLUMN b TEXT (version 2)"
    assert msg("ALTER TABLE t MODIFY COLUMN n TEXT") == \
        "Table default.t altered successfully: MODIFY COLUMN n TEXT (version 3)"
    assert msg("ALTER TABLE t MODIFY COLUMN n TEXT") == \
        "Table default.t unchanged: MODIFY COLUMN n TEXT (version 3 - no changes needed)"
    assert node.rows("SELECT id, n FROM t ORDER BY id") == [[1, "5"], [2, None]]
    assert "does not convert" in node.error("ALTER TABLE t MODIFY COLUMN a INT").message
    assert msg("ALTER TABLE t RENAME COLUMN a TO title") == \
        "Table default.t altered successfully: RENAME COLUMN a TO title (version 4)"
    assert msg("ALTER TABLE t ALTER COLUMN title SET DEFAULT 'zz'") == \
        "Table default.t altered successfully: ALTER COLUMN title SET DEFAULT 'zz' (version 5)"
    node.sql("INSERT INTO t (id) VALUES (3)")
    assert node.rows("SELECT title FROM t WHERE id = 3") == [["zz"]]
    assert msg("ALTER TABLE t ALTER COLUMN title DROP DEFAULT").endswith("(version 6)")
    assert "contains NULL values" in node.error("ALTER TABLE t ALTER COLUMN n SET NOT NULL").message
    assert msg("ALTER TABLE t ALTER COLUMN title SET NOT NULL").endswith("SET NOT NULL (version 7)")
    assert "cannot be NULL" in node.error("INSERT INTO t (id, title) VALUES (4, NULL)").message
    assert msg("ALTER TABLE t SET ACCESS LEVEL public") == \
        "Table default.t altered successfully: SET ACCESS LEVEL Public (version 8)"
    assert msg("ALTER TABLE t SET TBLPROPERTIES (ACCESS_LEVEL = 'public')").startswith("Table default.t unchanged")
    assert node.rows("SELECT access_level, schema_version FROM system.schemas WHERE table_name = 't'") == [["public", 8]]
    assert "system column" in node.error("ALTER TABLE t RENAME COLUMN _seq TO s").message
    # a type change across SQLite storage classes rebuilds the table: rows, keys and _seq survive
    before = node.rows("SELECT id, _seq FROM t ORDER BY id")
    node.sql("ALTER TABLE t MODIFY COLUMN n BIGINT")
    assert node.rows("SELECT id, _seq FROM t ORDER BY id") == before
    assert node.rows("SELECT n FROM t WHERE id = 1") == [["5"]]
    node.sql("UPDATE t SET n = 6 WHERE id = 1")
    assert node.rows("SELECT n FROM t WHERE id = 1") == [["6"]]


def test_who_may_alter_what(node, users):
    node.sql("CREATE TABLE app.sh (id INT PRIMARY KEY); CREATE USER TABLE app.mine (id INT PRIMARY KEY); "
             "CREATE STREAM TABLE app.ev (id INT) WITH (TTL_SECONDS = 5)")
    alice, svc = users["alice"], users["svc"]
    node.sql("ALTER TABLE app.mine ADD COLUMN note TEXT", who=alice)  # a user may alter USER and STREAM tables
    node.sql("ALTER TABLE app.ev ADD COLUMN note TEXT", who=alice)
    err = node.error("ALTER TABLE app.sh ADD COLUMN note TEXT", who=alice)
    assert err.code == "PERMISSION_DENIED"
    assert err.message == "Statement 1 failed: Unauthorized: Insufficient privileges to alter table"
    node.sql("ALTER TABLE app.sh SET ACCESS LEVEL public", who=svc)
    assert node.error("ALTER TABLE app.sh SET ACCESS LEVEL private", who=alice).code == "PERMISSION_DENIED"
    assert "only be set on SHARED tables" in node.error("ALTER TABLE app.mine SET ACCESS LEVEL public").message
    assert "only supported for SHARED tables" in node.error(
        "CREATE TABLE app.x (id INT PRIMARY KEY) WITH (TYPE = 'USER', ACCESS_LEVEL = 'public')").message
    assert node.error("DROP TABLE app.sh", who=svc).code == "PERMISSION_DENIED"  # dba/system only, as upstream


def test_vector_index_is_recorded(node):
    node.sql("CREATE TABLE d (id INT PRIMARY KEY, e EMBEDDING(2), t TEXT)")
    assert node.sql("ALTER TABLE d CREATE VECTOR INDEX e USING L2")[0]["message"] == "Vector index enabled on default.d.e (L2)"
    assert "not an EMBEDDING column" in node.error("ALTER TABLE d CREATE INDEX t").message
    assert node.sql("ALTER TABLE d DROP INDEX e")[0]["message"] == "Vector index disabled on default.d.e"


# ------------------------------------------------------------------------------------ redaction


def test_non_admin_errors_are_redacted_as_upstream(node, users):
    err = node.error("SELECT * FROM secret_ns.hidden_table", who=users["alice"])
    shown = public_error(err, users["alice"])
    assert (shown.code, shown.message, shown.details) == ("SQL_EXECUTION_ERROR", "SQL statement failed", None)
    assert public_error(err, users["ops"]) is err  # admins see everything
    denied = node.error("INSERT INTO system.users (user_id) VALUES ('x')", who=users["alice"])
    assert public_error(denied, users["alice"]) is denied  # permission errors keep their message
    raw = node.error("SELECT nosuch FROM app_x", who=users["alice"])
    assert public_error(raw, users["alice"]).message == "SQL statement failed"


def test_node_local_views_cannot_feed_writes(node):
    """system.stats, system.cluster, information_schema.columns... differ between replicas: a write
    that read them would make replicas diverge, so it is refused before it reaches the log."""
    node.sql("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    for sql in ["INSERT INTO t (id, v) SELECT 1, metric_value FROM system.stats LIMIT 1",
                "UPDATE t SET v = (SELECT role FROM system.cluster LIMIT 1)",
                "DELETE FROM t WHERE v IN (SELECT column_name FROM information_schema.columns)"]:
        with pytest.raises(KalamError) as info:
            node.db.prepare(sql, None, None, ROOT)  # refused before it is proposed
        assert info.value.code == "INVALID_SQL" and "node-local" in info.value.message, sql
    node.sql("INSERT INTO t (id, v) SELECT 1, storage_id FROM system.storages")  # replicated views are fine
    assert node.rows("SELECT v FROM t") == [["local"]]
