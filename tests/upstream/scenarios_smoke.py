"""Scenarios from upstream's cli/tests/smoke (the CLI and the kalam-client SDK against a running
server). Assertions on the CLI's printed tables become assertions on the JSON answer; the SDK's
topic consumer becomes the HTTP calls it makes (POST /v1/api/topics/consume, then /ack on commit)."""

from __future__ import annotations

import base64
import json

from replay import (
    Scenario,
    cell,
    columns,
    err,
    has_row,
    http,
    no_row,
    rows,
    satisfies,
    sql,
    status,
    user,
)

SMOKE = "cli/tests/smoke/"
TOPICS = SMOKE + "topics/smoke_test_topic_consumption.rs::"


def topic_messages(a) -> list[dict]:
    """The consume answer's messages, each with its payload decoded (base64, then JSON)."""
    out = []
    for m in a.body["messages"]:
        m = dict(m)
        m["data"] = json.loads(base64.b64decode(m["payload"]))
        out.append(m)
    return out


def payload_row_ok(p: dict) -> bool:
    return p["author"] == "user" and p["msg"].startswith("Write a short") and bool(p["id"]) and "created" in p


def as_int(v):
    return int(v) if isinstance(v, str) else v


def consume(topic: str, group: str, *checks, start="Earliest", limit: int = 100, as_: str = "root",
            capture: dict | None = None, retry_s: float = 10.0):
    """One poll of upstream's TopicConsumer (no auto-ack); retried until the checks hold, as the
    upstream tests poll until enough records arrived."""
    return http("POST", "/v1/api/topics/consume", status(200), *checks, as_=as_, capture=capture, retry_s=retry_s,
                json_body={"topic_id": topic, "group_id": group, "start": start, "limit": limit, "partition_id": 0})


def ack(topic: str, group: str, upto: int, *checks):
    return http("POST", "/v1/api/topics/ack", status(200), *checks, as_="root",
                json_body={"topic_id": topic, "group_id": group, "partition_id": 0, "upto_offset": upto})


def count_messages(n: int):
    return satisfies(lambda a, r: len(a.body["messages"]) >= n, f"at least {n} topic message(s)")


def topic_with_sources(topic: str, table: str, ops: list[str]) -> list:
    steps = [sql(f"CREATE TOPIC {topic}")]
    steps += [sql(f"ALTER TOPIC {topic} ADD SOURCE {table} ON {op}") for op in ops]
    n = len(ops)
    steps.append(sql(f"SELECT routes FROM system.topics WHERE topic_id = '{topic}'", satisfies(
        lambda a, r: len(json.loads(a.rows()[0]["routes"])) >= n, f"{n} route(s)")))
    return steps


def alter_table(name: str, test: str, body: list) -> Scenario:
    return Scenario(name, SMOKE + "ddl/smoke_test_ddl_alter.rs::" + test, [sql("CREATE NAMESPACE {ns}"), *body])


