"""/metrics: request counts and the group-commit counters, read from a real server process."""

from __future__ import annotations

import asyncio

from kalamdb.client import AsyncClient
from tests.server.helpers import scrape


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


def test_a_repeated_statement_is_prepared_inline_and_a_new_one_on_a_worker(server, unique_ns):
    """server/fast_path.py: a text prepared cheaply once skips the worker hand-off after that;
    texts never seen (here: literals that differ each time) always go to the workers."""
    assert server.sql(f"CREATE NAMESPACE {unique_ns}; CREATE SHARED TABLE {unique_ns}.f (id INT PRIMARY KEY)").ok
    before = scrape(server)
    for i in range(20):
        assert server.sql(f"INSERT INTO {unique_ns}.f (id) VALUES ($1)", [i]).ok
    mid = scrape(server)
    assert mid["kalamdb_sql_prepared_inline_total"] - before["kalamdb_sql_prepared_inline_total"] >= 18
    for i in range(20, 30):
        assert server.sql(f"SELECT id FROM {unique_ns}.f WHERE id = {i} AND 'x{i}' = 'x{i}'").ok
    after = scrape(server)
    assert after["kalamdb_sql_prepared_on_workers_total"] - mid["kalamdb_sql_prepared_on_workers_total"] == 10
