"""Who sees what, as upstream: USER and STREAM tables per subscriber (whatever the role), SHARED
tables by access level, system tables for dba/system only; system.live and KILL LIVE QUERY."""

import asyncio

import pytest

from tests.live.helpers import ConnectionClosed, Ws, create_user, login

pytestmark = pytest.mark.asyncio


async def connect(server, user="root", password="") -> Ws:
    ws = await Ws.connect(server.url, await login(server.url, user, password))
    await ws.recv_type("auth_success")
    return ws


async def test_user_table_rows_and_changes_are_per_subscriber(server, unique_ns):
    ns = unique_ns
    assert server.sql(f"CREATE NAMESPACE {ns}").ok
    assert server.sql(f"CREATE USER TABLE {ns}.notes (id BIGINT PRIMARY KEY, body TEXT)").ok
    for u in ("a", "b"):
        create_user(server, f"{ns}_{u}")
    with server.client(f"{ns}_a", "pw-12345678") as a, server.client(f"{ns}_b", "pw-12345678") as b:
        assert a.sql(f"INSERT INTO {ns}.notes (id, body) VALUES (1, 'a1')").ok
        assert b.sql(f"INSERT INTO {ns}.notes (id, body) VALUES (1, 'b1')").ok
        wa = await connect(server, f"{ns}_a", "pw-12345678")
        wr = await connect(server)  # root: a USER table is per user for every role
        _, rows, _ = await wa.load("s", f"SELECT * FROM {ns}.notes")
        assert [r["body"] for r in rows] == ["a1"]
        _, rows, _ = await wr.load("s", f"SELECT * FROM {ns}.notes")
        assert rows == []
        assert b.sql(f"INSERT INTO {ns}.notes (id, body) VALUES (2, 'b2')").ok
        assert a.sql(f"UPDATE {ns}.notes SET body = 'a2' WHERE id = 1").ok
        msg = await wa.recv_type("change")
        assert msg["change_type"] == "update" and msg["rows"][0]["body"] == "a2"
        for ws in (wa, wr):
            with pytest.raises(TimeoutError):
                await ws.recv(timeout=0.3)
            await ws.close()


async def test_current_user_in_where(server, unique_ns):
    ns = unique_ns
    assert server.sql(f"CREATE NAMESPACE {ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {ns}.inbox (id BIGINT PRIMARY KEY, recipient TEXT) "
                      "WITH (ACCESS_LEVEL = 'PUBLIC')").ok
    create_user(server, f"{ns}_a")
    ws = await connect(server, f"{ns}_a", "pw-12345678")
    await ws.subscribe("s", f"SELECT * FROM {ns}.inbox WHERE recipient = CURRENT_USER()")
    await ws.recv_type("subscription_ack")
    assert server.sql(f"INSERT INTO {ns}.inbox (id, recipient) VALUES (1, 'someone'), (2, '{ns}_a')").ok
    msg = await ws.recv_type("change")
    assert msg["rows"][0]["id"] == "2"
    with pytest.raises(TimeoutError):
        await ws.recv(timeout=0.3)
    await ws.close()


@pytest.mark.parametrize(("level", "user_ok", "service_ok", "dba_ok"), [
    ("PUBLIC", True, True, True), ("PRIVATE", False, True, True), ("RESTRICTED", False, True, True),
    ("DBA", False, False, True)])
async def test_shared_table_by_access_level(server, unique_ns, level, user_ok, service_ok, dba_ok):
    ns = unique_ns
    assert server.sql(f"CREATE NAMESPACE {ns}").ok
    resp = server.sql(f"CREATE SHARED TABLE {ns}.s (id BIGINT PRIMARY KEY) WITH (ACCESS_LEVEL = '{level}')")
    if not resp.ok:
        pytest.skip(f"the engine does not accept ACCESS_LEVEL {level}: {resp.error}")
    for role, ok in (("user", user_ok), ("service", service_ok), ("dba", dba_ok)):
        name = f"{ns}_{role}"
        create_user(server, name, role)
        ws = await connect(server, name, "pw-12345678")
        await ws.subscribe("s", f"SELECT * FROM {ns}.s")
        msg = await ws.recv()
        if ok:
            assert msg["type"] == "subscription_ack", (role, msg)
        else:
            assert msg["code"] == "UNAUTHORIZED" and msg["message"].startswith(
                f"Permission denied: Cannot subscribe to shared table '{ns}:s': access level"), (role, msg)
        await ws.close()


