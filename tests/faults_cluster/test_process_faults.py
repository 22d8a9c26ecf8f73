"""Process faults while clients write: random restarts one at a time, the whole cluster killed at
once, a paused leader; targets resolved from the seeded RNG."""

from __future__ import annotations

import pytest
from workload import BOTH_MODES, Writers, assert_converged_and_nothing_lost, make_table

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("network", BOTH_MODES, indirect=True)
def test_random_restarts_one_at_a_time_while_clients_write(faulty, seed, network):
    c = faulty(3)
    ns = make_table(c, "roll")
    restarted = []
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(10, timeout=10)
        for k in range(3):
            restarted += c.processes.restart("random", kill=k % 2 == 0)  # kill -9, SIGTERM, kill -9
            c.leader(timeout=10)
            w.wait_for_acks(10, timeout=15)
    print(f"restarted (seed {seed}): {restarted}; {len(w.acked)} acknowledged, {w.errors} errors")
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)


@pytest.mark.parametrize("network", BOTH_MODES, indirect=True)
def test_whole_cluster_killed_at_once_while_clients_write(faulty, seed, network):
    c = faulty(3)
    ns = make_table(c, "boom")
    with Writers(c, ns, clients=3, seed=seed) as w:
        w.wait_for_acks(20, timeout=10)
        assert [n.index for n in c.processes.kill("all")] == [0, 1, 2]
        for i in range(3):
            c.processes.start(i)
        c.leader(timeout=15)
        w.wait_for_acks(10, timeout=15)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)


@pytest.mark.parametrize("network", BOTH_MODES, indirect=True)
def test_paused_leader_is_replaced_and_rejoins_after_resume(faulty, seed, network):
    c = faulty(3)
    ns = make_table(c, "stop")
    with Writers(c, ns, clients=2, seed=seed) as w:
        w.wait_for_acks(5, timeout=10)
        (old,) = c.processes.pause("leader")
        new = c.leader(timeout=10)
        assert new is not old
        w.wait_for_acks(10, timeout=15)
        assert c.processes.resume() == [old]
        w.wait_for_acks(5, timeout=15)
    assert_converged_and_nothing_lost(c, ns, w.acked, w.attempted)
    assert len(c.select("majority")) == 2 and len(c.select("minority")) == 1
    with pytest.raises(ValueError):
        c.select("half")
