"""Fail-stop (node/driver.py): a node whose Raft can no longer be trusted stops loudly instead of
lingering as a zombie that answers health checks but no longer runs Raft. A dead Raft loop ends the
process with STORAGE_FAILURE_EXIT_CODE and the reason in its log; with
KALAMDB_ON_STORAGE_FAILURE=refuse the node stays up, says why in its health, and refuses every
write. The rest of the cluster goes on. (A Raft safety violation takes the same path:
tests/raft/test_driver.py; it cannot be provoked from the wire, where the core refuses it first.)"""

from __future__ import annotations

import time

import pytest
from workload import Writers, assert_converged_and_nothing_lost, make_table

from kalamdb.testing.faults import STORAGE_FAILURE_EXIT_CODE

pytestmark = pytest.mark.cluster


def test_a_raft_loop_that_dies_stops_the_node_and_the_majority_goes_on(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "deadloop")
    follower = next(n.index for n in c.nodes if n is not c.leader())
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(10, timeout=10)
        c.failpoints.set(follower, {"raft.ready": "1*eio"})  # stands for any bug that kills the loop
        assert c.processes.wait_for_exit(follower, timeout=15) == STORAGE_FAILURE_EXIT_CODE
        assert "failpoint raft.ready" in c.get_node(follower).log_tail(5)
        w.wait_for_acks(20, timeout=10)
        assert c.processes.restart_crashed() == {follower: STORAGE_FAILURE_EXIT_CODE}
        w.wait_for_acks(10, timeout=10)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)


def test_refuse_mode_keeps_the_node_up_with_the_reason_in_its_health(faulty):
    c = faulty(3, extra_env={"KALAMDB_ON_STORAGE_FAILURE": "refuse"})
    ns = make_table(c, "refuse")
    follower = next(n for n in c.nodes if n is not c.leader())
    c.failpoints.set(follower.index, {"raft.ready": "1*eio"})
    c.execute_sql_on_leader(f"INSERT INTO {ns}.t (id, v) VALUES (1, 'wakes the loop')").raise_for_error()
    deadline = time.monotonic() + 10
    while (h := follower.health())["status"] != "unhealthy":  # bounded poll: health has no push
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
    assert "failpoint raft.ready" in h["fatal"], h
    r = follower.sql(f"INSERT INTO {ns}.t (id, v) VALUES (2, 'refused')")
    assert r.http_status == 503 and "failpoint raft.ready" in r.error["message"], r
    assert c.execute_sql_on_leader(f"INSERT INTO {ns}.t (id, v) VALUES (3, 'majority')").ok
