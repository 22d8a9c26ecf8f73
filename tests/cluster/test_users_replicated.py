"""User changes replicate, and every node's credential cache notices them."""

from __future__ import annotations

import pytest

from kalamdb.client import Client

pytestmark = pytest.mark.cluster


def test_a_password_changed_on_the_leader_stops_working_on_every_follower(make_cluster):
    c = make_cluster(3)
    leader = c.leader()
    leader.sql("CREATE USER alice WITH PASSWORD 'first-pw' ROLE user").raise_for_error()
    index = c.wait_for_replication()
    followers = [n for n in c.nodes if n is not leader]
    for f in followers:  # log in over Basic auth on each follower: the node caches the verification
        with Client(f.url, user="alice", password="first-pw") as alice:
            r = alice.sql("SELECT 1", min_applied_index=index)
            assert r.ok, r
    r = followers[0].sql("ALTER USER alice SET PASSWORD 'second-pw'").raise_for_error()  # forwarded
    c.wait_for_replication(r.raft_index)
    for f in followers:
        with Client(f.url, user="alice", password="first-pw") as old:
            denied = old.sql("SELECT 1")
            assert denied.http_status == 401 and denied.error["code"] == "INVALID_CREDENTIALS", (f, denied)
        with Client(f.url, user="alice", password="second-pw") as new:
            assert new.sql("SELECT 1").ok
