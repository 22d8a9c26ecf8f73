"""Log compaction and InstallSnapshot: chunked transfer, lost chunks, a snapshot replaced mid-transfer,
joining after compaction, and restarting from a snapshot plus log suffix."""

from __future__ import annotations

import pytest

from kalamdb.raft.messages import MsgType
from kalamdb.raft.types import Membership, SnapshotMeta
from tests.raft.memnet import MemCluster


def lagging_follower_cluster(seed: int, chunk: int = 64) -> tuple[MemCluster, int, int]:
    """A 3-node cluster whose leader compacted past everything a crashed follower has."""
    c = MemCluster([1, 2, 3], seed=seed, voters=[1, 2, 3], snapshot_chunk_bytes=chunk)
    lid = c.elect()
    victim = next(i for i in (1, 2, 3) if i != lid)
    c.crash(victim)
    for k in range(40):
        c.propose(b"v%02d" % k)
    c.wait_applied(c.core(lid).last_index, ids=[i for i in (1, 2, 3) if i != victim])
    meta = c.nodes[lid].take_snapshot()
    assert c.core(lid).first_index == meta.index + 1
    for k in range(5):
        c.propose(b"tail%d" % k)
    c.stabilize()
    return c, lid, victim


def test_compaction_drops_entries_and_guards_its_inputs():
    c = MemCluster([1], voters=[1])
    c.elect()
    for k in range(10):
        c.propose(b"%d" % k)
    c.wait_applied(c.core(1).last_index)
    core = c.core(1)
    with pytest.raises(ValueError):
        core.compact(SnapshotMeta(core.applied_index + 1, core.term, core.membership))  # beyond applied
    with pytest.raises(ValueError):
        core.compact(SnapshotMeta(5, core.term_at(5), Membership(frozenset({9}))))  # wrong membership
    with pytest.raises(ValueError):
        core.compact(SnapshotMeta(5, 99, core.membership))  # wrong term
    meta = c.nodes[1].take_snapshot()
    assert core.first_index == meta.index + 1 and core.entries(1, meta.index) == []
    assert core.term_at(meta.index) == meta.term and core.term_at(meta.index - 1) is None


def test_follower_behind_the_compacted_log_gets_the_snapshot_in_chunks():
    c, lid, victim = lagging_follower_cluster(seed=1)
    chunks = []
    c.drop = lambda m: chunks.append(m) if m.type == MsgType.SNAPSHOT else False
    c.restart(victim)
    c.wait_applied(c.core(lid).last_index)
    assert len(chunks) > 3 and chunks[-1].done and not chunks[0].done
    assert [m.offset for m in chunks] == sorted(m.offset for m in chunks)
    assert c.nodes[victim].applied_data == c.nodes[lid].applied_data
    assert c.core(victim).snapshot == chunks[0].snapshot
    assert c.core(victim).first_index == chunks[0].snapshot.index + 1


def test_a_lost_chunk_is_resent_after_an_idle_election_timeout():
    c, lid, victim = lagging_follower_cluster(seed=2)
    dropped = []

    def lose_third_chunk(m):
        if m.type == MsgType.SNAPSHOT and m.offset > 0 and not dropped:
            dropped.append(m.offset)
            return True
        return False

    c.drop = lose_third_chunk
    c.restart(victim)
    c.wait_applied(c.core(lid).last_index, max_ticks=60)
    assert dropped, "the scenario never dropped a chunk"
    assert c.nodes[victim].applied_data == c.nodes[lid].applied_data


def test_snapshot_replaced_mid_transfer_restarts_with_the_new_one():
    c, lid, victim = lagging_follower_cluster(seed=3)
    first = c.nodes[lid].snapshot
    assert c.core(lid).applied_index > first.index  # the tail is applied: a newer snapshot is possible
    replaced = []

    def replace_snapshot_on_first_ack(m):
        if m.type == MsgType.SNAPSHOT_RESP and not replaced:
            replaced.append(c.nodes[lid].take_snapshot())  # the old file is gone from now on
        return False

    c.drop = replace_snapshot_on_first_ack
    c.restart(victim)
    c.wait_applied(c.core(lid).last_index, max_ticks=80)
    assert replaced and replaced[0].index > first.index
    assert c.core(victim).snapshot == replaced[0]
    assert c.nodes[victim].applied_data == c.nodes[lid].applied_data


def test_new_learner_joining_after_compaction_starts_from_the_snapshot():
    c = MemCluster([1, 2], seed=4, voters=[1], snapshot_chunk_bytes=100)
    c.elect()
    for k in range(30):
        c.propose(b"x%d" % k)
    c.wait_applied(c.core(1).last_index, ids=[1])
    c.nodes[1].take_snapshot()
    c.core(1).add_learner(2)
    idx = c.propose(b"last")
    c.wait_applied(idx)
    assert c.nodes[2].applied_data == c.nodes[1].applied_data
    assert c.core(2).membership.learners == frozenset({2})
    assert c.core(2).snapshot is not None


def test_restart_from_snapshot_plus_log_suffix_applies_each_entry_once():
    c = MemCluster([1, 2, 3], seed=5, voters=[1, 2, 3])
    lid = c.elect()
    for k in range(20):
        c.propose(b"s%d" % k)
    c.wait_applied(c.core(lid).last_index)
    node = next(i for i in (1, 2, 3) if i != lid)
    c.nodes[node].take_snapshot()
    for k in range(10):
        c.propose(b"t%d" % k)
    c.wait_applied(c.core(lid).last_index)
    expected = c.nodes[node].applied_data
    c.crash(node)
    c.restart(node)
    assert c.core(node).applied_index == c.nodes[node].snapshot.index
    c.wait_applied(c.core(lid).last_index)
    assert c.nodes[node].applied_data == expected
