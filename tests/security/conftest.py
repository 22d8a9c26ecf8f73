"""Fixtures for the adversarial suite: one engine holding other users' secrets, and the probes'
oracle (nothing a hostile user receives or can read back may contain them)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "engine"))

from harness import ROOT, Node
from world import ALICE_ROWS, SECRET


@pytest.fixture
def world(tmp_path):
    node = Node(tmp_path / "db")
    node.sql("CREATE NAMESPACE chat")
    node.sql("CREATE USER TABLE chat.m (id BIGINT PRIMARY KEY, body TEXT)")
    node.sql("CREATE SHARED TABLE chat.p (id BIGINT PRIMARY KEY, body TEXT)")  # PRIVATE by default
    node.sql("CREATE SHARED TABLE chat.pub (id BIGINT PRIMARY KEY, body TEXT) WITH (ACCESS_LEVEL='PUBLIC')")
    node.sql("CREATE STREAM TABLE chat.s (id BIGINT PRIMARY KEY, body TEXT) WITH (TTL_SECONDS=3600)")
    node.sql("CREATE USER TABLE chat.mine (id BIGINT PRIMARY KEY, v TEXT)")
    node.sql(f"CREATE USER alice WITH PASSWORD '{SECRET}-pw' ROLE user")
    node.sql("CREATE USER bob WITH PASSWORD 'bob-password' ROLE user")
    alice = node.login("alice", f"{SECRET}-pw")
    bob = node.login("bob", "bob-password")
    values = ", ".join(f"({i}, '{SECRET}-{i}')" for i in range(1, ALICE_ROWS + 1))
    for table in ("chat.m", "chat.s"):
        node.sql(f"INSERT INTO {table} (id, body) VALUES {values}", who=alice)
        node.sql(f"INSERT INTO {table} (id, body) VALUES (100, 'bob own')", who=bob)
    node.sql(f"INSERT INTO chat.p (id, body) VALUES {values}", who=ROOT)
    node.sql("DELETE FROM chat.m WHERE id = 7", who=alice)  # a soft-deleted secret, too
    node.sql("INSERT INTO chat.mine (id, v) VALUES (1, 'start')", who=bob)
    node.alice, node.bob = alice, bob
    yield node
    node.close()


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "n")
    yield n
    n.close()
