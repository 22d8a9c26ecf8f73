"""Concurrent clients writing through every node at once, on the shared cluster.

Distinct keys: every acknowledged insert exists exactly once. Conflicting keys: for each key exactly
one insert wins and the others get a primary-key error; read-modify-write increments through all
nodes lose none. Every answer must be definite (success or a statement error): an indefinite one
would make the exact counts unprovable, so it fails the test with what happened.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.cluster

CLIENTS_PER_NODE = 3


def _clients(cluster):
    return [n for n in cluster.nodes for _ in range(CLIENTS_PER_NODE)]


def _run_all(cluster, work):
    nodes = _clients(cluster)
    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(work, range(len(nodes)), nodes))


def _definite(r) -> bool:
    return r.ok or (r.http_status == 400 and r.error["code"] in ("SQL_EXECUTION_ERROR", "CONSTRAINT_VIOLATION"))


def test_distinct_keys_from_every_node_all_land_exactly_once(cluster):
    ns = cluster.unique_namespace("cw")
    cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, writer INT)"
                                  ).raise_for_error()
    per_client = 40

    def work(k, node):
        with node.client() as cl:
            answers = [cl.sql(f"INSERT INTO {ns}.t (id, writer) VALUES ($1, $2)", [k * 1000 + i, k])
                       for i in range(per_client)]
        return answers

    answers = [a for part in _run_all(cluster, work) for a in part]
    assert all(a.ok for a in answers), [a for a in answers if not a.ok][:3]
    report = cluster.verify_data_consistency(f"SELECT COUNT(*), COUNT(DISTINCT writer) FROM {ns}.t")
    assert report, report
    clients = len(cluster.nodes) * CLIENTS_PER_NODE
    assert [tuple(int(x) for x in row) for row in report.rows] == [(clients * per_client, clients)], report


def test_conflicting_keys_have_one_winner_each_and_increments_are_exact(cluster):
    seed = cluster.seed
    ns = cluster.unique_namespace("cc")
    cluster.execute_sql_on_leader(f"CREATE NAMESPACE {ns}").raise_for_error()
    cluster.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.t (id BIGINT PRIMARY KEY, writer INT)"
                                  ).raise_for_error()
    cluster.execute_sql_on_leader(f"CREATE SHARED TABLE {ns}.counter (k INT PRIMARY KEY, n BIGINT)"
                                  ).raise_for_error()
    cluster.execute_sql_on_leader(f"INSERT INTO {ns}.counter (k, n) VALUES (1, 0)").raise_for_error()
    keys = list(range(30))

    def work(k, node):
        order = keys[:]
        random.Random(seed * 1000 + k).shuffle(order)  # each client races for the keys in its own order
        won, increments, odd = [], 0, []
        with node.client() as cl:
            for key in order:
                r = cl.sql(f"INSERT INTO {ns}.t (id, writer) VALUES ($1, $2)", [key, k])
                if r.ok:
                    won.append(key)
                elif not _definite(r) or "already exists" not in r.error["message"]:
                    odd.append(r)
                u = cl.sql(f"UPDATE {ns}.counter SET n = n + 1 WHERE k = 1")
                if u.ok and u.row_count == 1:
                    increments += 1
                else:
                    odd.append(u)
        return won, increments, odd

    results = _run_all(cluster, work)
    odd = [r for _, _, o in results for r in o]
    assert not odd, f"indefinite or unexpected answers (seed {seed}): {odd[:3]}"
    winners = sorted(key for won, _, _ in results for key in won)
    assert winners == keys, f"each key must be won exactly once (seed {seed}): {winners}"
    increments = sum(i for _, i, _ in results)
    assert increments == len(results) * len(keys)
    counter = cluster.verify_data_consistency(f"SELECT n FROM {ns}.counter WHERE k = 1")
    assert counter and [int(counter.rows[0][0])] == [increments], counter
    owners = cluster.verify_data_consistency(f"SELECT id, writer FROM {ns}.t ORDER BY id")
    assert owners and len(owners.rows) == len(keys), owners
    assert cluster.verify_state_digest()
