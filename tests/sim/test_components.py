"""The simulator's own parts: event order, disk crash semantics, network faults, and that each
checker rule fires on a hand-made violation (a checker that never fires proves nothing)."""

from __future__ import annotations

import random

import pytest

from kalamdb.raft.types import Entry, HardState, SnapshotMeta
from kalamdb.sim.checker import SafetyChecker, SafetyViolation
from kalamdb.sim.disk import SimDisk
from kalamdb.sim.loop import EventBudgetExceeded, EventLoop
from kalamdb.sim.network import NetworkConfig, SimNetwork


def test_loop_runs_in_time_then_insertion_order():
    loop = EventLoop()
    seen = []
    loop.at(5, seen.append, "b")
    loop.at(1, seen.append, "a")
    loop.at(5, seen.append, "c")
    loop.after(3, seen.append, "between")
    assert loop.run_until(10) is False
    assert seen == ["a", "between", "b", "c"]
    assert loop.now == 10


def test_loop_event_budget_stops_a_storm():
    loop = EventLoop(max_events=100)

    def storm():
        loop.after(1, storm)
        loop.after(1, storm)

    loop.after(0, storm)
    with pytest.raises(EventBudgetExceeded):
        loop.run_until(10**9)


def _e(term, index):
    return Entry(term, index, data=b"%d" % index)


def test_disk_crash_keeps_synced_and_a_prefix_of_unsynced():
    lost_something = kept_something = False
    for seed in range(50):
        disk = SimDisk()
        disk.write_entries([_e(1, 1), _e(1, 2)])
        disk.write_hard_state(HardState(1, 1, 1))
        disk.sync()
        disk.write_entries([_e(1, 3)])
        disk.write_hard_state(HardState(2, 3, 2))
        disk.crash(random.Random(seed))
        state = disk.load()
        indexes = [e.index for e in state.entries]
        assert indexes in ([1, 2], [1, 2, 3]), f"seed {seed}: {indexes}"
        # a prefix: the later hard state can only have survived together with the earlier entry
        if state.hard_state.term == 2:
            assert indexes == [1, 2, 3], f"seed {seed}: write order violated"
        lost_something |= indexes == [1, 2]
        kept_something |= indexes == [1, 2, 3]
    assert lost_something and kept_something


def test_disk_truncates_conflicting_suffix_and_compacts():
    disk = SimDisk()
    disk.write_entries([_e(1, 1), _e(1, 2), _e(1, 3)])
    disk.write_entries([_e(2, 2)])  # a new leader overwrote index 2..
    disk.sync()
    assert [(e.term, e.index) for e in disk.load().entries] == [(1, 1), (2, 2)]
    disk.write_snapshot(SnapshotMeta(1, 1), b"img")
    disk.sync()
    state = disk.load()
    assert state.snapshot.index == 1 and [e.index for e in state.entries] == [2]
    with pytest.raises(AssertionError):
        disk._append([_e(2, 9)])  # a gap is a driver bug, never silently accepted


def _net(**cfg):
    loop = EventLoop()
    got = []
    net = SimNetwork(loop, random.Random(1), NetworkConfig(**cfg), lambda s, d, m: got.append((s, d, m)), None)
    return loop, net, got


def test_network_partition_asymmetry_and_clog():
    loop, net, got = _net()
    net.partition([1], [2, 3])
    net.send(1, 2, "x")
    net.send(2, 3, "y")
    net.heal()
    net.block(1, 2)
    net.send(1, 2, "blocked")
    net.send(2, 1, "reverse ok")
    net.clog(3, 1)
    net.send(3, 1, "held")
    loop.run_until(10**6)
    assert [m for _, _, m in got] == ["y", "reverse ok"]
    net.unclog_all()
    loop.run_until(2 * 10**6)
    assert [m for _, _, m in got][-1] == "held"


