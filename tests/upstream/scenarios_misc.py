"""Scenarios from upstream's backend/tests/misc. Those tests call the server in-process (the SQL
executor with a made-up user id, the authenticator with a hand-made JWT); here the same statements
and expectations go through the HTTP API, as the users the tests name (created first)."""

from __future__ import annotations

import base64

from replay import (
    USER_PASSWORD,
    Scenario,
    body,
    cell,
    err,
    http,
    message,
    relogin,
    row_count,
    rows,
    satisfies,
    sql,
    status,
    user,
)

MISC = "backend/tests/misc/"


def basic(user_name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user_name}:{password}".encode()).decode()}


SCENARIOS = [
    Scenario("misc_sql_error_redaction", MISC + "sql/test_sql_error_redaction.rs", [
        user("redact"),
        sql("SELECT * FROM {secret_ns}.{hidden_table}", satisfies(
            lambda a, r: not a.ok and a.error.get("message") == "SQL statement failed"
            and not a.error.get("details"), "the redacted message 'SQL statement failed' and no details", error=True),
            as_="redact"),
        sql("SELECT * FROM {secret_ns}.{hidden_table}", satisfies(
            lambda a, r: not a.ok and r.fmt("{secret_ns}") in (a.error.get("message", "") + str(a.error.get("details")))
            and r.fmt("{hidden_table}") in (a.error.get("message", "") + str(a.error.get("details"))),
            "an admin error naming the namespace and table", error=True)),
    ]),
    Scenario("misc_auth_edge_cases", MISC + "sql/test_edge_cases.rs", [
        http("POST", "/v1/api/sql", status(401), json_body={"sql": "SELECT 1"}, headers={"Authorization": "Bearer"}),
        http("POST", "/v1/api/sql", status(401), json_body={"sql": "SELECT 1"},
             headers={"Authorization": "token_without_prefix"}),
        user("deleted_user"),
        sql("SELECT 1", as_="deleted_user"),
        sql("DROP USER '{deleted_user}'"),
        sql("SELECT 1", err(), as_="deleted_user"),
        user("role_change_user"),
        sql("SELECT user_id FROM system.users", err(), as_="role_change_user"),
        sql("ALTER USER '{role_change_user}' SET ROLE dba"),
        relogin("role_change_user"),
        sql("SELECT user_id FROM system.users WHERE user_id = '{role_change_user}'", rows(1), as_="role_change_user"),
        user("max_pass_user", password="A" * 72),
        http("POST", "/v1/api/auth/login", status(200), json_body={"user": "{max_pass_user}", "password": "A" * 72}),
    ]),
    Scenario("misc_row_count_behavior", MISC + "sql/test_row_count_behavior.rs", [
        user("user1"),
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.users (id TEXT PRIMARY KEY, name TEXT, email TEXT) WITH (TYPE = 'USER', "
            "STORAGE_ID = 'local')", as_="user1"),
        sql("INSERT INTO {ns}.users (id, name, email) VALUES ('user1', 'Alice', 'alice@example.com')", as_="user1"),
        sql("INSERT INTO {ns}.users (id, name, email) VALUES ('user2', 'Bob', 'bob@example.com')", as_="user1"),
        sql("UPDATE {ns}.users SET email = 'alice.new@example.com' WHERE id = 'user1'", row_count(1),
            message("Updated 1 row(s)"), as_="user1"),
        sql("UPDATE {ns}.users SET email = 'test@example.com' WHERE id = 'user999'", row_count(0), as_="user1"),
        sql("UPDATE {ns}.users SET name = 'Alice' WHERE id = 'user1'", row_count(0), message("Updated 0 row(s)"),
            as_="user1"),
        sql("CREATE TABLE {ns}.tasks (id TEXT PRIMARY KEY, title TEXT, priority INT) WITH (TYPE = 'USER', "
            "STORAGE_ID = 'local')", as_="user1"),
        sql("INSERT INTO {ns}.tasks (id, title) VALUES ('task1', 'First task')", as_="user1"),
        sql("INSERT INTO {ns}.tasks (id, title) VALUES ('task2', 'Second task')", as_="user1"),
        sql("DELETE FROM {ns}.tasks WHERE id = 'task1'", row_count(1), message("Deleted 1 row(s)"), as_="user1"),
        sql("DELETE FROM {ns}.tasks WHERE id = 'task999'", row_count(0), as_="user1"),
        sql("SELECT COUNT(*) AS cnt FROM {ns}.tasks WHERE id = 'task1'", cell("cnt", 0), as_="user1"),
        sql("DELETE FROM {ns}.tasks WHERE id = 'task1'", row_count(0), as_="user1"),
        *[sql(f"INSERT INTO {{ns}}.tasks (id, priority) VALUES ('m{i}', {1 if i < 5 else 5})", as_="user1")
          for i in range(8)],
        sql("DELETE FROM {ns}.tasks WHERE priority = 1", row_count(5), message("Deleted 5 row(s)"), as_="user1"),
    ]),
    Scenario("misc_rbac_user_isolation", MISC + "auth/test_rbac.rs::test_user_role_own_tables_access_and_isolation", [
        user("alice"),
        user("bob"),
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.notes (id INT PRIMARY KEY, content TEXT) WITH (TYPE = 'USER')", as_="alice"),
        sql("INSERT INTO {ns}.notes (id, content) VALUES (1, 'hi')", as_="alice"),
        sql("SELECT * FROM {ns}.notes", rows(1), as_="alice"),
        sql("SELECT * FROM {ns}.notes", rows(0), as_="bob"),
    ]),
    Scenario("misc_rbac_service_reads_scoped",
             MISC + "auth/test_rbac.rs::test_service_role_user_table_reads_are_subject_scoped", [
        user("svc", role="service"),
        user("svc_alice"),
        user("svc_bob"),
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.orders (id INT PRIMARY KEY, content TEXT) WITH (TYPE = 'USER')", as_="svc_alice"),
        sql("INSERT INTO {ns}.orders (id, content) VALUES (1, 'alice note')", as_="svc_alice"),
        sql("INSERT INTO {ns}.orders (id, content) VALUES (2, 'bob note')", as_="svc_bob"),
        sql("SELECT content FROM {ns}.orders ORDER BY content", rows(0), as_="svc"),
    ]),
    Scenario("misc_rbac_service_flush", MISC + "auth/test_rbac.rs::test_service_role_flush_operations", [
        user("svc_flush", role="service"),
        user("flush_user"),
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TABLE {ns}.events (id INT PRIMARY KEY, message TEXT) WITH (TYPE = 'USER')", as_="svc_flush"),
        *[sql(f"INSERT INTO {{ns}}.events (id, message) VALUES ({i}, 'msg {i}')", as_="flush_user") for i in range(3)],
        sql("STORAGE FLUSH TABLE {ns}.events", satisfies(
            lambda a, r: "Flush started" in a.result()["message"] or "Job ID" in a.result()["message"],
            "a message saying the flush started"), as_="svc_flush"),
    ]),
    Scenario("misc_rbac_user_management", MISC + "auth/test_rbac.rs (user management tests)", [
        user("svc_admin", role="service"),
        sql("CREATE USER '{managed}' WITH PASSWORD 'StrongPass123!' ROLE user", err(), as_="svc_admin"),
        user("charlie"),
        sql("CREATE USER '{eve}' WITH PASSWORD 'x' ROLE user", err(), as_="charlie"),
        user("admin_dba", role="dba"),
        sql("CREATE USER '{svc1}' WITH PASSWORD 'StrongPass123!' ROLE service", as_="admin_dba"),
        user("sys", role="system"),
        sql("CREATE NAMESPACE {rbac_sys_ns}", as_="sys"),
        sql("CREATE USER '{zzz}' WITH PASSWORD 'StrongPass123!' ROLE user", as_="sys"),
    ]),
    Scenario("misc_e2e_auth_flow", MISC + "auth/test_e2e_auth_flow.rs::test_e2e_auth_flow", [
        user("e2e", role="dba"),
        sql("CREATE NAMESPACE {ns}", as_="e2e"),
        sql("CREATE TABLE {ns}.test_table (id BIGINT PRIMARY KEY, name TEXT)", as_="e2e"),
        sql("INSERT INTO {ns}.test_table (id, name) VALUES (1, 'Alice'), (2, 'Bob')", as_="e2e"),
        sql("SELECT * FROM {ns}.test_table", rows(2), as_="e2e"),
        sql("DROP USER '{e2e}'"),
        sql("SELECT 1", err(any_of=("Invalid credentials", "invalid token", "no longer exists")), as_="e2e"),
    ]),
    Scenario("misc_role_based_auth_e2e", MISC + "auth/test_e2e_auth_flow.rs::test_role_based_auth_e2e", [
        user("regular_user"),
        user("service_user", role="service"),
        user("dba_user", role="dba"),
        sql("CREATE NAMESPACE {regular_user}"),
        sql("CREATE NAMESPACE {service_user}"),
        sql("CREATE NAMESPACE {ns}", as_="dba_user"),
        sql("CREATE NAMESPACE {ns}", err(), as_="regular_user"),
        sql("CREATE NAMESPACE {ns}", err(), as_="service_user"),
        sql("CREATE TABLE {ns}.test_table (id BIGINT PRIMARY KEY)", as_="dba_user"),
        sql("CREATE TABLE {regular_user}.test_table (id BIGINT PRIMARY KEY) WITH (TYPE = 'USER')", as_="regular_user"),
        sql("CREATE TABLE {service_user}.test_table (id BIGINT PRIMARY KEY)", as_="service_user"),
        sql("DROP NAMESPACE {ns} CASCADE", as_="dba_user"),
    ]),
    Scenario("misc_password_change", MISC + "auth/test_e2e_auth_flow.rs::test_password_security_e2e", [
        user("pw"),
        sql("SELECT 1", as_="pw"),  # logs in: the token the last step uses again
        sql("SELECT user_id, role FROM system.users WHERE user_id = '{pw}'", cell("role", "user")),
        sql("ALTER USER '{pw}' SET PASSWORD 'NewSecurePass456!'"),
        http("POST", "/v1/api/auth/login", status(401), json_body={"user": "{pw}", "password": USER_PASSWORD}),
        http("POST", "/v1/api/auth/login", status(200), json_body={"user": "{pw}", "password": "NewSecurePass456!"}),
        sql("SELECT 1", err(), as_="pw"),  # a token issued before the password change is refused
    ]),
    Scenario("misc_topic_cleanup_job", MISC + "system/test_topic_cleanup_job.rs", [
        sql("CREATE NAMESPACE {ns}"),
        sql("CREATE TOPIC {ns}.cleanup PARTITIONS 1"),
        sql("SELECT topic_id, name FROM system.topics WHERE topic_id = '{ns}.cleanup'", rows(1)),
        sql("ACK {ns}.cleanup GROUP 'test_group' UPTO OFFSET 0"),
        sql("SELECT * FROM system.topic_offsets WHERE topic_id = '{ns}.cleanup'", rows(1)),
        sql("DROP TOPIC {ns}.cleanup", message("Dropped topic '{ns}.cleanup' and scheduled cleanup job [")),
        sql("SELECT topic_id FROM system.topics WHERE topic_id = '{ns}.cleanup'", rows(0)),
        sql("SELECT job_type, parameters FROM system.jobs WHERE job_type = 'topic_cleanup'", satisfies(
            lambda a, r: any(r.fmt("{ns}.cleanup") in str(x.get("parameters")) for x in a.rows()),
            "a topic_cleanup job naming the topic"), retry_s=10),
        sql("SELECT * FROM system.topic_offsets WHERE topic_id = '{ns}.cleanup'", rows(0), retry_s=10),
    ]),
    Scenario("misc_system_users_columns", MISC + "system/test_system_users.rs", [
        user("col_user", role="service"),
        sql("SELECT user_id, role, email, auth_type, storage_mode, failed_login_attempts, locked_until, "
            "last_login_at, created_at, updated_at, deleted_at FROM system.users WHERE user_id = '{col_user}'",
            rows(1), cell("user_id", "{col_user}"), cell("role", "service"), cell("auth_type", "password"),
            cell("failed_login_attempts", 0), cell("deleted_at", None)),
        sql("SELECT user_id FROM system.users WHERE user_id = 'root'", rows(1)),
    ]),
    Scenario("misc_auth_login_answer", "backend/crates/kalamdb-api/src/http/auth/login.rs (+ misc/auth tests)", [
        user("login_user", role="dba"),
        http("POST", "/v1/api/auth/login", status(200), body(
            lambda b: b["user"]["role"] == "dba" and b["admin_ui_access"] is True
            and b["access_token"] and b["refresh_token"] and b["expires_at"] and b["refresh_expires_at"]
            and "created_at" in b["user"] and "email" in b["user"], "upstream's login answer"),
            satisfies(lambda a, r: a.body["user"]["id"] == r.fmt("{login_user}"), "user.id = the user's name"),
            satisfies(lambda a, r: "kalamdb_auth=" in a.headers.get("set-cookie", "")
                      and "kalamdb_refresh=" in a.headers.get("set-cookie", ""), "the two auth cookies"),
            json_body={"user": "{login_user}", "password": USER_PASSWORD},
            capture={"refresh": lambda a: a.body["refresh_token"], "access": lambda a: a.body["access_token"]}),
        http("GET", "/v1/api/auth/me", status(200), body(lambda b: b["user"]["role"] == "dba", "the current user"),
             headers={"Authorization": "Bearer {access}"}),
        http("POST", "/v1/api/auth/refresh", status(200), body(lambda b: b["access_token"], "a new access token"),
             headers={"Authorization": "Bearer {refresh}"}),
        http("POST", "/v1/api/auth/refresh", status(401), body(lambda b: b["error"] == "unauthorized", "unauthorized"),
             headers={"Authorization": "Bearer {access}"}),
        http("POST", "/v1/api/auth/logout", status(200),
             body(lambda b: b["message"] == "Logged out successfully", "the logout message")),
        http("POST", "/v1/api/auth/login", status(401),
             body(lambda b: b == {"error": "unauthorized", "message": "Invalid credentials"}, "Invalid credentials"),
             json_body={"user": "{login_user}", "password": "wrong-password"}),
        http("POST", "/v1/api/auth/login", status(401),
             body(lambda b: b == {"error": "unauthorized", "message": "Invalid credentials"}, "Invalid credentials"),
             json_body={"user": "{nobody}", "password": "wrong-password"}),
        http("GET", "/v1/api/auth/status", status(200), body(lambda b: b["needs_setup"] is False, "needs_setup false")),
    ]),
    Scenario("misc_auth_setup_flow", "backend/crates/kalamdb-api/src/http/auth/setup.rs (+ misc/system tests)", [
        http("GET", "/v1/api/auth/status", status(200), body(lambda b: b["needs_setup"] is True, "needs_setup true")),
        http("POST", "/v1/api/auth/login", status(428), body(lambda b: b["error"] == "setup_required", "setup_required"),
             json_body={"user": "root", "password": ""}),
        http("POST", "/v1/api/auth/setup", status(400), body(lambda b: b["error"] == "weak_password", "weak_password"),
             json_body={"user": "admin", "password": "short", "root_password": "RootPass123!"}),
        http("POST", "/v1/api/auth/setup", status(200),
             body(lambda b: b["user"]["role"] == "dba" and b["user"]["id"] == "admin" and "access_token" not in b,
                  "the new dba user, no tokens"),
             json_body={"user": "admin", "password": "AdminPass123!", "root_password": "RootPass123!",
                        "email": "admin@example.com"}),
        http("POST", "/v1/api/auth/setup", status(409), body(lambda b: b["error"] == "already_configured", "409"),
             json_body={"user": "admin2", "password": "AdminPass123!", "root_password": "RootPass123!"}),
        http("GET", "/v1/api/auth/status", status(200), body(lambda b: b["needs_setup"] is False, "needs_setup false")),
        http("POST", "/v1/api/auth/login", status(200), json_body={"user": "admin", "password": "AdminPass123!"}),
        http("POST", "/v1/api/auth/login", status(200), json_body={"user": "root", "password": "RootPass123!"}),
    ], fresh=True, server_options={"root_password": None, "config": {
        "auth": {"allow_empty_root_on_localhost": False}, "rate_limit": {"max_auth_requests_per_ip_per_sec": 200}}}),
    Scenario("misc_auth_lockout", "backend/crates/kalamdb-auth/src/services/login_tracker.rs (5 failures, 15 min)", [
        user("locked"),
        *[http("POST", "/v1/api/auth/login", status(401), json_body={"user": "{locked}", "password": f"bad-{i}"})
          for i in range(5)],
        http("POST", "/v1/api/auth/login", status(401),
             body(lambda b: b["error"] == "account_locked", "account_locked"),
             json_body={"user": "{locked}", "password": USER_PASSWORD}),
        sql("SELECT failed_login_attempts, locked_until FROM system.users WHERE user_id = '{locked}'",
            satisfies(lambda a, r: a.rows()[0]["locked_until"] is not None, "locked_until set")),
    ], fresh=True),
    Scenario("misc_basic_auth_header", MISC + "auth/test_basic_auth.rs", [
        user("alice"),
        user("bob"),
        sql("SELECT 1", as_="alice"),
        http("POST", "/v1/api/sql", status(401), json_body={"sql": "SELECT 1"},
             headers=basic("{bob}", "WrongPassword456!")),
        http("POST", "/v1/api/sql", status(401), json_body={"sql": "SELECT 1"}, headers={"Authorization": ""}),
        *[http("POST", "/v1/api/sql", status(401), json_body={"sql": "SELECT 1"}, headers={"Authorization": h})
          for h in ("Basic", "Basic notbase64!@#", "Bearer token123", "Basic YWxpY2U=", "BasicYWxpY2U6cGFzcw==")],
    ]),
]

