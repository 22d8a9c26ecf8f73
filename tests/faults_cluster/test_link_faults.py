"""Degraded links on real clusters: delay with jitter plus loss, clogging, resets, bandwidth, and
clients cut off from one node."""

from __future__ import annotations

import statistics
import time

import pytest
from workload import Writers, assert_converged_and_nothing_lost, make_table

pytestmark = pytest.mark.cluster

# Documented bound (docs/faults.md): under 50 +- 20 ms per hop and 20 % message loss, a write to
# the leader needs one round trip to a majority (~100-140 ms) plus retransmission after a lost
# AppendEntries or reply (the next heartbeat, 50 ms); p50 stays under 0.5 s and every write
# completes within the 3 s write timeout.
P50_BOUND_S = 0.5


def test_delay_and_loss_on_every_link_slow_writes_but_they_succeed(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "lossy")
    lead = c.leader()
    base = []
    for i in range(1, 11):
        t0 = time.monotonic()
        lead.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, 'a')", [i]).raise_for_error()
        base.append(time.monotonic() - t0)
    c.net.delay(50, 20)
    c.net.loss(0.2)
    slow, failed = [], []
    for i in range(11, 51):
        t0 = time.monotonic()
        r = lead.sql(f"INSERT INTO {ns}.t (id, v) VALUES ($1, 'b')", [i])
        (slow if r.ok else failed).append(time.monotonic() - t0)
    stats = c.net.stats()["rpc"]
    dropped = sum(s.frames_dropped for s in stats.values())
    print(f"p50 {statistics.median(base) * 1000:.1f} ms -> {statistics.median(slow) * 1000:.1f} ms "
          f"(max {max(slow) * 1000:.0f} ms) under 50+-20 ms delay and 20% loss; {dropped} Raft frames dropped; "
          f"{len(failed)} of 40 failed")
    assert not failed, f"{len(failed)} writes failed under delay and loss"
    assert dropped > 0
    assert statistics.median(slow) > statistics.median(base) + 0.05
    assert statistics.median(slow) < P50_BOUND_S
    c.net.clear()
    assert_converged_and_nothing_lost(c, ns, set(range(1, 51)), set(range(1, 51)))


def test_clog_holds_replication_and_release_delivers_it_in_order(faulty, seed):
    c = faulty(3)
    ns = make_table(c, "clog")
    lead = c.leader().index
    f1, f2 = [i for i in range(3) if i != lead]
    c.net.clog(lead, f1)
    c.net.clog(lead, f2)
    r = c.execute_sql_on(lead, f"INSERT INTO {ns}.t (id, v) VALUES (1, 'held')")
    assert not r.ok, "a write committed while the leader could reach nobody"
    held = sum(s.frames_held for (src, _), s in c.net.stats()["rpc"].items() if src == lead)
    assert held > 0
    c.net.heal()
    with Writers(c, ns, clients=2, seed=seed) as w:
        w.wait_for_acks(10, timeout=15)
    assert c.net.reset(lead, f1) >= 1  # RST every connection between them: Raft reconnects
    with Writers(c, ns, clients=2, seed=seed + 7) as w2:
        w2.wait_for_acks(10, timeout=15)
    c.net.bandwidth(64)  # 64 kbit/s still carries small writes
    c.execute_sql_on(c.leader().index, f"INSERT INTO {ns}.t (id, v) VALUES (0, 'narrow')").raise_for_error()
    c.net.clear()
    assert_converged_and_nothing_lost(c, ns, w.acked | w2.acked | {0}, None)


def test_isolated_client_cannot_reach_its_node_but_others_can(faulty):
    c = faulty(3)
    ns = make_table(c, "cli")
    c.net.isolate_client(1)
    with c.get_node(1).client(timeout=1.0) as cl, pytest.raises(OSError):
        cl.sql(f"INSERT INTO {ns}.t (id, v) VALUES (1, 'x')")
    c.execute_sql_on(0, f"INSERT INTO {ns}.t (id, v) VALUES (2, 'y')").raise_for_error()
    c.net.heal()
    c.get_node(1).drop_client()
    assert_converged_and_nothing_lost(c, ns, {2}, {1, 2})
