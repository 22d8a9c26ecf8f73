"""Scenarios from upstream's backend/tests/testserver (HTTP tests against a real server). Parts
that look at the server's internals (files on disk, in-process state) are left out; everything
the HTTP API shows is kept."""

from __future__ import annotations

from replay import (
    Scenario,
    cell,
    columns,
    err,
    has_row,
    http,
    message,
    min_rows,
    rows,
    satisfies,
    sql,
    status,
    user,
)

TS = "backend/tests/testserver/"


def job_id_after(marker: str):
    """Capture the job id a message names after `marker` (e.g. 'Job ID:')."""
    def get(a):
        return a.result()["message"].split(marker, 1)[1].strip().strip(".").strip("[]'\"")
    return get


SCENARIOS = [
    Scenario("ts_quickstart_workflow", TS + "sql/test_quickstart_http.rs", [
        user("u"),
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.messages (id BIGINT PRIMARY KEY, content TEXT, created_at BIGINT) "
            "WITH (TYPE='USER', STORAGE_ID='local')", as_="u"),
        *[sql(f"INSERT INTO {{ns}}.messages (id, content, created_at) VALUES ({i}, 'msg-{i}', {1000 + i})", as_="u")
          for i in range(5)],
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages", cell("cnt", 5), as_="u"),
        sql("UPDATE {ns}.messages SET content = 'updated' WHERE id = 0", as_="u"),
        sql("DELETE FROM {ns}.messages WHERE id = 1", as_="u"),
        sql("CREATE TABLE {ns}.config (name TEXT PRIMARY KEY, value TEXT) WITH (TYPE='SHARED', STORAGE_ID='local')"),
        sql("INSERT INTO {ns}.config (name, value) VALUES ('max_connections', '100')"),
        sql("SELECT value FROM {ns}.config WHERE name='max_connections'", cell("value", "100")),
        sql("CREATE TABLE {ns}.events (id BIGINT PRIMARY KEY, kind TEXT, created_at BIGINT) "
            "WITH (TYPE='USER', STORAGE_ID='local')", as_="u"),
        sql("INSERT INTO {ns}.events (id, kind, created_at) VALUES (1, 'start', 1000)", as_="u"),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.events", as_="u"),
        sql("SELECT table_name FROM system.schemas WHERE namespace_id='{ns}'", min_rows(1)),
    ]),
    Scenario("ts_namespace_validation", TS + "sql/test_namespace_validation_http.rs", [
        sql("CREATE TABLE {missing}.audit_log (id INT PRIMARY KEY, action TEXT)",
            err("{missing}", "Create it first with CREATE NAMESPACE {missing}")),
        sql("CREATE TABLE {audit}.trail (id INT PRIMARY KEY, actor TEXT)", err()),
        sql("CREATE NAMESPACE {audit}"),
        sql("CREATE TABLE {audit}.trail (id INT PRIMARY KEY, actor TEXT)"),
        user("u123"),
        sql("CREATE TABLE {workspace}.notes (id INT PRIMARY KEY, content TEXT) WITH (TYPE = 'USER')",
            err(), as_="u123"),
        sql("CREATE NAMESPACE {workspace}"),
        sql("CREATE TABLE {workspace}.notes (id INT PRIMARY KEY, content TEXT) WITH (TYPE = 'USER')", as_="u123"),
        sql("CREATE TABLE {ops}.config (setting TEXT, value TEXT) WITH (TYPE = 'SHARED')", err()),
        sql("CREATE NAMESPACE {ops}"),
        sql("CREATE TABLE {ops}.config (setting TEXT PRIMARY KEY, value TEXT) WITH (TYPE = 'SHARED')"),
        sql("CREATE TABLE {telemetry}.events (event_id TEXT, payload TEXT) WITH (TYPE = 'STREAM', TTL_SECONDS = 60)",
            err()),
        sql("CREATE NAMESPACE {telemetry}"),
        sql("CREATE TABLE {telemetry}.events (event_id TEXT, payload TEXT) WITH (TYPE = 'STREAM', TTL_SECONDS = 60)"),
    ]),
    Scenario("ts_naming_validation", TS + "sql/test_naming_validation_http.rs", [
        *[sql(f"CREATE NAMESPACE {name}", err()) for name in ("system", "sys", "root", "kalamdb")],
        *[sql(f"CREATE NAMESPACE {{validns{i}}}") for i in (1, 2, 3)],
        *[sql(f"DROP NAMESPACE {{validns{i}}}") for i in (1, 2, 3)],
        sql("CREATE NAMESPACE IF NOT EXISTS {cols}"),
        sql("CREATE TABLE {cols}.test_seq (_seq TEXT PRIMARY KEY) WITH (TYPE = 'USER')", err()),
        sql("CREATE TABLE {cols}.test_deleted (_deleted TEXT PRIMARY KEY) WITH (TYPE = 'USER')", err()),
        sql("CREATE NAMESPACE IF NOT EXISTS {valid}"),
        sql("CREATE TABLE {valid}.users (user_id TEXT PRIMARY KEY) WITH (TYPE = 'USER')"),
        sql("CREATE TABLE {valid}.profiles (firstName TEXT PRIMARY KEY) WITH (TYPE = 'USER')"),
        sql("CREATE TABLE {valid}.messages (message TEXT PRIMARY KEY, content TEXT) WITH (TYPE = 'USER')"),
        sql("INSERT INTO {valid}.messages (message, content) VALUES ('msg1', 'Hello')"),
        sql("SELECT message, content FROM {valid}.messages", rows(1)),
        sql("CREATE TABLE {valid}.products (id TEXT PRIMARY KEY, name TEXT) WITH (TYPE = 'USER')"),
        sql("DROP NAMESPACE {valid} CASCADE"),
    ]),
    Scenario("ts_mixed_batch_authorization", TS + "sql/test_mixed_batch_authorization_http.rs", [
        user("batch_user"),
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.notes (id BIGINT PRIMARY KEY, content TEXT) WITH (TYPE='USER', STORAGE_ID='local')",
            as_="batch_user"),
        sql("INSERT INTO {ns}.notes (id, content) VALUES (1, 'first'); "
            "CREATE USER '{blocked}' WITH PASSWORD 'SecurePass123!A' ROLE user; "
            "INSERT INTO {ns}.notes (id, content) VALUES (2, 'second')", err(), as_="batch_user"),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.notes", cell("cnt", 0), as_="batch_user"),
        sql("SELECT COUNT(*) AS cnt FROM system.users WHERE user_id = '{blocked}'", cell("cnt", 0)),
    ]),
    Scenario("ts_parameterized_dml", TS + "sql/test_dml_parameters_http.rs", [
        sql("CREATE NAMESPACE {ns}"),
        user("p", role="dba"),
        sql("CREATE TABLE {ns}.items (id BIGINT PRIMARY KEY, name TEXT, age INT) WITH (TYPE='SHARED', STORAGE_ID='local')"),
        sql("SELECT COUNT(*) AS cnt FROM system.schemas WHERE namespace_id = '{ns}' AND table_name = 'items'",
            cell("cnt", 1)),
        sql("INSERT INTO {ns}.items (id, name, age) VALUES ($1, $2, $3)", as_="p", params=[1, "Alice", 30]),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.items", cell("cnt", 1), as_="p"),
        sql("UPDATE {ns}.items SET name = $1, age = $2 WHERE id = $3", as_="p", params=["Alice Updated", 31, 1]),
        sql("SELECT name, age FROM {ns}.items WHERE id = 1", cell("name", "Alice Updated"), cell("age", 31), as_="p"),
        sql("DELETE FROM {ns}.items WHERE id = $1", as_="p", params=[1]),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.items", cell("cnt", 0), as_="p"),
        sql("INSERT INTO {ns}.items (id, name, age) VALUES ($1, 'x', 0)",
            err("parameter", any_of=("limit", "maximum", "exceeded")), as_="p", params=list(range(1, 52))),
        sql("INSERT INTO {ns}.items (id, name, age) VALUES ($1, $2, 0)", err(any_of=("size", "512")),
            as_="p", params=[2, "a" * 600_000]),
        sql("INSERT INTO {ns}.items (id, name, age) VALUES ($1, 'x', 0); SELECT 1", err(), as_="p", params=[123]),
    ]),
    Scenario("ts_txn_commit_and_sequential_blocks",
             TS + "sql/test_transaction_quickstart_http.rs::test_sql_transaction_commit_and_sequential_blocks", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.messages (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE='SHARED', STORAGE_ID='local')"),
        sql("BEGIN; INSERT INTO {ns}.messages (id, name) VALUES (3001, 'rest'); "
            "INSERT INTO {ns}.messages (id, name) VALUES (3002, 'rest-2'); COMMIT;"),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3001", cell("cnt", 1)),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3002", cell("cnt", 1)),
        sql("BEGIN; INSERT INTO {ns}.messages (id, name) VALUES (3010, 'kept'); COMMIT; BEGIN; "
            "INSERT INTO {ns}.messages (id, name) VALUES (3011, 'dropped'); ROLLBACK;"),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3010", cell("cnt", 1)),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3011", cell("cnt", 0)),
        sql("SELECT COUNT(*) AS cnt FROM system.transactions WHERE origin = 'SqlBatch'", cell("cnt", 0)),
    ]),
    Scenario("ts_txn_statement_failure_rolls_back",
             TS + "sql/test_transaction_quickstart_http.rs::test_sql_transaction_statement_failure_rolls_back", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.messages (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE='SHARED', STORAGE_ID='local')"),
        sql("BEGIN; INSERT INTO {ns}.messages (id, name) VALUES (3003, 'ok'); "
            "INSERT INTO {ns}.messages (id, missing_col) VALUES (3004, 'bad'); COMMIT;", err()),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3003", cell("cnt", 0)),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3004", cell("cnt", 0)),
        sql("SELECT COUNT(*) AS cnt FROM system.transactions WHERE origin = 'SqlBatch'", cell("cnt", 0)),
    ]),
    Scenario("ts_txn_unclosed_request_rolls_back",
             TS + "sql/test_transaction_quickstart_http.rs::test_sql_transaction_unclosed_request_rolls_back", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.messages (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE='SHARED', STORAGE_ID='local')"),
        sql("BEGIN; INSERT INTO {ns}.messages (id, name) VALUES (3012, 'orphaned');", err()),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.messages WHERE id = 3012", cell("cnt", 0)),
    ]),
    Scenario("ts_txn_rejects_stream_writes",
             TS + "sql/test_transaction_quickstart_http.rs::test_sql_transaction_rejects_stream_table_writes", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.typing_events (id BIGINT PRIMARY KEY, conversation_id BIGINT, event_type TEXT, "
            "created_at_ms BIGINT) WITH (TYPE='STREAM', TTL_SECONDS=3600)"),
        sql("BEGIN; INSERT INTO {ns}.typing_events (id, conversation_id, event_type, created_at_ms) "
            "VALUES (9001, 7, 'typing', 1700000000000); COMMIT;",
            err("stream tables are not supported inside explicit transactions")),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.typing_events", cell("cnt", 0)),
    ]),
    Scenario("ts_user_sql_commands", TS + "sql/test_user_sql_commands_http.rs", [
        sql("CREATE USER '{alice}' WITH PASSWORD 'SecurePass123!' ROLE developer EMAIL '{alice}@example.com'"),
        sql("SELECT * FROM system.users WHERE user_id = '{alice}'", rows(1), cell("user_id", "{alice}"),
            cell("auth_type", "password"), cell("role", "service"), cell("email", "{alice}@example.com")),
        sql("CREATE USER '{bob}' WITH OAUTH '{{\"provider\": \"google\", \"subject\": \"12345\"}}' ROLE viewer "
            "EMAIL '{bob}@example.com'"),
        sql("SELECT * FROM system.users WHERE user_id = '{bob}'", cell("user_id", "{bob}"), cell("auth_type", "oauth"),
            cell("role", "user")),
        user("regular"),
        sql("CREATE USER '{charlie}' WITH PASSWORD 'TestPass123!B' ROLE user", err(), as_="regular"),
        sql("CREATE USER '{dave}' WITH PASSWORD 'OldPass123!C' ROLE user"),
        sql("SELECT password_hash FROM system.users WHERE user_id = '{dave}'", rows(1),
            capture={"old_hash": lambda a: a.rows()[0]["password_hash"]}),
        sql("ALTER USER '{dave}' SET PASSWORD 'NewPass456!D'"),
        sql("SELECT password_hash FROM system.users WHERE user_id = '{dave}'",
            satisfies(lambda a, r: a.rows()[0]["password_hash"] != r.vars["old_hash"], "a new password hash")),
        sql("CREATE USER '{eve}' WITH PASSWORD 'Password123!E' ROLE user"),
        sql("ALTER USER '{eve}' SET ROLE dba"),
        sql("SELECT role FROM system.users WHERE user_id = '{eve}'", cell("role", "dba")),
        sql("CREATE USER '{frank}' WITH PASSWORD 'Password123!F' ROLE user"),
        sql("DROP USER '{frank}'"),
        sql("SELECT deleted_at FROM system.users WHERE user_id = '{frank}' AND deleted_at IS NOT NULL", rows(1)),
        sql("CREATE USER '{dup}' WITH PASSWORD 'Password123!G' ROLE user"),
        sql("CREATE USER '{dup}' WITH PASSWORD 'Password123!G' ROLE user", err()),
        sql("ALTER USER '{nonexistent}' SET ROLE dba", err()),
        sql("DROP USER IF EXISTS '{never_existed}'"),
    ]),
    Scenario("ts_shared_tables_lifecycle", TS + "tables/test_shared_tables_http.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.audit (id TEXT PRIMARY KEY, entry TEXT, level INT) WITH (TYPE='SHARED', "
            "STORAGE_ID='local', FLUSH_POLICY='rows:50')"),
        sql("INSERT INTO {ns}.audit (id, entry, level) VALUES ('a1','hello',1)"),
        sql("INSERT INTO {ns}.audit (id, entry, level) VALUES ('a2','world',2)"),
        sql("SELECT id FROM {ns}.audit ORDER BY id", rows(2)),
        sql("UPDATE {ns}.audit SET entry = 'updated' WHERE id = 'a1'"),
        sql("SELECT entry FROM {ns}.audit WHERE id = 'a1'", cell("entry", "updated")),
        sql("DELETE FROM {ns}.audit WHERE id = 'a2'"),
        sql("STORAGE FLUSH TABLE {ns}.audit", message("Job ID:"), capture={"job": job_id_after("Job ID:")}),
        sql("SELECT status FROM system.jobs WHERE job_id = '{job}'", cell("status", "completed"), retry_s=20),
        sql("DROP TABLE {ns}.audit"),
        sql("SELECT id FROM {ns}.audit", err()),
    ]),
    Scenario("ts_stream_tables", TS + "tables/test_stream_tables_http.rs", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.events (id INT, event_type VARCHAR, data VARCHAR) WITH (TYPE = 'STREAM', "
            "TTL_SECONDS = 3600)"),
        sql("INSERT INTO {ns}.events (id, event_type, data) VALUES (1, 'user_login', 'user_123')"),
        sql("INSERT INTO {ns}.events (id, event_type, data) VALUES (2, 'page_view', 'page_home')"),
        sql("INSERT INTO {ns}.events (id, event_type, data) VALUES (3, 'user_logout', 'user_123')"),
        sql("INSERT INTO {ns}.events (id, event_type, data) VALUES (4, 'test_event', 'test_data')"),
    ]),
    Scenario("ts_user_tables_isolation", TS + "tables/test_user_tables_http.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        user("user1"),
        user("user2"),
        sql("SELECT user_id FROM system.users WHERE user_id='{user1}'", cell("user_id", "{user1}")),
        sql("SELECT user_id FROM system.users WHERE user_id='{user2}'", cell("user_id", "{user2}")),
        sql("CREATE TABLE {ns}.notes (id TEXT PRIMARY KEY, content TEXT, priority INT) WITH (TYPE='USER', "
            "STORAGE_ID='local', FLUSH_POLICY='rows:50')", as_="user1"),
        sql("INSERT INTO {ns}.notes (id, content, priority) VALUES ('note1','User1 note',1)", as_="user1"),
        sql("INSERT INTO {ns}.notes (id, content, priority) VALUES ('note2','User2 note',2)", as_="user2"),
        sql("SELECT id, content FROM {ns}.notes", rows(1), cell("id", "note1"), as_="user1"),
        sql("SELECT id, content FROM {ns}.notes", rows(1), cell("id", "note2"), as_="user2"),
        sql("UPDATE {ns}.notes SET content = 'Updated by user1' WHERE id = 'note1'", as_="user1"),
        sql("SELECT content FROM {ns}.notes WHERE id = 'note1'", cell("content", "Updated by user1"), as_="user1"),
        sql("DELETE FROM {ns}.notes WHERE id = 'note1'", as_="user1"),
        sql("SELECT id FROM {ns}.notes", rows(0), as_="user1"),
        sql("SELECT id FROM {ns}.notes", rows(1), cell("id", "note2"), as_="user2"),
        sql("CREATE TABLE {ns}.notes_drop (id TEXT PRIMARY KEY, content TEXT) WITH (TYPE='USER', "
            "STORAGE_ID='local', FLUSH_POLICY='rows:2')", as_="user1"),
        sql("INSERT INTO {ns}.notes_drop (id, content) VALUES ('a1','hello')", as_="user1"),
        sql("INSERT INTO {ns}.notes_drop (id, content) VALUES ('b1','world')", as_="user2"),
        sql("STORAGE FLUSH TABLE {ns}.notes_drop", capture={"job": job_id_after("Job ID:")}),
        sql("SELECT status FROM system.jobs WHERE job_id = '{job}'", cell("status", "completed"), retry_s=20),
        sql("DROP TABLE {ns}.notes_drop"),
    ]),
    Scenario("ts_system_tables_queryable", TS + "system/test_system_tables_http.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        user("sys_user"),
        sql("CREATE TABLE {ns}.ut (id INT PRIMARY KEY, v TEXT) WITH (TYPE='USER', STORAGE_ID='local', "
            "FLUSH_POLICY='rows:5')", as_="sys_user"),
        sql("CREATE TABLE {ns}.st (id INT PRIMARY KEY, v TEXT) WITH (TYPE='SHARED', STORAGE_ID='local', "
            "FLUSH_POLICY='rows:5')"),
        sql("INSERT INTO {ns}.ut (id, v) VALUES (1, 'x')", as_="sys_user"),
        sql("INSERT INTO {ns}.st (id, v) VALUES (1, 'y')"),
        sql("STORAGE FLUSH TABLE {ns}.ut", capture={"job": job_id_after("Job ID:")}),
        sql("SELECT status FROM system.jobs WHERE job_id = '{job}'", cell("status", "completed"), retry_s=20),
        sql("SELECT namespace_id FROM system.namespaces WHERE namespace_id = '{ns}'", min_rows(1)),
        sql("SELECT table_name, table_type FROM system.schemas WHERE namespace_id = '{ns}' ORDER BY table_name",
            min_rows(2)),
        sql("SELECT user_id, role FROM system.users WHERE user_id = '{sys_user}'", min_rows(1)),
        sql("SELECT storage_id, storage_type FROM system.storages", has_row(storage_id="local")),
        sql("SELECT job_type, status FROM system.jobs WHERE job_type = 'flush'", min_rows(1)),
    ]),
    Scenario("ts_storage_management", TS + "storage/test_storage_management_http.rs", [
        sql("SHOW STORAGES", has_row(storage_id="local")),
        sql("CREATE STORAGE {archive} TYPE filesystem NAME 'Archive Storage' DESCRIPTION 'Cold storage for tests' "
            "PATH '/tmp/kalamdb-upstream-replay/{archive}' SHARED_TABLES_TEMPLATE 'shared/{{namespace}}/{{tableName}}' "
            "USER_TABLES_TEMPLATE 'users/{{namespace}}/{{tableName}}/{{userId}}'"),
        sql("SELECT storage_id, storage_type, storage_name FROM system.storages WHERE storage_id = '{archive}'",
            rows(1), cell("storage_type", "filesystem")),
        sql("CREATE STORAGE local TYPE filesystem NAME 'Dup' PATH '/tmp' SHARED_TABLES_TEMPLATE "
            "'shared/{{namespace}}/{{tableName}}' USER_TABLES_TEMPLATE 'user/{{namespace}}/{{tableName}}/{{userId}}'",
            err()),
        sql("CREATE STORAGE {badtpl} TYPE filesystem NAME 'Bad Templates' PATH '/tmp/kalamdb-upstream-replay/{badtpl}' "
            "SHARED_TABLES_TEMPLATE 'shared/{{namespace}}/{{tableName}}' "
            "USER_TABLES_TEMPLATE 'users/{{namespace}}/{{tableName}}'", err()),
        sql("ALTER STORAGE {archive} SET NAME 'Archive Storage Updated'"),
        sql("SELECT storage_name FROM system.storages WHERE storage_id = '{archive}'",
            cell("storage_name", "Archive Storage Updated")),
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.t (id INT PRIMARY KEY, v TEXT) WITH (TYPE='SHARED', STORAGE_ID='{archive}')"),
        sql("DROP STORAGE {archive}", err()),
        sql("DROP TABLE {ns}.t"),
        sql("DROP STORAGE {archive}"),
    ]),
    Scenario("ts_flush_table_persists_job", TS + "flush/test_flush_jobs_http.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.logs (log_id TEXT PRIMARY KEY, message TEXT) WITH (TYPE = 'USER')"),
        sql("INSERT INTO {ns}.logs (log_id, message) VALUES ('log1', 'Test message')"),
        sql("STORAGE FLUSH TABLE {ns}.logs"),
        sql("SELECT job_type, status, parameters FROM system.jobs WHERE job_type = 'flush'", min_rows(1),
            retry_s=5),
        sql("DROP NAMESPACE {ns} CASCADE"),
    ]),
    Scenario("ts_cluster_views_single_node", TS + "cluster/test_cluster_views_http.rs", [
        sql("SELECT * FROM system.cluster", min_rows(1), columns(
            "cluster_id", "node_id", "role", "status", "memory_usage_mb", "cpu_usage_percent", "uptime_seconds",
            "uptime_human")),
        sql("SELECT * FROM system.cluster_groups", min_rows(1), columns("group_id", "group_type")),
    ]),
    Scenario("ts_cluster_health_runtime_metrics", TS + "cluster/test_cluster_health_http.rs", [
        http("GET", "/v1/api/cluster/health", status(200), satisfies(
            lambda a, r: any(n.get("is_self") and n.get("memory_usage_mb") is not None
                             and n.get("cpu_usage_percent") is not None and n.get("uptime_seconds") is not None
                             and n.get("uptime_human") for n in a.body["nodes"]),
            "a self node with memory, cpu and uptime figures"), as_="root"),
    ]),
    Scenario("ts_cluster_commands", TS + "cluster/test_cluster_commands_http.rs", [
        sql("CLUSTER LIST", err()),
        sql("SELECT cluster_id, node_id FROM system.cluster"),
        sql("CLUSTER SNAPSHOT", columns("action", "group_id"), min_rows(1)),
        sql("CLUSTER REBALANCE"),
        sql("CLUSTER CLEAR", columns("snapshots_dir", "snapshots_cleared")),
        sql("CLUSTER JOIN 127.0.0.1:9001", err()),
        sql("CLUSTER LEAVE", err()),
    ], fresh=True),
]
