"""Authentication and authorization over HTTP: tokens, Basic, roles and per-user isolation."""

from __future__ import annotations

import time

import jwt
import pytest

from kalamdb.client import Client
from kalamdb.errors import KalamError
from kalamdb.server.auth import Authenticator
from tests.server.helpers import assert_error, assert_serving, basic, post_raw, post_sql


def server_secret(server) -> str:
    return (server.data_dir / "jwt_secret").read_text().strip()


def make_token(secret: str, *, sub: str = "root", exp_offset: float = 3600, **extra) -> str:
    claims = {"iss": "kalamdb", "sub": sub, "role": "system", "token_type": "access",
              "exp": int(time.time() + exp_offset), **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture
def alice(server, unique_ns):
    """A role-`user` account with its own password; dropped afterwards."""
    name = f"alice_{unique_ns}"[:60]
    assert server.sql(f"CREATE USER {name} WITH PASSWORD 'alice-pw-1' ROLE user").ok
    yield name, "alice-pw-1"
    server.sql(f"DROP USER IF EXISTS {name}")


def test_missing_authorization(server):
    assert_error(post_sql(server, {"sql": "SELECT 1"}, auth=None), 401, "MISSING_AUTHORIZATION")
    assert_error(post_sql(server, {"sql": "SELECT 1"}, auth="Digest abc"), 401, "MISSING_AUTHORIZATION")


def test_forged_token_is_invalid(server):
    forged = make_token("not-the-server-secret-at-all-123")
    assert_error(post_sql(server, {"sql": "SELECT 1"}, auth=f"Bearer {forged}"), 401, "INVALID_TOKEN")
    assert_error(post_sql(server, {"sql": "SELECT 1"}, auth="Bearer abc.def.ghi"), 401, "INVALID_TOKEN")
    assert_serving(server)


def test_expired_token(server):
    expired = make_token(server_secret(server), exp_offset=-60)
    assert_error(post_sql(server, {"sql": "SELECT 1"}, auth=f"Bearer {expired}"), 401, "TOKEN_EXPIRED")


def test_token_for_a_user_that_does_not_exist(server):
    ghost = make_token(server_secret(server), sub="no-such-user-id")
    assert_error(post_sql(server, {"sql": "SELECT 1"}, auth=f"Bearer {ghost}"), 401, "INVALID_TOKEN")


def test_wrong_password_basic_and_login(server, alice):
    name, _ = alice
    resp = post_sql(server, {"sql": "SELECT 1"}, auth=basic(name, "wrong"))
    assert_error(resp, 401, "INVALID_CREDENTIALS")
    login = post_raw(server, "/v1/api/auth/login", b'{"user": "%s", "password": "nope"}' % name.encode())
    assert login.http_status == 401 and dict(login) == {"error": "unauthorized", "message": "Invalid credentials"}
    bad = post_raw(server, "/v1/api/auth/login", b'{"user": "x"')
    assert bad.http_status == 400 and bad["error"] == "bad_request" and "JSON" in bad["message"]


def test_login_token_carries_the_documented_claims(server, alice):
    name, password = alice
    with Client(server.url, user=None) as c:
        resp = c.login(name, password)
        assert resp.ok, resp
        claims = jwt.decode(resp["access_token"], server_secret(server), algorithms=["HS256"], issuer="kalamdb")
        assert claims["role"] == "user" and claims["token_type"] == "access"
        assert claims["sub"] == resp["user"]["id"]
        assert 23.9 * 3600 < claims["exp"] - time.time() <= 24 * 3600
        assert c.sql("SELECT 1 AS one").ok


def test_role_user_cannot_create_a_namespace(server, alice, unique_ns):
    name, password = alice
    with Client(server.url, user=name, password=password) as c:
        resp = c.sql(f"CREATE NAMESPACE {unique_ns}_by_alice")
    assert_error(resp, 403, "PERMISSION_DENIED")
    names = {row[0] for row in server.sql("SELECT name FROM system.namespaces").rows}
    assert f"{unique_ns}_by_alice" not in names


def test_users_see_only_their_own_user_table_rows(server, unique_ns):
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    assert server.sql(f"CREATE USER TABLE {unique_ns}.notes (id INT PRIMARY KEY, body TEXT)").ok
    users = [f"u1_{unique_ns}"[:60], f"u2_{unique_ns}"[:60]]
    for u in users:
        assert server.sql(f"CREATE USER {u} WITH PASSWORD 'pw-{u}' ROLE user").ok
    try:
        with Client(server.url, user=users[0], password=f"pw-{users[0]}") as one:
            assert one.sql(f"INSERT INTO {unique_ns}.notes (id, body) VALUES (1, 'secret of u1')").ok
            assert one.sql(f"SELECT body FROM {unique_ns}.notes").rows == [["secret of u1"]]
        with Client(server.url, user=users[1], password=f"pw-{users[1]}") as two:
            assert two.sql(f"SELECT * FROM {unique_ns}.notes").rows == []
            # the same primary key in another user's partition is not a conflict
            assert two.sql(f"INSERT INTO {unique_ns}.notes (id, body) VALUES (1, 'mine')").ok
            assert two.sql(f"SELECT body FROM {unique_ns}.notes").rows == [["mine"]]
        assert server.sql(f"SELECT * FROM {unique_ns}.notes").rows == []  # root too sees only its own
    finally:
        for u in users:
            server.sql(f"DROP USER IF EXISTS {u}")


def test_password_change_takes_effect_at_once_despite_the_cache(server, alice):
    name, password = alice
    with Client(server.url, user=name, password=password) as c:
        assert c.sql("SELECT 1 AS one").ok  # now cached
        assert server.sql(f"ALTER USER {name} SET PASSWORD 'alice-pw-2'").ok
        assert_error(c.sql("SELECT 1 AS one"), 401, "INVALID_CREDENTIALS")
    with Client(server.url, user=name, password="alice-pw-2") as c:
        assert c.sql("SELECT 1 AS one").ok


def test_empty_root_password_refused_from_a_remote_address():
    def must_not_verify(user, password):
        raise AssertionError("the password check must not even run")

    auth = Authenticator(verify_password=must_not_verify, principal_for=lambda uid: None,
                         jwt_secret="x" * 32)
    import asyncio

    with pytest.raises(KalamError) as info:
        asyncio.run(auth.verify_credentials("root", "", remote="192.0.2.7"))
    assert info.value.code == "INVALID_CREDENTIALS" and "localhost" in info.value.message


def test_passwords_and_tokens_never_reach_the_log(tmp_path):
    from kalamdb.testing.single import start_server

    secret = "Sup3r-Secret-Pw-9481"
    server = start_server(tmp_path / "data", log_level="debug")
    try:
        assert server.sql(f"CREATE USER logtest WITH PASSWORD '{secret}' ROLE user").ok
        with Client(server.url, user=None) as c:
            token = c.login("logtest", secret)["access_token"]
            assert c.sql("SELECT 1 AS one").ok
            assert not c.login("logtest", secret + "-wrong").ok
        with Client(server.url, user="logtest", password=secret) as c:
            assert c.sql("SELECT 1 AS one").ok
        assert not server.sql(f"CREATE USER logtest WITH PASSWORD '{secret}' ROLE nonsense").ok
        assert server.sql(f"ALTER USER logtest SET PASSWORD '{secret}2'").ok
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "login failed" in log  # the log is written at debug level...
    assert secret not in log and token not in log  # ...and still holds no secret


def test_configured_root_password_replaces_the_empty_one(tmp_path):
    from kalamdb.testing.single import start_server

    server = start_server(tmp_path / "data", root_password="r00t-pw", jwt_expiry_hours=1)
    try:
        assert_error(post_sql(server, {"sql": "SELECT 1"}), 401, "INVALID_CREDENTIALS")  # root with ""
        assert post_sql(server, {"sql": "SELECT 1 AS one"}, auth=basic("root", "r00t-pw")).ok
        with Client(server.url, user=None) as c:
            login = c.login("root", "r00t-pw")
            assert login.ok and 3500 < login["expires_in"] <= 3600  # jwt_expiry_hours from config
    finally:
        server.kill()