async def test_system_tables_for_admins_only_and_system_live(server, unique_ns):
    create_user(server, f"{unique_ns}_u")
    ws = await connect(server, f"{unique_ns}_u", "pw-12345678")
    await ws.subscribe("s", "SELECT * FROM system.users")
    assert await ws.recv() == {"type": "error", "subscription_id": "s", "code": "UNAUTHORIZED", "message":
                               "Permission denied: Cannot subscribe to system table 'system:users': insufficient "
                               "privileges. Only DBA and system roles can subscribe to system tables."}
    await ws.close()
    root = await connect(server)
    _, rows, _ = await root.load("s", "SELECT user_id, role FROM system.users WHERE role = 'system'")
    assert {"user_id": "root", "role": "system"} in rows
    _, rows, _ = await root.load("me", "SELECT * FROM system.live")
    mine = [r for r in rows if r["subscription_id"] == "s"]
    assert mine and mine[0]["live_id"] == f"root-{mine[0]['connection_id']}-s" and mine[0]["status"] == "active"
    await root.close()


async def test_kill_live_query(server, unique_ns):
    ns = unique_ns
    assert server.sql(f"CREATE NAMESPACE {ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY) WITH (ACCESS_LEVEL = 'PUBLIC')").ok
    create_user(server, f"{ns}_u")
    ws = await connect(server, f"{ns}_u", "pw-12345678")
    await ws.subscribe("watch", f"SELECT * FROM {ns}.t")
    await ws.recv_type("subscription_ack")
    rows = server.sql(f"SELECT live_id, user_id, query, changes FROM system.live WHERE namespace_id = '{ns}'").rows
    assert len(rows) == 1
    live_id = rows[0][0]
    with server.client(f"{ns}_u", "pw-12345678") as u:
        denied = u.sql(f"KILL LIVE QUERY {live_id}")
        assert denied.error["code"] == "PERMISSION_DENIED"
    resp = server.sql(f"KILL LIVE QUERY {live_id}")
    assert resp.ok and resp.results[0]["message"] == f"Live query killed: {live_id}"
    assert server.sql(f"SELECT COUNT(*) FROM system.live WHERE namespace_id = '{ns}'").rows == [["0"]]
    missing = server.sql(f"KILL LIVE QUERY {live_id}")
    assert missing.error["code"] == "NOT_FOUND"
    assert server.sql(f"INSERT INTO {ns}.t (id) VALUES (1)").ok
    with pytest.raises(TimeoutError):  # killed: no more changes (the client is not told, as upstream)
        await ws.recv(timeout=0.3)
    alone = server.sql(f"KILL LIVE QUERY {live_id}; SELECT 1")
    assert alone.error["code"] in ("INVALID_SQL",)
    await ws.close()


async def test_token_expiring_mid_subscription(tmp_path):
    from kalamdb.testing.single import start_server

    srv = start_server(tmp_path / "data", config={"auth": {"jwt_expiry_hours": 1.5 / 3600}})
    try:
        ws = await Ws.connect(srv.url, await login(srv.url))
        await ws.recv_type("auth_success")
        assert srv.sql("CREATE NAMESPACE n").ok and srv.sql("CREATE SHARED TABLE n.t (id BIGINT PRIMARY KEY)").ok
        await ws.subscribe("s", "SELECT * FROM n.t")
        await ws.recv_type("subscription_ack")
        msg = await ws.recv(timeout=6)
        assert msg == {"type": "error", "subscription_id": "auth", "code": "TOKEN_EXPIRED",
                       "message": "Token has expired; log in again and reconnect"}
        assert await ws.closed() == (1008, "Token expired")
        await ws.close()
    finally:
        srv.kill()


async def test_dropped_table_ends_its_subscriptions(server, unique_ns):
    ns = unique_ns
    assert server.sql(f"CREATE NAMESPACE {ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY)").ok
    ws = await connect(server)
    await ws.subscribe("s", f"SELECT * FROM {ns}.t")
    await ws.recv_type("subscription_ack")
    assert server.sql(f"DROP TABLE {ns}.t").ok
    msg = await ws.recv()
    assert (msg["subscription_id"], msg["code"]) == ("s", "NOT_FOUND")
    await ws.send({"type": "ping"})
    with pytest.raises((TimeoutError, ConnectionClosed)):
        await asyncio.wait_for(ws.recv(), 0.3)
    await ws.close()