def test_network_loss_and_duplication_rates():
    loop, net, got = _net(loss=0.2, duplicate=0.2)
    for i in range(2000):
        net.send(1, 2, i)
    loop.run_until(10**7)
    delivered = len(got)
    unique = len({m for _, _, m in got})
    assert 1400 < unique < 1800  # ~20% lost
    assert delivered - unique > 150  # ~20% of the survivors duplicated


class _Log:
    def __init__(self, first, terms):  # terms[i] = term at index first+i
        self.first_index, self._terms = first, terms

    @property
    def last_index(self):
        return self.first_index + len(self._terms) - 1

    def term_at(self, index):
        i = index - self.first_index
        return self._terms[i] if 0 <= i < len(self._terms) else None


def test_checker_election_safety():
    c = SafetyChecker()
    c.on_leader(1, 5, _Log(1, [1]))
    c.on_leader(1, 5, _Log(1, [1]))
    with pytest.raises(SafetyViolation, match="election-safety"):
        c.on_leader(2, 5, _Log(1, [1]))


def test_checker_state_machine_safety_and_monotonic_apply():
    c = SafetyChecker()
    c.on_apply(1, 1, Entry(1, 1, data=b"a"))
    c.on_apply(2, 1, Entry(1, 1, data=b"a"))
    with pytest.raises(SafetyViolation, match="state-machine-safety"):
        c.on_apply(3, 1, Entry(2, 1, data=b"b"))
    with pytest.raises(SafetyViolation, match="applied-monotonic"):
        c.on_apply(1, 1, Entry(1, 1, data=b"a"))


def test_checker_leader_completeness():
    c = SafetyChecker()
    c.on_apply(1, 1, Entry(1, 1))
    c.on_apply(1, 1, Entry(2, 2))
    with pytest.raises(SafetyViolation, match="leader-completeness"):
        c.on_leader(2, 3, _Log(0, [0, 1]))  # lacks index 2
    with pytest.raises(SafetyViolation, match="leader-completeness"):
        c.on_leader(3, 4, _Log(0, [0, 1, 1]))  # holds a different term at index 2


def test_checker_log_matching():
    c = SafetyChecker()
    c.check_log_matching({1: _Log(1, [1, 1, 2]), 2: _Log(1, [1, 1, 3])})  # diverging tails are fine
    with pytest.raises(SafetyViolation, match="log-matching"):
        c.check_log_matching({1: _Log(1, [1, 1, 2]), 2: _Log(1, [1, 2, 2])})


def test_checker_stale_read_and_lost_write():
    c = SafetyChecker()
    c.on_ack(op_id=7, key=3, index=10)
    floor = c.read_floor(3)
    c.on_read(1, 3, floor, 10)
    with pytest.raises(SafetyViolation, match="stale-read"):
        c.on_read(1, 3, floor, 9)
    with pytest.raises(SafetyViolation, match="lost-acknowledged-write"):
        c.check_acked_present(2, {}.get)


def test_checker_durability_promise():
    from kalamdb.raft.messages import Message, MsgType

    c = SafetyChecker()
    disk = SimDisk()
    disk.write_entries([_e(1, 1)])
    disk.write_hard_state(HardState(1, 2, 0))
    ack = Message(MsgType.APP_RESP, 2, 3, 1, index=1)
    grant = Message(MsgType.VOTE_RESP, 2, 3, 1)
    with pytest.raises(SafetyViolation, match="durability-promise"):
        c.on_promise(3, ack, disk)  # written, not synced
    with pytest.raises(SafetyViolation, match="durability-promise"):
        c.on_promise(3, grant, disk)
    disk.sync()
    c.on_promise(3, ack, disk)
    c.on_promise(3, grant, disk)
    with pytest.raises(SafetyViolation, match="durability-promise"):
        c.on_promise(3, Message(MsgType.VOTE_RESP, 4, 3, 1), disk)  # a second vote in term 1
    disk.write_hard_state(HardState(2, 4, 0))
    disk.sync()
    c.on_promise(3, grant, disk)  # superseded by a later term: that vote can no longer be recast
