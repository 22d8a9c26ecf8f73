"""Users, authentication, USER-table isolation and EXECUTE AS USER role rules."""

from __future__ import annotations

import msgpack
import pytest

from kalamdb.engine import Principal
from kalamdb.errors import KalamError

ROOT = Principal("root", "root", "system")


@pytest.fixture(scope="module")
def people_snapshot(tmp_path_factory):
    """Users cost an argon2 hash each: create them once, hand each test a restored copy."""
    from kalamdb.engine import Database

    path = tmp_path_factory.mktemp("people")
    db = Database(path / "db")
    try:
        sql = ("CREATE USER alice WITH PASSWORD 'a-pw' ROLE user EMAIL 'alice@example.com'; "
               "CREATE USER bob WITH PASSWORD 'b-pw' ROLE user; CREATE USER svc WITH PASSWORD 's-pw' ROLE service; "
               "CREATE USER ops WITH PASSWORD 'o-pw' ROLE dba; CREATE USER TABLE notes (id INT PRIMARY KEY, body TEXT)")
        outcome = db.apply(1, db.to_command(db.prepare(sql, None, None, ROOT), now_us=1_750_000_000_000_000, node_id=1))
        assert outcome.error is None
        people = {name: db.principal_for(db.authenticate(name, pw).user_id) for name, pw in
                  [("alice", "a-pw"), ("bob", "b-pw"), ("svc", "s-pw"), ("ops", "o-pw")]}
        db.snapshot_to(path / "snap")
    finally:
        db.close()
    return path / "snap", people


@pytest.fixture
def people(node, people_snapshot):
    snap, people = people_snapshot
    node.db.restore_from(snap)
    return people


def test_authenticate_and_principal_for(node, people):
    alice = people["alice"]
    assert alice.role == "user" and alice.username == "alice" and alice.user_id == "alice"  # ADR-019
    assert node.db.principal_for(alice.user_id) == alice
    with pytest.raises(KalamError) as info:
        node.login("alice", "wrong")
    assert info.value.code == "INVALID_CREDENTIALS"
    with pytest.raises(KalamError):
        node.login("nobody", "x")


def test_root_password_is_local_until_altered(make_node):
    n = make_node("r", root_password="secret")
    assert n.login("root", "secret").role == "system"
    with pytest.raises(KalamError):
        n.login("root", "")
    n.sql("ALTER USER root SET PASSWORD 'replicated'")
    assert n.login("root", "replicated").user_id == "root"
    with pytest.raises(KalamError):
        n.login("root", "secret")


def test_command_carries_hash_never_plaintext(node):
    prepared = node.db.prepare("CREATE USER carol WITH PASSWORD 'hunter2-plain' ROLE user", None, None, ROOT)
    cmd = node.db.to_command(prepared, now_us=node.tick(), node_id=1)
    assert b"hunter2-plain" not in cmd
    stmt = msgpack.unpackb(cmd)["stmts"][0]
    assert stmt["password_hash"].startswith("$argon2id$") and "password" not in stmt
    node.db.apply(node.db.applied_index + 1, cmd)
    assert node.login("carol", "hunter2-plain").username == "carol"


def test_system_users_columns_as_upstream_and_admins_only(node, people):
    res = node.sql("SELECT * FROM system.users WHERE user_id = 'alice'")[0]
    names = [c["name"] for c in res["schema"]]
    assert names == ["user_id", "password_hash", "role", "email", "auth_type", "auth_data", "storage_mode",
                     "storage_id", "failed_login_attempts", "locked_until", "last_login_at", "created_at",
                     "updated_at", "last_seen", "deleted_at"]
    row = dict(zip(names, res["rows"][0]))
    assert row["email"] == "alice@example.com" and row["auth_type"] == "password"
    assert row["password_hash"].startswith("$argon2id$")  # upstream shows the hash to admins
    for who in ("alice", "svc"):
        err = node.error("SELECT * FROM system.users", who=people[who])
        assert err.code == "PERMISSION_DENIED" and "System tables require 'dba' or 'system' role" in err.message
    assert node.rows("SELECT COUNT(*) FROM system.users", who=people["ops"]) == [["5"]]


