"""The documented request/response shapes on the way that works: login, DDL, CRUD, batches."""

from __future__ import annotations

import asyncio

from kalamdb.client import AsyncClient, Client


def test_health_answers_the_documented_body(server):
    with server.client() as c:
        for path in ("/v1/api/healthcheck", "/health"):
            resp = c._request("GET", path, None, {})
            assert resp.http_status == 200
            assert resp["status"] == "healthy" and resp["api_version"] == "v1" and resp["version"]


def test_login_then_crud_with_the_token(server, unique_ns):
    with Client(server.url, user=None) as c:
        login = c.login("root", "")
        assert login.ok and login["user"]["role"] == "system", login
        assert c.sql(f"CREATE NAMESPACE {unique_ns}").ok
        created = c.sql(f"CREATE SHARED TABLE {unique_ns}.items (id BIGINT PRIMARY KEY, name TEXT, "
                        "price DOUBLE, active BOOLEAN)")
        assert created.ok, created
        assert created.results[0]["message"] == f"Shared table {unique_ns}.items created successfully"
        ins = c.sql(f"INSERT INTO {unique_ns}.items (id, name, price, active) VALUES (1, 'a', 1.5, true), "
                    "(2, 'b', 2.5, false)")
        assert ins.ok and ins.row_count == 2, ins
        assert isinstance(ins.raft_index, int) and ins.raft_index > created.raft_index

        sel = c.sql("SELECT id, name, price, active FROM items ORDER BY id", namespace_id=unique_ns)
        assert sel.ok and isinstance(sel["took"], float), sel
        assert [col["name"] for col in sel.results[0]["schema"]] == ["id", "name", "price", "active"]
        assert sel.results[0]["schema"][0]["data_type"] == "BigInt"
        assert sel.rows == [["1", "a", 1.5, True], ["2", "b", 2.5, False]]  # BIGINT as a string
        assert sel.raft_index is None  # reads carry no index

        upd = c.sql(f"UPDATE {unique_ns}.items SET price = $1 WHERE id = $2", [9.75, 2])
        assert upd.ok and upd.row_count == 1, upd
        dele = c.sql(f"DELETE FROM {unique_ns}.items WHERE id = 1")
        assert dele.ok and dele.row_count == 1, dele
        assert c.sql(f"SELECT id, price FROM {unique_ns}.items").rows == [["2", 9.75]]


def test_multi_statement_request_reports_each_result(server, unique_ns):
    resp = server.sql(f"CREATE NAMESPACE {unique_ns}; "
                      f"CREATE SHARED TABLE {unique_ns}.t (id INT PRIMARY KEY, v TEXT); "
                      f"INSERT INTO {unique_ns}.t (id, v) VALUES (1, 'x'), (2, 'y'); "
                      f"UPDATE {unique_ns}.t SET v = 'z' WHERE id = 2; "
                      f"SELECT v FROM {unique_ns}.t ORDER BY id")
    assert resp.ok, resp
    messages = [r.get("message") for r in resp.results[2:4]]
    assert messages == ["Inserted 2 row(s)", "Updated 1 row(s)"]
    assert resp.results[4]["rows"] == [["x"], ["z"]]


def test_concurrent_writes_get_distinct_indexes_and_all_land(server, unique_ns):
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    assert server.sql(f"CREATE SHARED TABLE {unique_ns}.c (id INT PRIMARY KEY)").ok

    async def run() -> list:
        async with AsyncClient(server.url) as c:
            return await asyncio.gather(*(c.sql(f"INSERT INTO {unique_ns}.c (id) VALUES ($1)", [i])
                                          for i in range(200)))

    answers = asyncio.run(run())
    assert all(a.ok for a in answers), [a for a in answers if not a.ok][:3]
    indexes = [a.raft_index for a in answers]
    assert len(set(indexes)) == 200
    assert server.sql(f"SELECT COUNT(*) FROM {unique_ns}.c").rows == [["200"]]


def test_read_with_min_applied_index_sees_the_write(server, unique_ns):
    assert server.sql(f"CREATE NAMESPACE {unique_ns}").ok
    w = server.sql(f"CREATE SHARED TABLE {unique_ns}.m (id INT PRIMARY KEY)")
    r = server.sql(f"SELECT * FROM {unique_ns}.m", min_applied_index=w.raft_index, consistency="local")
    assert r.ok and r.rows == [], r
    too_far = server.sql(f"SELECT * FROM {unique_ns}.m", min_applied_index=w.raft_index + 10**9)
    assert too_far.http_status == 400 and "min_applied_index" in too_far.error["message"]
