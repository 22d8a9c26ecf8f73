"""Disk faults through failpoints on real clusters: EIO on a follower's fsync, ENOSPC on the
leader, slow fsync on the leader; the admin call that sets them.

After a failed fsync or append a node exits with STORAGE_FAILURE_EXIT_CODE (docs/faults.md): it
never acknowledged the write it could not make durable, and after a restart it recovers from disk
while the others fill in what it missed."""

from __future__ import annotations

import statistics
import time

import pytest
from workload import Writers, assert_converged_and_nothing_lost, make_table

from kalamdb.testing.faults import CRASH_EXIT_CODE, STORAGE_FAILURE_EXIT_CODE

pytestmark = pytest.mark.cluster


def test_eio_on_a_follower_fsync_stops_it_and_the_majority_goes_on(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "eio")
    follower = next(n.index for n in c.nodes if n is not c.leader())
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(10, timeout=10)
        c.failpoints.set(follower, {"log.fsync": "1*eio"})
        assert c.processes.wait_for_exit(follower, timeout=15) == STORAGE_FAILURE_EXIT_CODE
        assert "storage failure" in c.get_node(follower).log_tail(5)
        w.wait_for_acks(20, timeout=10)  # two of three are a majority
        assert c.processes.restart_crashed() == {follower: STORAGE_FAILURE_EXIT_CODE}
        w.wait_for_acks(10, timeout=10)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)


def test_enospc_on_the_leader_stops_it_and_a_new_leader_takes_over(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "nospc")
    lead = c.leader().index
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(10, timeout=10)
        c.failpoints.set(lead, {"log.append": "enospc"})
        assert c.processes.wait_for_exit(lead, timeout=15) == STORAGE_FAILURE_EXIT_CODE
        w.avoid = {c.get_node(lead)}
        new = c.leader(timeout=10, among=[n for n in c.nodes if n.index != lead])
        assert new.index != lead
        w.wait_for_acks(20, timeout=10)
        c.processes.restart_crashed()  # the failpoint was set at run time: the restarted node has a good disk
        w.avoid = set()
        w.wait_for_acks(10, timeout=10)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)


def test_slow_fsync_on_the_leader_slows_writes_but_loses_nothing(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "slow")
    lead = c.leader()

    def p50(n: int) -> float:
        times = []
        for i in range(n):
            t0 = time.monotonic()
            lead.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, 's')", [p50.next + i]).raise_for_error()
            times.append(time.monotonic() - t0)
        p50.next += n
        return statistics.median(times)

    p50.next = 1
    before = p50(15)
    c.failpoints.set(lead.index, {"log.fsync": "delay(40)"})
    assert c.failpoints.get(lead.index) == {"log.fsync": "delay(40)"}
    slow = p50(15)
    c.failpoints.set(lead.index, {"log.fsync": "off"})
    print(f"write p50 {before * 1000:.1f} ms -> {slow * 1000:.1f} ms with a 40 ms fsync on the leader")
    assert slow >= 0.040 > before or slow > before + 0.030
    assert_converged_and_nothing_lost(c, ns, set(range(1, p50.next)), set(range(1, p50.next)))


def test_failpoints_at_start_and_admin_call_refuses_bad_input(faulty):
    c = faulty(3)
    # a bad action is refused by the kit before any node is touched, and by the node itself
    with pytest.raises(ValueError):
        c.failpoints.set(0, {"log.fsync": "explode"})
    with c.get_node(0).client() as cl:
        r = cl._request("POST", "/v1/api/admin/failpoints", b'{"failpoints": {"log.fsync": "9*nope"}}',
                        cl._creds.header())
        assert not r.ok and r.error["code"] == "INVALID_INPUT"
        r = cl._request("POST", "/v1/api/admin/failpoints", b'{"failpoints": {"log.fsync": "eio"}}', {})
        assert not r.ok, "failpoints changed without credentials"
    assert c.failpoints.get(0) == {}
    # at start, from the environment
    c.processes.failpoints_at_start(2, "state.apply=delay(1)")
    c.processes.restart(2, kill=True)
    assert c.failpoints.get(2) == {"state.apply": "delay(1)"}


def test_apply_failure_and_crash_after_fsync_lose_nothing(faulty, seed):
    """state.apply EIO on a follower (exit 87), then the leader crashing just after an fsync (exit 86,
    before it could answer): both restart from disk and nothing acknowledged is lost."""
    c = faulty(3)
    ns = make_table(c, "crash")
    lead = c.leader().index
    follower = next(i for i in range(3) if i != lead)
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(10, timeout=10)
        c.failpoints.set(follower, {"state.apply": "1*eio"})
        assert c.processes.wait_for_exit(follower, timeout=15) == STORAGE_FAILURE_EXIT_CODE
        c.processes.restart_crashed()
        w.wait_for_acks(10, timeout=15)
        c.failpoints.set(lead, {"log.fsync.after": "1*crash"})
        assert c.processes.wait_for_exit(lead, timeout=15) == CRASH_EXIT_CODE
        c.processes.restart_crashed()
        w.wait_for_acks(10, timeout=20)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)
