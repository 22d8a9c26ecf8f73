"""CPU starvation and memory pressure on the leader (the mechanism used is printed), and per-node
clocks with an offset."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from workload import Writers, assert_converged_and_nothing_lost, make_table

from kalamdb.testing import pressure

pytestmark = pytest.mark.cluster


def test_cpu_starved_leader_keeps_the_cluster_correct(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "cpu")
    with Writers(c, ns, clients=3, seed=seed, timeout=8) as w:
        w.wait_for_acks(10, timeout=10)
        (rec,) = c.pressure.cpu_starve("leader", fraction=0.05)
        print(f"CPU starvation of node index {rec.index} by {rec.mechanism}")
        assert rec.mechanism in ("cgroup", "signals")
        w.wait_for_acks(10, timeout=30)  # slower (or via a new leader), but progress
        c.pressure.release()
        w.wait_for_acks(10, timeout=15)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)


@pytest.mark.skipif(not pressure.cgroup_v1_writable("memory"), reason="needs a writable cgroup v1 memory controller")
def test_leader_out_of_memory_is_killed_restarted_and_loses_nothing(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "oom")
    lead = c.leader().index
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(10, timeout=10)
        # charges start at zero in the new cgroup: a few MiB of fresh allocations kill the node
        (rec,) = c.pressure.memory_pressure(lead, limit_bytes=4 << 20)
        assert rec.mechanism == "cgroup"
        big = "x" * (1 << 20)
        for k in range(20):  # large rows make the leader allocate until the kernel OOM-kills it
            with contextlib.suppress(OSError):  # the connection dies with the node
                c.execute_sql_on(lead, f"INSERT INTO {ns}.t (id, v) VALUES ($1, $2)", [-(k + 1), big])
            if not c.get_node(lead).is_running():
                break
        code = c.processes.wait_for_exit(lead, timeout=20)
        print(f"leader ended with status {code} under a 4 MiB cgroup memory limit")
        assert code == -9
        c.pressure.release()
        w.avoid = {c.get_node(lead)}
        w.wait_for_acks(10, timeout=15)
        assert lead in c.processes.restart_crashed()
        w.avoid = set()
        w.wait_for_acks(5, timeout=15)
    assert_converged_and_nothing_lost(c, ns, w.acked, None)


def test_clock_offset_moves_the_node_wall_time(faulty):
    c = faulty(3)
    c.processes.set_clock(2, offset_ms=3_600_000)
    c.processes.restart(2, kill=False)

    def expires(i: int) -> datetime:
        with c.get_node(i).client() as cl:
            r = cl.login("root", c.root_password)
        return datetime.fromisoformat(r["expires_at"])

    skew = (expires(2) - expires(0)).total_seconds()
    print(f"token expiry of the +1 h node is {skew:.0f} s later")
    assert 3590 <= skew <= 3610
    # the skewed node still serves and replicates normally
    ns = make_table(c, "clk")
    c.execute_sql_on(2, f"INSERT INTO {ns}.t (id, v) VALUES (1, 'x')").raise_for_error()
    assert_converged_and_nothing_lost(c, ns, {1}, {1})
