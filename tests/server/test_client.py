"""kalamdb.Client / AsyncClient behaviour against a real server process."""

from __future__ import annotations

import asyncio

import pytest

from kalamdb.client import AsyncClient, Client


def test_response_accessors(server, unique_ns):
    assert server.sql(f"CREATE NAMESPACE {unique_ns}; CREATE SHARED TABLE {unique_ns}.t (id INT PRIMARY KEY, "
                      f"name TEXT); INSERT INTO {unique_ns}.t (id, name) VALUES (1, 'a'), (2, 'b')").ok
    resp = server.sql(f"SELECT id, name FROM {unique_ns}.t ORDER BY id")
    assert resp.ok and resp.error is None and resp.http_status == 200
    assert resp.columns == ["id", "name"] and resp.row_count == 2
    assert resp.dicts() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    bad = server.sql("SELECT * FROM nowhere.t")
    assert not bad.ok and bad.error["code"] == "TABLE_NOT_FOUND" and bad.rows == []
    with pytest.raises(Exception) as info:
        bad.raise_for_error()
    assert getattr(info.value, "code", None) == "TABLE_NOT_FOUND"


def test_a_dead_connection_is_reported_not_silently_retried(fresh_server):
    client = fresh_server.client()
    try:
        assert client.sql("SELECT 1 AS one").ok
        fresh_server.restart()  # same port, the client's kept-alive socket is now dead
        with pytest.raises(OSError):
            client.sql("CREATE NAMESPACE maybe_twice")  # a write: must not be sent a second time
        assert client.sql("SELECT 1 AS one").ok  # the next call reconnects
    finally:
        client.close()


def test_async_client_login_and_concurrency(server):
    async def run():
        async with AsyncClient(server.url, user=None) as c:
            login = await c.login("root", "")
            assert login.ok and c.token
            answers = await asyncio.gather(*(c.sql("SELECT $1 AS v", [i]) for i in range(50)))
            return [a.rows[0][0] for a in answers]

    assert asyncio.run(run()) == [str(i) for i in range(50)]  # an integer parameter is a BIGINT


def test_client_rejects_a_non_http_url():
    with pytest.raises(ValueError):
        Client("ftp://127.0.0.1:21")
