"""Login bookkeeping and first-run setup as replicated commands: lockouts are computed from the
command's clock (identical on every replica), only the server (as root) may issue them, and of two
racing setups exactly one wins."""

from __future__ import annotations

import pytest
from harness import ROOT, Node

from kalamdb.engine import Principal
from kalamdb.engine.logins import LoginEvent, ServerSetup, user_by_name
from kalamdb.engine.passwords import hash_password
from kalamdb.engine.types import Prepared
from kalamdb.errors import KalamError


def apply(node: Node, stmt, who: Principal = ROOT):
    cmd = node.db.to_command(Prepared("", [stmt], [], "default", who, True), now_us=node.tick(),
                             node_id=node.node_id)
    index = node.db.applied_index + 1
    node.log.append((index, cmd))
    return node.db.apply(index, cmd)


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "db")
    n.sql("CREATE USER dana WITH PASSWORD 'DanaPass123!' ROLE user")
    yield n
    n.close()


def test_failures_lock_at_the_threshold_from_the_commands_clock(node):
    uid = user_by_name(node.db, "dana").user_id
    for _ in range(4):
        assert apply(node, LoginEvent(uid, False, 5, 900)).error is None
    rec = user_by_name(node.db, "dana")
    assert rec.failed_login_attempts == 4 and rec.locked_until is None
    apply(node, LoginEvent(uid, False, 5, 900))
    rec = user_by_name(node.db, "dana")
    assert rec.failed_login_attempts == 5 and rec.locked_until == node.now_us + 900 * 1_000_000
    apply(node, LoginEvent(uid, True))
    rec = user_by_name(node.db, "dana")
    assert rec.failed_login_attempts == 0 and rec.locked_until is None


def test_only_the_server_writes_login_bookkeeping(node):
    alice = Principal("dana", "dana", "dba")
    out = apply(node, LoginEvent("dana", True), who=alice)
    assert out.error is not None and out.error.code == "PERMISSION_DENIED"
    with pytest.raises(KalamError):
        node.db.prepare("LOGIN_EVENT dana", None, None, ROOT)  # no SQL spelling exists


def test_of_two_racing_setups_one_wins(node):
    first = ServerSetup("admin", None, user_hash=hash_password("AdminPass123!"), root_hash=hash_password("Root1pass!"))
    second = ServerSetup("other", None, user_hash=hash_password("OtherPass123!"), root_hash=hash_password("Root2pass!"))
    assert apply(node, first).error is None
    out = apply(node, second)
    assert out.error is not None and "already been configured" in out.error.message
    assert node.login("root", "Root1pass!").role == "system"
    assert user_by_name(node.db, "other") is None
    assert node.login("admin", "AdminPass123!").role == "dba"


def test_replicas_agree_on_lockouts_and_setup(tmp_path, node):
    uid = user_by_name(node.db, "dana").user_id
    for ok in (False, False, True, False):
        apply(node, LoginEvent(uid, ok, 2, 60))
    apply(node, ServerSetup("admin", "a@x.io", user_hash=hash_password("AdminPass123!"),
                            root_hash=hash_password("Root1pass!")))
    other = Node(tmp_path / "b", node_id=2)
    try:
        for index, cmd in node.log:
            other.db.apply(index, cmd)
        assert other.db.digest_with_index() == node.db.digest_with_index()
    finally:
        other.close()
