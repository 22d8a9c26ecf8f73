"""Logins on a real 3-node cluster: failed logins counted on one node lock the account on every
node (they are replicated writes), and a password change ends tokens issued by any node."""

from __future__ import annotations

import orjson
import pytest

pytestmark = pytest.mark.cluster


def login(node, user: str, password: str):
    return node._request("POST", "/v1/api/auth/login", orjson.dumps({"user": user, "password": password}))


def test_a_lockout_and_a_password_change_hold_on_every_node(fresh_cluster):
    c = fresh_cluster
    c.execute_sql_on_leader("CREATE USER lena WITH PASSWORD 'LenaPass123!' ROLE user").raise_for_error()
    c.execute_sql_on_leader("CREATE USER mo WITH PASSWORD 'MoPass12345!' ROLE user").raise_for_error()
    c.wait_for_replication()
    a, b, d = c.nodes
    for i in range(5):
        r = login(a, "lena", f"wrong-{i}")
        assert r.http_status == 401 and r["error"] == "unauthorized"
    index = c.wait_for_replication()
    for node in (b, d):
        node.wait_applied(index, 10)
        r = login(node, "lena", "LenaPass123!")
        assert r.http_status == 401 and r["error"] == "account_locked", r

    token = login(b, "mo", "MoPass12345!")["access_token"]
    for node in c.nodes:
        with node.client() as cl:
            cl.credentials.token = token
            assert cl.sql("SELECT 1").ok
    c.execute_sql_on_leader("ALTER USER mo SET PASSWORD 'MoPass67890!'").raise_for_error()
    c.wait_for_replication()
    for node in c.nodes:
        with node.client() as cl:
            cl.credentials.token = token
            r = cl.sql("SELECT 1")
            assert r.http_status == 401, (node.node_id, r)
    assert login(d, "mo", "MoPass67890!").http_status == 200
    assert c.verify_state_digest()