SCENARIOS = [
    Scenario("smoke_system_tables_and_user_lifecycle", SMOKE + "system/smoke_test_system_and_users.rs", [
        *[sql(q) for q in ("SELECT * FROM system.jobs LIMIT 1", "SELECT * FROM system.users LIMIT 1",
                           "SELECT * FROM system.live LIMIT 1", "SELECT * FROM system.schemas LIMIT 1",
                           "SELECT * FROM system.namespaces LIMIT 1")],
        sql("CREATE USER {smoke_user} WITH PASSWORD 'S1mpleP@ss!' ROLE 'user'"),
        sql("SELECT user_id FROM system.users WHERE user_id='{smoke_user}'", has_row(user_id="{smoke_user}")),
        sql("DROP USER '{smoke_user}'"),
        sql("SELECT * FROM system.users WHERE user_id='{smoke_user}'", satisfies(
            lambda a, r: not a.rows() or a.rows()[0].get("deleted_at") is not None, "the user removed or deleted")),
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.flush_table (id INT PRIMARY KEY, value VARCHAR) WITH (TYPE = 'USER', "
            "FLUSH_POLICY = 'rows:100')"),
        sql("INSERT INTO {ns}.flush_table (id, value) VALUES (1, 'test')"),
        sql("STORAGE FLUSH ALL IN {ns}", satisfies(lambda a, r: "Job IDs" in a.result()["message"], "job ids"),
            capture={"job": lambda a: a.result()["message"].split("[", 1)[1].split("]", 1)[0].split(",")[0]
                     .strip().strip("'\"")}),
        sql("SELECT job_id FROM system.jobs WHERE job_id='{job}'", rows(1)),
        sql("DROP NAMESPACE {ns} CASCADE"),
    ]),
    Scenario("smoke_user_table_rls_isolation", SMOKE + "tables/smoke_test_user_table_rls.rs", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.rls (id BIGINT AUTO_INCREMENT PRIMARY KEY, content TEXT NOT NULL, "
            "updated INT DEFAULT 0, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP) "
            "WITH (TYPE='USER', FLUSH_POLICY='rows:10')"),
        *[sql(f"INSERT INTO {{ns}}.rls (content) VALUES ('root_row_{i}')") for i in (1, 2, 3)],
        sql("CREATE USER {smoke_user} WITH PASSWORD 'smoke_pass_123' ROLE 'user'"),
        http("POST", "/v1/api/auth/login", status(200), json_body={"user": "{smoke_user}", "password": "smoke_pass_123"},
             capture={"tok": lambda a: a.body["access_token"]}),
        *[http("POST", "/v1/api/sql", status(200), json_body={"sql": f"INSERT INTO {{ns}}.rls (content) VALUES ('user_row_{c}')"},
               headers={"Authorization": "Bearer {tok}"}) for c in "abc"],
        http("POST", "/v1/api/sql", status(200), headers={"Authorization": "Bearer {tok}"},
             json_body={"sql": "SELECT id, content FROM {ns}.rls WHERE content IN ('user_row_b','user_row_c') "
                        "ORDER BY content"},
             capture={"b": lambda a: a.rows()[0]["id"], "c": lambda a: a.rows()[1]["id"]}),
        http("POST", "/v1/api/sql", status(200), headers={"Authorization": "Bearer {tok}"},
             json_body={"sql": "UPDATE {ns}.rls SET updated = 1 WHERE id = {b}"}),
        http("POST", "/v1/api/sql", status(200), headers={"Authorization": "Bearer {tok}"},
             json_body={"sql": "DELETE FROM {ns}.rls WHERE id = {c}"}),
        http("POST", "/v1/api/sql", status(200), has_row(content="user_row_b", updated=1),
             has_row(content="user_row_a"), no_row(content="user_row_c"),
             *[no_row(content=f"root_row_{i}") for i in (1, 2, 3)],
             headers={"Authorization": "Bearer {tok}"},
             json_body={"sql": "SELECT id, content, updated FROM {ns}.rls ORDER BY id"}),
    ]),
    alter_table("smoke_alter_add_column", "smoke_test_alter_table_add_column", [
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT NOT NULL) "
            "WITH (TYPE = 'USER', FLUSH_POLICY = 'rows:1000')"),
        sql("INSERT INTO {ns}.t (name) VALUES ('Alice')"),
        sql("ALTER TABLE {ns}.t ADD COLUMN age INT"),
        sql("SELECT name, age FROM {ns}.t", columns("age"), has_row(name="Alice")),
        sql("ALTER TABLE {ns}.t ADD COLUMN status TEXT DEFAULT 'active'"),
        sql("INSERT INTO {ns}.t (name, age) VALUES ('Bob', 30)"),
        sql("SELECT name, status FROM {ns}.t WHERE name = 'Bob'", cell("status", "active")),
    ]),
    alter_table("smoke_alter_drop_column", "smoke_test_alter_table_drop_column", [
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT NOT NULL, email TEXT, "
            "age INT) WITH (TYPE = 'USER', FLUSH_POLICY = 'rows:1000')"),
        sql("INSERT INTO {ns}.t (name, email, age) VALUES ('Alice', 'alice@example.com', 25)"),
        sql("ALTER TABLE {ns}.t DROP COLUMN email"),
        sql("SELECT * FROM {ns}.t", columns("age"), has_row(name="Alice"),
            satisfies(lambda a, r: "email" not in [c["name"] for c in a.result()["schema"]], "no email column")),
    ]),
    alter_table("smoke_alter_modify_column", "smoke_test_alter_table_modify_column", [
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), content TEXT) "
            "WITH (TYPE = 'USER', FLUSH_POLICY = 'rows:1000')"),
        sql("INSERT INTO {ns}.t (content) VALUES ('Test data')"),
        sql("ALTER TABLE {ns}.t MODIFY COLUMN content TEXT NOT NULL"),
        sql("INSERT INTO {ns}.t (content) VALUES (NULL)", err()),
    ]),
    alter_table("smoke_alter_shared_access_level", "smoke_test_alter_shared_table_access_level", [
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), data TEXT) "
            "WITH (TYPE = 'SHARED', ACCESS_LEVEL = 'PUBLIC', FLUSH_POLICY = 'rows:1000')"),
        sql("ALTER TABLE {ns}.t SET TBLPROPERTIES (ACCESS_LEVEL = 'RESTRICTED')"),
        sql("SELECT options FROM system.schemas WHERE namespace_id = '{ns}' AND table_name = 't'",
            satisfies(lambda a, r: "restricted" in json.dumps(a.rows()).lower(), "ACCESS_LEVEL RESTRICTED")),
    ]),
    alter_table("smoke_alter_add_not_null_needs_default", "smoke_test_alter_add_not_null_without_default_error", [
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT NOT NULL) "
            "WITH (TYPE = 'USER', FLUSH_POLICY = 'rows:1000')"),
        sql("INSERT INTO {ns}.t (name) VALUES ('Alice')"),
        sql("ALTER TABLE {ns}.t ADD COLUMN required_field TEXT NOT NULL",
            err(any_of=("not null", "default", "required"))),
    ]),
    alter_table("smoke_alter_system_columns", "smoke_test_alter_system_columns_error", [
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT NOT NULL) "
            "WITH (TYPE = 'USER', FLUSH_POLICY = 'rows:1000')"),
        sql("ALTER TABLE {ns}.t DROP COLUMN _updated", err()),
        sql("ALTER TABLE {ns}.t DROP COLUMN _deleted", err()),
        sql("INSERT INTO {ns}.t (name) VALUES ('still works')"),
        sql("SELECT name, _seq, _deleted FROM {ns}.t", rows(1), cell("_deleted", False)),
    ]),
    Scenario("smoke_security_system_tables_blocked", SMOKE + "security/smoke_test_security_access.rs::"
             "smoke_security_system_tables_blocked_in_batch", [
        sql("CREATE USER {u} WITH PASSWORD 'smoke_pass_123' ROLE 'user'"),
        http("POST", "/v1/api/auth/login", status(200), json_body={"user": "{u}", "password": "smoke_pass_123"},
             capture={"tok": lambda a: a.body["access_token"]}),
        *[http("POST", "/v1/api/sql", err(), json_body={"sql": q}, headers={"Authorization": "Bearer {tok}"}) for q in (
            "SELECT 1; SELECT * FROM system.users",
            "SELECT 1; SELECT * FROM system.schemas",
            "SELECT 1; SELECT * FROM (SELECT * FROM system.users) AS u",
            ("SELECT 1; SELECT u.user_id FROM system.users u JOIN (SELECT user_id FROM system.users) s "
             "ON u.user_id = s.user_id"),
            "SELECT 1; SELECT * FROM system.users WHERE user_id IN (SELECT user_id FROM system.users)",
            "WITH u AS (SELECT * FROM system.users) SELECT * FROM u",
            "SELECT 1; EXPLAIN SELECT * FROM system.users",
            "SELECT (SELECT user_id FROM system.users LIMIT 1) AS usr FROM system.users",
            "SELECT (SELECT COUNT(*) FROM system.users) AS cnt",
            "SELECT * FROM system.users WHERE user_id = (SELECT user_id FROM system.users LIMIT 1)",
            "SELECT 1 UNION SELECT user_id FROM system.users",
            "SELECT 1 EXCEPT SELECT user_id FROM system.users",
            "SELECT 1 INTERSECT SELECT user_id FROM system.users")],
    ]),
    Scenario("smoke_security_private_shared_blocked", SMOKE + "security/smoke_test_security_access.rs::"
             "smoke_security_private_shared_table_blocked_in_batch", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.p (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE='SHARED', ACCESS_LEVEL='PRIVATE')"),
        sql("INSERT INTO {ns}.p (id, name) VALUES (1, 'secret')"),
        user("regular"),
        sql("SELECT * FROM {ns}.p; INSERT INTO {ns}.p (id, name) VALUES (2, 'x'); UPDATE {ns}.p SET name = 'y' "
            "WHERE id = 1; DELETE FROM {ns}.p WHERE id = 1;",
            err(any_of=("unauthorized", "not authorized", "permission", "privilege", "access denied")), as_="regular"),
        sql("SELECT * FROM {ns}.p", err(any_of=("unauthorized", "permission", "privilege", "access denied")),
            as_="regular"),
        sql("INSERT INTO {ns}.p (id, name) VALUES (3, 'x')",
            err(any_of=("unauthorized", "permission", "privilege", "access denied")), as_="regular"),
        sql("DELETE FROM {ns}.p WHERE id = 1", err(any_of=("unauthorized", "permission", "privilege", "access denied")),
            as_="regular"),
        sql("SELECT name FROM {ns}.p", rows(1), cell("name", "secret")),
    ]),
    Scenario("smoke_as_user_disallowed_roles", SMOKE + "impersonating/smoke_test_as_user_authorization.rs", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.t (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE='USER')"),
        user("regular"), user("target"), user("svc", role="service"), user("dba", role="dba"),
        *[sql(f"EXECUTE AS USER '{{{target}}}' (INSERT INTO {{ns}}.t (id, name) VALUES ({i}, 'x')); SELECT 1;",
              err(any_of=("unauthorized", "not authorized", "permission", "not allowed", "privilege", "access denied")),
              as_=actor)
          for i, (actor, target) in enumerate([("regular", "target"), ("regular", "svc"), ("regular", "dba"),
                                               ("regular", "root"), ("svc", "dba"), ("svc", "root"),
                                               ("dba", "root")], 1)],
        sql("SELECT COUNT(*) AS cnt FROM {ns}.t", cell("cnt", 0)),
    ]),
    Scenario("smoke_drop_table_cleanup_job", SMOKE + "system/smoke_test_cleanup_job.rs", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.t (id INT PRIMARY KEY, value TEXT) WITH (TYPE = 'SHARED')"),
        sql("INSERT INTO {ns}.t (id, value) VALUES (1, 'cleanup')"),
        sql("DROP TABLE IF EXISTS {ns}.t", satisfies(lambda a, r: "Cleanup job: " in a.result()["message"],
                                                     "a cleanup job id"),
            capture={"job": lambda a: a.result()["message"].split("Cleanup job: ")[1].split()[0].rstrip(".,;")}),
        sql("SELECT status FROM system.jobs WHERE job_id = '{job}'", cell("status", "completed"), retry_s=20),
        sql("SELECT table_name FROM system.schemas WHERE namespace_id = '{ns}' AND table_name = 't'", rows(0)),
    ]),
    Scenario("smoke_system_schemas_options", SMOKE + "system/smoke_test_system_tables_extended.rs::"
             "smoke_test_system_tables_options_column", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.user_tbl (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT NOT NULL) "
            "WITH (TYPE = 'USER', STORAGE_ID = 'local', FLUSH_POLICY = 'rows:1000')"),
        sql("CREATE TABLE {ns}.shared_tbl (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), config_key TEXT NOT NULL, "
            "config_value TEXT) WITH (TYPE = 'SHARED', STORAGE_ID = 'local', FLUSH_POLICY = 'rows:100', "
            "ACCESS_LEVEL = 'PUBLIC')"),
        sql("CREATE TABLE {ns}.stream_tbl (event_id TEXT PRIMARY KEY DEFAULT ULID(), event_type TEXT, payload TEXT) "
            "WITH (TYPE = 'STREAM', TTL_SECONDS = 30)"),
        sql("SELECT table_name, table_type, options FROM system.schemas WHERE namespace_id = '{ns}' "
            "ORDER BY table_name", rows(3), columns("table_type", "options"), satisfies(
                lambda a, r: all(k in json.dumps(a.rows()).upper() for k in
                                 ("STORAGE_ID", "FLUSH_POLICY", "TTL_SECONDS", "ACCESS_LEVEL")),
                "STORAGE_ID, FLUSH_POLICY, TTL_SECONDS and ACCESS_LEVEL in the options")),
    ]),
    Scenario("smoke_system_stats", SMOKE + "system/smoke_test_system_tables_extended.rs::"
             "smoke_test_system_stats_meta_command", [
        sql("SELECT metric_name, metric_value FROM system.stats ORDER BY metric_name LIMIT 5000",
            *[has_row(metric_name=k) for k in ("schema_cache_size", "schema_registry_size", "total_users",
                                               "total_tables", "server_version", "server_workers_effective",
                                               "max_connections")]),
    ]),
    Scenario("smoke_shared_table_crud", SMOKE + "tables/smoke_test_shared_table_crud.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.crud (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR NOT NULL, status VARCHAR, "
            "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP) WITH (TYPE = 'SHARED', FLUSH_POLICY = 'rows:10')"),
        sql("INSERT INTO {ns}.crud (name, status) VALUES ('alpha', 'new')"),
        sql("INSERT INTO {ns}.crud (name, status) VALUES ('beta', 'new')"),
        sql("SELECT * FROM {ns}.crud", has_row(name="alpha"), has_row(name="beta")),
        sql("SELECT id, name FROM {ns}.crud WHERE name IN ('alpha','beta') ORDER BY name",
            capture={"alpha": lambda a: a.rows()[0]["id"], "beta": lambda a: a.rows()[1]["id"]}),
        sql("DELETE FROM {ns}.crud WHERE id = {alpha}"),
        sql("UPDATE {ns}.crud SET status='done' WHERE id = {beta}"),
        sql("SELECT * FROM {ns}.crud", rows(1), has_row(name="beta", status="done")),
        sql("DROP TABLE {ns}.crud"),
        sql("SELECT * FROM {ns}.crud", err(any_of=("not found", "does not exist", "unknown table"))),
    ]),
    Scenario("smoke_insert_returning_seq", SMOKE + "dml/smoke_test_insert_returning.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.r (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT, value INT, title TEXT) "
            "WITH (TYPE='SHARED', ACCESS_LEVEL='PUBLIC')"),
        sql("INSERT INTO {ns}.r (name, value) VALUES ('test_item', 42)"),
        sql("SELECT _seq FROM {ns}.r WHERE name = 'test_item'", columns("_seq"), rows(1)),
        sql("INSERT INTO {ns}.r (name) VALUES ('row1'), ('row2'), ('row3')"),
        sql("SELECT _seq FROM {ns}.r WHERE name IN ('row1', 'row2', 'row3') ORDER BY id", columns("_seq"), rows(3)),
        sql("INSERT INTO {ns}.r (title) VALUES ('hello_world')"),
        sql("SELECT * FROM {ns}.r WHERE title = 'hello_world'", columns("_seq", "_deleted"), rows(1)),
    ]),
    Scenario("smoke_int64_precision", SMOKE + "usecases/smoke_test_int64_precision.rs", [
        sql("CREATE NAMESPACE IF NOT EXISTS {ns}"),
        sql("CREATE TABLE {ns}.p (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), big_value BIGINT, small_value INT, "
            "content TEXT) WITH (TYPE = 'USER')"),
        sql("INSERT INTO {ns}.p (big_value, content) VALUES (9007199254740993, 'test_precision')"),
        sql("SELECT _seq, big_value, content FROM {ns}.p WHERE content = 'test_precision'", satisfies(
            lambda a, r: isinstance(a.rows()[0]["_seq"], str) and int(a.rows()[0]["_seq"]) > 9007199254740991
            and a.rows()[0]["big_value"] == "9007199254740993", "_seq and big_value as exact strings")),
        sql("INSERT INTO {ns}.p (small_value, content) VALUES (42, 'small_test')"),
        sql("SELECT small_value, content FROM {ns}.p WHERE content = 'small_test'", cell("small_value", 42)),
    ]),
    # ------------------------------------------------------------------------------------ topics
    Scenario("smoke_topic_consume_insert_events", TOPICS + "test_topic_consume_insert_events", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.events (id INT PRIMARY KEY, name TEXT, value DOUBLE)"),
        *topic_with_sources("{ns}.events", "{ns}.events", ["INSERT"]),
        *[sql(f"INSERT INTO {{ns}}.events (id, name, value) VALUES ({i}, 'test{i}', {i * 1.5})") for i in (1, 2, 3)],
        consume("{ns}.events", "test-insert-group", count_messages(3), satisfies(
            lambda a, r: sorted((as_int(m["data"]["id"]), m["data"]["name"], float(m["data"]["value"]))
                                for m in topic_messages(a)) == [(i, f"test{i}", i * 1.5) for i in (1, 2, 3)],
            "the three inserted rows as payloads"), limit=10),
        ack("{ns}.events", "test-insert-group", 2, satisfies(
            lambda a, r: a.body == {"success": True, "acknowledged_offset": 2}, "acknowledged_offset 2")),
        sql("DROP TOPIC {ns}.events"),
        sql("DROP TABLE {ns}.events"),
        sql("DROP NAMESPACE {ns}"),
    ]),
    Scenario("smoke_topic_consume_update_events", TOPICS + "test_topic_consume_update_events", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.updates (id INT PRIMARY KEY, status TEXT, counter INT)"),
        *topic_with_sources("{ns}.updates", "{ns}.updates", ["INSERT", "UPDATE"]),
        sql("INSERT INTO {ns}.updates (id, status, counter) VALUES (1, 'pending', 0)"),
        sql("UPDATE {ns}.updates SET status = 'active', counter = 1 WHERE id = 1"),
        sql("UPDATE {ns}.updates SET status = 'active', counter = 2 WHERE id = 1"),
        consume("{ns}.updates", "test-update-group", count_messages(3), satisfies(
            lambda a, r: [(m["op"], m["data"]["status"], as_int(m["data"]["counter"])) for m in topic_messages(a)]
            == [("Insert", "pending", 0), ("Update", "active", 1), ("Update", "active", 2)],
            "1 insert and 2 updates with the new values")),
        ack("{ns}.updates", "test-update-group", 2),
    ]),
    Scenario("smoke_topic_consume_delete_events", TOPICS + "test_topic_consume_delete_events", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.deletes (id INT PRIMARY KEY, name TEXT)"),
        *topic_with_sources("{ns}.deletes", "{ns}.deletes", ["INSERT", "DELETE"]),
        *[sql(f"INSERT INTO {{ns}}.deletes (id, name) VALUES ({i}, 'record{i}')") for i in (1, 2, 3)],
        sql("DELETE FROM {ns}.deletes WHERE id = 2"),
        consume("{ns}.deletes", "test-delete-group", count_messages(4), satisfies(
            lambda a, r: any(m["op"] == "Delete" and as_int(m["data"]["id"]) == 2 and m["data"]["name"] == "record2"
                             and m["data"]["_deleted"] is True for m in topic_messages(a)),
            "a delete event with the old row and _deleted true"), limit=50),
    ]),
    Scenario("smoke_topic_consume_mixed_operations", TOPICS + "test_topic_consume_mixed_operations", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.mixed (id INT PRIMARY KEY, data TEXT, version INT)"),
        *topic_with_sources("{ns}.mixed", "{ns}.mixed", ["INSERT", "UPDATE", "DELETE"]),
        sql("INSERT INTO {ns}.mixed (id, data, version) VALUES (1, 'initial', 1)"),
        sql("UPDATE {ns}.mixed SET data = 'updated', version = 2 WHERE id = 1"),
        sql("INSERT INTO {ns}.mixed (id, data, version) VALUES (2, 'second', 1)"),
        sql("DELETE FROM {ns}.mixed WHERE id = 1"),
        consume("{ns}.mixed", "test-mixed-group", count_messages(4), satisfies(
            lambda a, r: [m["op"] for m in topic_messages(a)] == ["Insert", "Update", "Insert", "Delete"],
            "2 inserts, 1 update, 1 delete in order")),
    ]),
    Scenario("smoke_topic_consume_offset_persistence", TOPICS + "test_topic_consume_offset_persistence", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.offsets (id INT PRIMARY KEY, data TEXT)"),
        *topic_with_sources("{ns}.offsets", "{ns}.offsets", ["INSERT"]),
        *[sql(f"INSERT INTO {{ns}}.offsets (id, data) VALUES ({i}, 'batch1-{i}')") for i in (1, 2)],
        consume("{ns}.offsets", "{group}", count_messages(2), satisfies(
            lambda a, r: len(a.body["messages"]) == 2, "exactly 2 messages")),
        ack("{ns}.offsets", "{group}", 1),
        *[sql(f"INSERT INTO {{ns}}.offsets (id, data) VALUES ({i}, 'batch2-{i}')") for i in (3, 4)],
        consume("{ns}.offsets", "{group}", count_messages(2), satisfies(
            lambda a, r: sorted(as_int(m["data"]["id"]) for m in topic_messages(a)) == [3, 4], "only batch 2")),
        sql("SELECT last_acked_offset FROM system.topic_offsets WHERE topic_id = '{ns}.offsets' AND "
            "group_id = '{group}'", cell("last_acked_offset", 1)),
    ]),
    Scenario("smoke_topic_consume_from_earliest", TOPICS + "test_topic_consume_from_earliest", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.earliest (id INT PRIMARY KEY, msg TEXT)"),
        *topic_with_sources("{ns}.earliest", "{ns}.earliest", ["INSERT"]),
        *[sql(f"INSERT INTO {{ns}}.earliest (id, msg) VALUES ({i}, 'msg{i}')") for i in (1, 2, 3, 4)],
        consume("{ns}.earliest", "{group}", count_messages(4), satisfies(
            lambda a, r: [m["offset"] for m in a.body["messages"]] == [0, 1, 2, 3], "offsets 0..3"), limit=20),
    ]),
    Scenario("smoke_topic_consume_from_latest", TOPICS + "test_topic_consume_from_latest", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.latest (id INT PRIMARY KEY, msg TEXT)"),
        *topic_with_sources("{ns}.latest", "{ns}.latest", ["INSERT"]),
        *[sql(f"INSERT INTO {{ns}}.latest (id, msg) VALUES ({i}, 'old{i}')") for i in (1, 2)],
        consume("{ns}.latest", "{group}", satisfies(lambda a, r: a.body["messages"] == [], "no old messages"),
                start="Latest", retry_s=0, capture={"next": lambda a: a.body["next_offset"]}),
        *[sql(f"INSERT INTO {{ns}}.latest (id, msg) VALUES ({i}, 'new{i}')") for i in (3, 4)],
        http("POST", "/v1/api/topics/consume", status(200), satisfies(
            lambda a, r: [m["data"]["msg"] for m in topic_messages(a)] == ["new3", "new4"], "only the new messages"),
            as_="root", retry_s=10, json_body={"topic_id": "{ns}.latest", "group_id": "{group}",
                                               "start": {"Offset": "{next}"}, "limit": 100, "partition_id": 0}),
    ]),
    Scenario("smoke_topic_sql_consume_getting_started", TOPICS + "test_topic_sql_consume_docs_getting_started_flow", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE USER TABLE {ns}.messages (id TEXT PRIMARY KEY DEFAULT ULID(), author TEXT NOT NULL, "
            "msg TEXT NOT NULL, attachment FILE, created TIMESTAMP NOT NULL DEFAULT NOW())"),
        sql("CREATE TOPIC {ns}.message_events PARTITIONS 1", satisfies(
            lambda a, r: a.result()["message"] == r.fmt("Created topic '{ns}.message_events' with 1 partition(s)"),
            "upstream's CREATE TOPIC message")),
        sql("ALTER TOPIC {ns}.message_events ADD SOURCE {ns}.messages ON INSERT WITH (payload = 'full')"),
        sql("INSERT INTO {ns}.messages (author, msg) VALUES ('user', 'Write a short summary of this support ticket.')"),
        sql("CONSUME FROM {ns}.message_events FROM EARLIEST LIMIT 1", rows(1), cell("topic_id", "{ns}.message_events"),
            cell("op", "insert"), satisfies(
                lambda a, r: payload_row_ok(json.loads(bytes(a.rows()[0]["payload"]))),
                "the payload (a byte array) with the row")),
    ]),
    Scenario("smoke_topic_impersonated_cdc", TOPICS + "test_topic_http_consume_preserves_impersonated_user_and_payloads", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE USER TABLE {ns}.msgs (id INT PRIMARY KEY, body TEXT, status TEXT, version INT)"),
        user("svc", role="service"), user("alice"), user("bob"),
        *topic_with_sources("{ns}.cdc", "{ns}.msgs", ["INSERT", "UPDATE", "DELETE"]),
        sql("EXECUTE AS USER '{alice}' (INSERT INTO {ns}.msgs (id, body, status, version) VALUES "
            "(1, 'alice message v1', 'draft', 1))", as_="svc"),
        sql("EXECUTE AS USER '{alice}' (UPDATE {ns}.msgs SET body = 'alice message v2', status = 'sent', "
            "version = 2 WHERE id = 1)", as_="svc"),
        sql("EXECUTE AS USER '{bob}' (INSERT INTO {ns}.msgs (id, body, status, version) VALUES "
            "(2, 'bob message v1', 'queued', 1))", as_="svc"),
        sql("EXECUTE AS USER '{bob}' (DELETE FROM {ns}.msgs WHERE id = 2)", as_="svc"),
        consume("{ns}.cdc", "{group}", count_messages(4), satisfies(
            lambda a, r: [(m["offset"], m["user"], m["op"], as_int(m["data"]["id"]), m["data"]["body"],
                           m["data"]["status"], as_int(m["data"]["version"]), m["data"]["_deleted"])
                          for m in topic_messages(a)] == [
                (0, r.fmt("{alice}"), "Insert", 1, "alice message v1", "draft", 1, False),
                (1, r.fmt("{alice}"), "Update", 1, "alice message v2", "sent", 2, False),
                (2, r.fmt("{bob}"), "Insert", 2, "bob message v1", "queued", 1, False),
                (3, r.fmt("{bob}"), "Delete", 2, "bob message v1", "queued", 1, True)],
            "four CDC messages with the impersonated users")),
    ]),
    Scenario("smoke_topic_multi_user_publishers", TOPICS +
             "test_topic_http_consume_direct_multi_user_publishers_no_missing_changes", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE USER TABLE {ns}.messages (id INT PRIMARY KEY, body TEXT, version INT)"),
        user("ua"), user("ub"), user("uc"),
        *topic_with_sources("{ns}.multi", "{ns}.messages", ["INSERT", "UPDATE", "DELETE"]),
        *[s for u, i in (("ua", 101), ("ub", 202), ("uc", 303)) for s in (
            sql(f"INSERT INTO {{ns}}.messages (id, body, version) VALUES ({i}, 'user-{u[1]}-v1', 1)", as_=u),
            sql(f"UPDATE {{ns}}.messages SET body = 'user-{u[1]}-v2', version = 2 WHERE id = {i}", as_=u),
            sql(f"DELETE FROM {{ns}}.messages WHERE id = {i}", as_=u))],
        consume("{ns}.multi", "{group}", count_messages(9), satisfies(
            lambda a, r: [m["offset"] for m in a.body["messages"]] == list(range(9)) and {
                (m["user"], m["op"], as_int(m["data"]["id"]), m["data"]["body"], m["data"]["_deleted"])
                for m in topic_messages(a)} == {
                (r.fmt("{" + u + "}"), op, i, f"user-{u[1]}-v{v}", op == "Delete")
                for u, i in (("ua", 101), ("ub", 202), ("uc", 303))
                for op, v in (("Insert", 1), ("Update", 2), ("Delete", 2))},
            "nine changes, offsets 0..8, every user's insert, update and delete")),
    ]),
    Scenario("smoke_topic_sql_consume_group_and_ack", "cli/tests/smoke/topics (SQL CONSUME ... GROUP, ACK)", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.items (id INT PRIMARY KEY, name TEXT)"),
        *topic_with_sources("{ns}.items_topic", "{ns}.items", ["INSERT"]),
        *[sql(f"INSERT INTO {{ns}}.items (id, name) VALUES ({i}, 'n{i}')") for i in range(5)],
        sql("CONSUME FROM {ns}.items_topic GROUP 'g1' FROM EARLIEST LIMIT 2", rows(2),
            satisfies(lambda a, r: [x["offset"] for x in a.rows()] in ([0, 1], ["0", "1"]), "offsets 0, 1")),
        sql("CONSUME FROM {ns}.items_topic GROUP 'g1' FROM EARLIEST LIMIT 2", rows(2),
            satisfies(lambda a, r: [int(x["offset"]) for x in a.rows()] == [2, 3], "offsets 2, 3 (auto-acked)")),
        sql("ACK {ns}.items_topic GROUP 'g1' UPTO OFFSET 4", cell("committed_offset", 4)),
        sql("CONSUME FROM {ns}.items_topic GROUP 'g1' FROM EARLIEST", rows(0)),
        sql("CONSUME FROM {ns}.items_topic FROM 3 LIMIT 10", rows(2)),
        user("plain"),
        sql("CONSUME FROM {ns}.items_topic FROM EARLIEST", err(), as_="plain"),
        http("POST", "/v1/api/topics/consume", status(403), satisfies(lambda a, r: a.body["code"] == "FORBIDDEN", "403"),
             as_="plain", json_body={"topic_id": "{ns}.items_topic", "group_id": "g"}),
        http("POST", "/v1/api/topics/consume", status(404), satisfies(lambda a, r: a.body["code"] == "NOT_FOUND", "404"),
             as_="root", json_body={"topic_id": "{ns}.nope", "group_id": "g"}),
    ]),
]


