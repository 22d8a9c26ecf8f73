"""The credential cache: fast repeats, never a stale password after users change."""

from __future__ import annotations

import time

import pytest

from kalamdb.engine import Database
from kalamdb.errors import KalamError
from kalamdb.server import auth as auth_module
from kalamdb.server.auth import Authenticator


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "data", root_password="root-pw")
    try:
        yield database
    finally:
        database.close()


class CountingCheck:
    """The real password check, counted (to see when the cache answered instead)."""

    def __init__(self, db: Database):
        self.db = db
        self.calls = 0

    def __call__(self, username: str, password: str):
        self.calls += 1
        return self.db.authenticate(username, password)


def make(db: Database, **kwargs) -> tuple[Authenticator, CountingCheck]:
    check = CountingCheck(db)
    return Authenticator(verify_password=check, principal_for=db.principal_for, jwt_secret="s" * 32,
                         **kwargs), check


async def test_repeated_basic_credentials_are_verified_once(db):
    auth, check = make(db)
    first = await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    again = await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    assert first == again and first.role == "system"
    assert check.calls == 1


async def test_wrong_passwords_are_never_cached(db):
    auth, check = make(db)
    for _ in range(3):
        with pytest.raises(KalamError) as info:
            await auth.verify_credentials("root", "nope", remote="127.0.0.1")
        assert info.value.code == "INVALID_CREDENTIALS"
    assert check.calls == 3


async def test_users_version_change_drops_the_cache(db):
    version = [0]
    auth, check = make(db, users_version=lambda: version[0])
    await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    assert check.calls == 1
    version[0] += 1  # e.g. a follower applied ALTER USER from the log
    await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    assert check.calls == 2


async def test_cached_entries_expire(db, monkeypatch):
    monkeypatch.setattr(auth_module, "CACHE_TTL_S", 0.0)
    auth, check = make(db)
    await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    await auth.verify_credentials("root", "root-pw", remote="127.0.0.1")
    assert check.calls == 2


async def test_token_round_trip_and_tampering(db):
    auth, _ = make(db)
    root = db.authenticate("root", "root-pw")
    token, expires = auth.issue_token(root)
    assert auth.verify_token(token) == root
    assert expires - time.time() == pytest.approx(24 * 3600, abs=5)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(KalamError) as info:
        auth.verify_token(tampered)
    assert info.value.code == "INVALID_TOKEN"
    expired, _ = auth.issue_token(root, now=time.time() - 25 * 3600)
    with pytest.raises(KalamError) as info:
        auth.verify_token(expired)
    assert info.value.code == "TOKEN_EXPIRED"


@pytest.mark.parametrize("header", ["Basic !!!notbase64", "Basic " + "dXNlcm5vY29sb24=", "Token abc", "Bearer "])
async def test_malformed_authorization_headers_are_clear_errors(db, header):
    auth, _ = make(db)
    with pytest.raises(KalamError) as info:
        await auth.authenticate(header, remote="127.0.0.1")
    assert info.value.status == 401
    assert info.value.code in ("INVALID_CREDENTIALS", "MISSING_AUTHORIZATION")


@pytest.mark.parametrize(("sql", "changes_users"), [
    ("CREATE USER a WITH PASSWORD 'x' ROLE user", True),
    ("ALTER /* a comment */ USER root SET PASSWORD 'y'", True),
    ("DROP USER IF EXISTS zz", True),
    ("CREATE NAMESPACE n", False),
    ("SELECT 'ALTER USER x' AS s", False),
    ("CREATE USER TABLE default.t (id INT PRIMARY KEY)", False),
])
def test_user_changes_are_recognised_on_the_parsed_statements(db, sql, changes_users):
    from kalamdb.server.sql_endpoint import touches_users

    prepared = db.prepare(sql, None, None, db.authenticate("root", "root-pw"))
    assert touches_users(prepared, sql) is changes_users


async def test_a_cached_local_empty_password_is_not_valid_from_a_remote_address(tmp_path):
    import base64

    open_db = Database(tmp_path / "open")  # root without a password
    try:
        auth, check = make(open_db)
        header = "Basic " + base64.b64encode(b"root:").decode()
        assert (await auth.authenticate(header, remote="127.0.0.1")).username == "root"
        with pytest.raises(KalamError) as info:
            await auth.authenticate(header, remote="192.0.2.7")
        assert info.value.code == "INVALID_CREDENTIALS" and "localhost" in info.value.message
        assert check.calls == 1  # refused before any password check
    finally:
        open_db.close()
