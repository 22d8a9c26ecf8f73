"""/metrics: request counts and the group-commit counters, read from a real server process."""

from __future__ import annotations

import asyncio
import http.client

from kalamdb.client import AsyncClient
from kalamdb.server.metrics import parse


def scrape(server) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain")
        return parse(resp.read().decode())
    finally:
        conn.close()


def test_concurrent_writes_share_fsyncs(server, unique_ns):
    assert server.sql(f"CREATE NAMESPACE {unique_ns}; CREATE SHARED TABLE {unique_ns}.g (id INT PRIMARY KEY)").ok
    before = scrape(server)

    async def burst():
        async with AsyncClient(server.url, connections=64) as c:
            return await asyncio.gather(*(c.sql(f"INSERT INTO {unique_ns}.g (id) VALUES ($1)", [i])
                                          for i in range(300)))

    assert all(a.ok for a in asyncio.run(burst()))
    after = scrape(server)
    commands = after["kalamdb_commit_commands_total"] - before["kalamdb_commit_commands_total"]
    batches = after["kalamdb_commit_batches_total"] - before["kalamdb_commit_batches_total"]
    assert commands == 300
    assert batches < 150, f"group commit should put several writes in one fsync: {batches} batches for 300"
    assert after["kalamdb_applied_index"] >= before["kalamdb_applied_index"] + 300
    assert after['kalamdb_sql_requests_total{code="200"}'] >= before.get('kalamdb_sql_requests_total{code="200"}',
                                                                        0) + 300


def test_errors_are_counted_by_status(server):
    before = scrape(server).get('kalamdb_sql_requests_total{code="401"}', 0)
    with server.client(user=None) as anonymous:
        assert anonymous.sql("SELECT 1").http_status == 401
    assert scrape(server)['kalamdb_sql_requests_total{code="401"}'] == before + 1
