"""Upstream's auth endpoints over real HTTP: the login answer and cookies, refresh/logout/me,
status/setup (428 setup_required while root has no password), lockout, throttling with
Retry-After, tokens that end with a password or role change, and no username enumeration by time."""

from __future__ import annotations

import http.client
import statistics
import time

import jwt
import orjson
import pytest

from kalamdb.testing.single import start_server
from tests.server.helpers import basic, post_raw, post_sql

AUTH = "/v1/api/auth"


def request(server, method: str, path: str, body=None, headers: dict | None = None):
    """(status, headers, JSON body) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        data = orjson.dumps(body) if body is not None else None
        conn.request(method, AUTH + path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        headers: dict[str, str] = {}
        for k, v in resp.getheaders():
            headers[k.lower()] = f"{headers[k.lower()]}\n{v}" if k.lower() in headers else v
        return resp.status, headers, orjson.loads(raw) if raw else None
    finally:
        conn.close()


def login(server, user: str, password: str):
    return request(server, "POST", "/login", {"user": user, "password": password})


@pytest.fixture
def pw_server(tmp_path):
    """A server whose root has a password (upstream's normal state), with relaxed throttling."""
    server = start_server(tmp_path / "data", root_password="RootPass123!",
                          config={"rate_limit": {"max_auth_requests_per_ip_per_sec": 1000},
                                  "auth": {"max_login_attempts_per_user_per_sec": 1000}})
    yield server
    server.kill()


def make_user(server, name: str, role: str = "user", password: str = "UserPass123!") -> None:
    r = post_sql(server, {"sql": f"CREATE USER {name} WITH PASSWORD '{password}' ROLE {role} EMAIL '{name}@x.io'"},
                 auth=basic("root", "RootPass123!"))
    assert r.ok, r


def test_login_answer_cookies_me_refresh_logout(pw_server):
    make_user(pw_server, "ann", "dba")
    status, headers, body = login(pw_server, "ann", "UserPass123!")
    assert status == 200
    assert body["user"]["role"] == "dba" and body["user"]["email"] == "ann@x.io" and body["admin_ui_access"] is True
    assert {"id", "role", "email", "created_at", "updated_at"} <= set(body["user"])
    assert body["expires_at"].endswith("+00:00") and body["refresh_expires_at"] > body["expires_at"]
    cookies = headers["set-cookie"]
    assert "kalamdb_auth=" in cookies and "kalamdb_refresh=" in cookies
    assert "HttpOnly" in cookies and "SameSite=Strict" in cookies and "Path=/" in cookies
    access, refresh = body["access_token"], body["refresh_token"]
    assert jwt.decode(refresh, options={"verify_signature": False})["token_type"] == "refresh"

    status, _, me = request(pw_server, "GET", "/me", headers={"Authorization": f"Bearer {access}"})
    assert status == 200 and me["user"]["id"] == body["user"]["id"] and me["admin_ui_access"] is True
    status, _, me = request(pw_server, "GET", "/me", headers={"Cookie": f"kalamdb_auth={access}"})
    assert status == 200 and me["user"]["role"] == "dba"

    status, _, again = request(pw_server, "POST", "/refresh", headers={"Authorization": f"Bearer {refresh}"})
    assert status == 200 and again["access_token"] and again["refresh_token"]
    status, _, again = request(pw_server, "POST", "/refresh", headers={"Cookie": f"kalamdb_refresh={refresh}"})
    assert status == 200
    status, _, err = request(pw_server, "POST", "/refresh", headers={"Authorization": f"Bearer {access}"})
    assert status == 401 and err["error"] == "unauthorized"  # an access token is no refresh token
    assert post_sql(pw_server, {"sql": "SELECT 1"}, auth=f"Bearer {refresh}").http_status == 401  # nor vice versa

    status, headers, out = request(pw_server, "POST", "/logout")
    assert status == 200 and out == {"message": "Logged out successfully"}
    assert "kalamdb_auth=" in headers["set-cookie"] and "1970" in headers["set-cookie"]
    status, _, err = request(pw_server, "GET", "/me")
    assert status == 401 and err["error"] == "unauthorized"


def test_tokens_issued_before_a_password_or_role_change_are_refused(pw_server):
    make_user(pw_server, "bea")
    _, _, first = login(pw_server, "bea", "UserPass123!")
    bearer = {"Authorization": f"Bearer {first['access_token']}"}
    assert post_sql(pw_server, {"sql": "SELECT 1"}, auth=bearer["Authorization"]).ok
    assert post_sql(pw_server, {"sql": "ALTER USER bea SET PASSWORD 'NewPass456!'"},
                    auth=basic("root", "RootPass123!")).ok
    r = post_sql(pw_server, {"sql": "SELECT 1"}, auth=bearer["Authorization"])
    assert r.http_status == 401 and "password or role changed" in r.error["message"]
    status, _, _ = request(pw_server, "POST", "/refresh", headers={"Authorization": f"Bearer {first['refresh_token']}"})
    assert status == 401
    status, _, second = login(pw_server, "bea", "NewPass456!")
    assert status == 200
    assert post_sql(pw_server, {"sql": "ALTER USER bea SET ROLE service"}, auth=basic("root", "RootPass123!")).ok
    status, _, _ = request(pw_server, "GET", "/me", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert status == 401
    status, _, third = login(pw_server, "bea", "NewPass456!")
    assert status == 200 and third["user"]["role"] == "service"


def test_five_failures_lock_the_account_for_every_node_reader(pw_server):
    make_user(pw_server, "cid")
    for i in range(5):
        status, _, err = login(pw_server, "cid", f"wrong-{i}")
        assert status == 401 and err == {"error": "unauthorized", "message": "Invalid credentials"}
    status, _, err = login(pw_server, "cid", "UserPass123!")  # even the right password, while locked
    assert status == 401 and err["error"] == "account_locked" and "15 minute(s)" in err["message"]
    r = post_sql(pw_server, {"sql": "SELECT 1"}, auth=basic("cid", "UserPass123!"))
    assert r.http_status == 401 and r.error["code"] == "ACCOUNT_LOCKED"
    # a name that is no user locks the same way: a lockout tells nothing about which names exist
    for i in range(5):
        assert login(pw_server, "nobody-at-all", f"x{i}")[0] == 401
    assert login(pw_server, "nobody-at-all", "x")[2]["error"] == "account_locked"


def test_a_success_after_failures_resets_the_count(pw_server):
    make_user(pw_server, "dee")
    for _ in range(4):
        assert login(pw_server, "dee", "nope")[0] == 401
    assert login(pw_server, "dee", "UserPass123!")[0] == 200
    for _ in range(4):  # counting starts again: four more failures do not lock
        assert login(pw_server, "dee", "nope")[0] == 401
    assert login(pw_server, "dee", "UserPass123!")[0] == 200


@pytest.mark.parametrize("per_ip,per_user", [(1000, 1), (1, 1000)])
def test_throttling_per_address_and_per_user_answers_429_with_retry_after(tmp_path, per_ip, per_user):
    server = start_server(tmp_path / "data", root_password="RootPass123!",
                          config={"rate_limit": {"max_auth_requests_per_ip_per_sec": per_ip},
                                  "auth": {"max_login_attempts_per_user_per_sec": per_user}})
    try:
        assert login(server, "eve", "x")[0] == 401
        status, headers, err = login(server, "eve" if per_user == 1 else "fred", "x")  # within the second
        assert status == 429 and err["error"] == "rate_limited" and int(headers["retry-after"]) >= 1
        if per_user == 1:
            assert login(server, "gina", "x")[0] == 401  # another user is not held back
        else:
            r = post_sql(server, {"sql": "SELECT 1"}, auth=basic("hal", "x"))  # Basic credentials count too
            assert r.http_status == 429 and r.error["code"] == "RATE_LIMIT_EXCEEDED"
    finally:
        server.kill()


def test_setup_flow_while_root_has_no_password(tmp_path):
    server = start_server(tmp_path / "data", config={"auth": {"allow_empty_root_on_localhost": False}})
    try:
        assert request(server, "GET", "/status")[2]["needs_setup"] is True
        status, _, err = login(server, "root", "")
        assert status == 428 and err["error"] == "setup_required"
        r = post_sql(server, {"sql": "SELECT 1"})  # root:"" over Basic
        assert r.http_status == 428 and r.error["code"] == "SETUP_REQUIRED"
        body = {"user": "admin", "password": "AdminPass123!", "root_password": "RootPass123!", "email": "a@x.io"}
        status, _, err = request(server, "POST", "/setup", {**body, "root_password": "short"})
        assert status == 400 and err["error"] == "weak_password" and err["message"].startswith("Root password")
        status, _, err = request(server, "POST", "/setup", {**body, "user": "root"})
        assert status == 400 and err["error"] == "invalid_user"
        status, _, err = request(server, "POST", "/setup", {**body, "extra": 1})
        assert status == 400
        status, _, out = request(server, "POST", "/setup", body)
        assert status == 200 and out["user"]["role"] == "dba" and out["user"]["email"] == "a@x.io"
        assert "access_token" not in out and "admin" in out["message"]
        status, _, err = request(server, "POST", "/setup", {**body, "user": "admin2"})
        assert status == 409 and err["error"] == "already_configured"
        assert request(server, "GET", "/status")[2]["needs_setup"] is False
        assert login(server, "admin", "AdminPass123!")[0] == 200
        assert login(server, "root", "RootPass123!")[0] == 200
        assert login(server, "root", "")[0] == 401
    finally:
        server.kill()


def test_make_runs_flag_keeps_empty_root_on_localhost(tmp_path):
    server = start_server(tmp_path / "data", config={"auth": {"allow_empty_root_on_localhost": True}})
    try:
        status, _, body = login(server, "root", "")
        assert status == 200 and body["user"]["role"] == "system"
        assert request(server, "GET", "/status")[2]["needs_setup"] is True  # root still has no password
    finally:
        server.kill()


def test_unknown_users_fail_as_slowly_as_real_ones(tmp_path):
    """Median time of a failed login for a real user and for a name that is no user, interleaved:
    without the dummy argon2 check the unknown name answers ~40x faster."""
    server = start_server(tmp_path / "data", root_password="RootPass123!",
                          config={"rate_limit": {"max_auth_requests_per_ip_per_sec": 10_000},
                                  "auth": {"max_login_attempts_per_user_per_sec": 10_000, "max_failed_logins": 10_000}})
    try:
        make_user(server, "gus")
        real, unknown = [], []
        for i in range(15):
            for name, out in (("gus", real), (f"ghost{i}", unknown)):
                t0 = time.perf_counter()
                assert login(server, name, "wrong-password")[0] == 401
                out.append(time.perf_counter() - t0)
        ratio = statistics.median(unknown) / statistics.median(real)
        print(f"failed login median: real user {statistics.median(real) * 1000:.1f} ms, "
              f"unknown {statistics.median(unknown) * 1000:.1f} ms, ratio {ratio:.2f}")
        assert 0.5 < ratio < 2.0
    finally:
        server.kill()


def test_login_body_limits(pw_server):
    assert login(pw_server, "u" * 129, "x")[0] == 400
    assert login(pw_server, "u", "p" * 257)[0] == 400
    assert request(pw_server, "POST", "/login", {"user": "u", "password": "p", "other": 1})[0] == 400
    raw = post_raw(pw_server, AUTH + "/login", b"[1]")
    assert raw.http_status == 400