def test_alter_and_drop_user(node, people):
    alice = people["alice"]
    node.sql("ALTER USER alice SET PASSWORD 'new-pw'", who=alice)  # a user may change their own password
    assert node.login("alice", "new-pw") == alice
    assert node.error("ALTER USER bob SET PASSWORD 'x'", who=alice).code == "PERMISSION_DENIED"
    assert node.error("ALTER USER alice SET ROLE dba", who=alice).code == "PERMISSION_DENIED"
    node.sql("ALTER USER alice SET ROLE service")
    assert node.login("alice", "new-pw").role == "service"
    node.sql("DROP USER bob")
    with pytest.raises(KalamError):
        node.login("bob", "b-pw")
    assert node.db.principal_for(people["bob"].user_id) is None
    deleted_at = node.rows("SELECT deleted_at FROM system.users WHERE user_id = 'bob'")[0][0]
    assert deleted_at == node.now_us - 1000 or deleted_at > 0  # soft delete keeps the row
    assert "not found" in node.error("DROP USER bob").message
    node.sql("DROP USER IF EXISTS bob")
    assert "cannot be dropped" in node.error("DROP USER root").message
    assert node.error("CREATE USER x WITH PASSWORD 'p'", who=people["svc"]).code == "PERMISSION_DENIED"
    assert "already exists" in node.error("CREATE USER alice WITH PASSWORD 'p'").message


def test_user_tables_isolate_rows_for_everyone_including_root(node, people):
    alice, bob = people["alice"], people["bob"]
    node.sql("INSERT INTO notes (id, body) VALUES (1, 'alice-1')", who=alice)
    node.sql("INSERT INTO notes (id, body) VALUES (1, 'bob-1')", who=bob)  # same key, other owner: fine
    node.sql("INSERT INTO notes (id, body) VALUES (1, 'root-1')")
    assert node.rows("SELECT body FROM notes", who=alice) == [["alice-1"]]
    assert node.rows("SELECT body FROM notes", who=bob) == [["bob-1"]]
    assert node.rows("SELECT body FROM notes") == [["root-1"]]
    assert node.sql("UPDATE notes SET body = 'x'", who=bob)[0]["row_count"] == 1
    assert node.sql("DELETE FROM notes", who=bob)[0]["row_count"] == 1
    assert node.rows("SELECT body FROM notes", who=alice) == [["alice-1"]]
    assert "value '1' already exists" in node.error("INSERT INTO notes (id, body) VALUES (1, 'dup')", who=alice).message
    # the owner filter also applies inside subqueries and joins
    assert node.rows("SELECT COUNT(*) FROM notes a JOIN notes b ON a.id = b.id", who=alice) == [["1"]]
    assert node.rows("SELECT body FROM notes WHERE id IN (SELECT id FROM notes)") == [["root-1"]]


@pytest.mark.parametrize("actor, target, allowed", [
    ("root", "ops", True), ("ops", "svc", True), ("ops", "alice", True), ("svc", "alice", True),
    ("svc", "ops", False), ("alice", "bob", False), ("alice", "alice", True), ("ops", "root", False),
])
def test_execute_as_user_role_rules(node, people, actor, target, allowed):
    who = ROOT if actor == "root" else people[actor]
    sql = f"EXECUTE AS USER '{target}' (INSERT INTO notes (id, body) VALUES (7, 'as'))"
    if allowed:
        res = node.sql(sql, who=who)
        assert res[0]["as_user"] == target
        reader = ROOT if target == "root" else people[target]
        assert node.rows("SELECT body FROM notes WHERE id = 7", who=reader) == [["as"]]
        assert node.rows(f"EXECUTE AS USER '{target}' (SELECT body FROM notes)", who=who) == [["as"]]
    else:
        assert node.error(sql, who=who).code == "PERMISSION_DENIED"


def test_execute_as_user_refused_on_shared_tables(node, people):
    node.sql("CREATE TABLE shared_t (id INT PRIMARY KEY)")
    err = node.error("EXECUTE AS USER 'alice' (SELECT * FROM shared_t)")
    assert "SHARED" in err.message
    # as upstream, an id that is no user here is an application user (role user) a service may act for
    assert node.rows("EXECUTE AS USER 'ghost' (SELECT * FROM notes)", who=people["svc"]) == []
    err = node.error("EXECUTE AS USER 'ops' (SELECT * FROM notes)", who=people["alice"])
    assert err.message.endswith("Unauthorized: EXECUTE AS USER is not authorized: actor 'alice' with role User "
                                "cannot target 'ops' with role Dba")


def test_shared_table_access_for_role_user(node, people):
    alice = people["alice"]
    node.sql("CREATE TABLE pub (id INT PRIMARY KEY) WITH (ACCESS_LEVEL='PUBLIC'); CREATE TABLE priv (id INT PRIMARY KEY)")
    node.sql("INSERT INTO pub (id) VALUES (1)")
    assert node.rows("SELECT id FROM pub", who=alice) == [[1]]
    assert node.error("INSERT INTO pub (id) VALUES (2)", who=alice).code == "PERMISSION_DENIED"
    assert node.error("SELECT id FROM priv", who=alice).code == "PERMISSION_DENIED"
    node.sql("INSERT INTO priv (id) VALUES (2)", who=people["svc"])
