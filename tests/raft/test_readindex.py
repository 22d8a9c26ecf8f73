"""ReadIndex: a read point is only handed out after a quorum confirmed the leader's leadership, never
before the leader committed an entry of its own term, and followers get it via the leader."""

from __future__ import annotations

import pytest

from kalamdb.raft.core import NotLeader, ReadState, Role
from kalamdb.raft.messages import MsgType
from tests.raft.memnet import MemCluster


def test_leader_read_index_waits_for_a_heartbeat_quorum_and_covers_prior_writes():
    c = MemCluster([1, 2, 3], seed=1, voters=[1, 2, 3])
    lid = c.elect()
    for k in range(5):
        c.propose(b"w%d" % k)
    c.stabilize()
    acked = c.core(lid).commit_index
    c.core(lid).read_index(b"r1")
    assert c.nodes[lid].read_states == []  # not before the confirmation round
    heartbeats = []
    c.drop = lambda m: heartbeats.append(m) if m.type == MsgType.HEARTBEAT else False
    c.stabilize()
    assert heartbeats and all(m.index > 0 for m in heartbeats)  # the round is tagged
    assert c.nodes[lid].read_states == [ReadState(b"r1", acked)]


def test_deposed_leader_never_serves_a_read_that_could_be_stale():
    c = MemCluster([1, 2, 3], seed=2, voters=[1, 2, 3], check_quorum=False)  # keep it leader
    old = c.elect()
    rest = [i for i in (1, 2, 3) if i != old]
    c.partition([old], rest)
    c.run_until(lambda: any(c.core(i).role is Role.LEADER for i in rest), max_ticks=100)
    new = next(i for i in rest if c.core(i).role is Role.LEADER)
    idx = c.core(new).propose(b"newer write")
    c.wait_applied(idx, ids=rest)
    assert c.core(old).role is Role.LEADER  # it still believes it leads
    c.core(old).read_index(b"stale?")
    c.tick(30)
    assert c.nodes[old].read_states == []  # no quorum ever confirmed it


def test_new_leader_defers_reads_until_its_first_commit():
    c = MemCluster([1, 2, 3], seed=3, voters=[1, 2, 3])
    c.drop = lambda m: m.type == MsgType.APP_RESP  # elections work, but nothing commits
    c.run_until(lambda: c.leader() is not None, max_ticks=100)
    lid = c.leader()
    noop_index = c.core(lid).last_index
    assert c.core(lid).commit_index < noop_index
    c.core(lid).read_index(b"early")
    c.tick(3)
    assert c.nodes[lid].read_states == []
    c.drop = None
    c.run_until(lambda: bool(c.nodes[lid].read_states), max_ticks=10)
    (rs,) = c.nodes[lid].read_states
    assert rs.context == b"early" and rs.index >= noop_index


def test_follower_read_index_is_forwarded_and_answered_with_the_leader_commit():
    c = MemCluster([1, 2, 3], seed=4, voters=[1, 2, 3])
    lid = c.elect()
    idx = c.propose(b"x")
    c.stabilize()
    follower = next(i for i in (1, 2, 3) if i != lid)
    c.core(follower).read_index(b"f1")
    c.stabilize()
    assert c.nodes[follower].read_states == [ReadState(b"f1", c.core(lid).commit_index)]
    assert c.nodes[follower].read_states[0].index >= idx


def test_read_index_without_a_known_leader_raises():
    c = MemCluster([1, 2, 3], seed=5, voters=[1, 2, 3])
    with pytest.raises(NotLeader):
        c.core(2).read_index(b"nobody")


def test_single_voter_answers_at_once():
    c = MemCluster([1], voters=[1])
    c.elect()
    c.core(1).read_index(b"solo")
    c.stabilize()
    assert c.nodes[1].read_states == [ReadState(b"solo", c.core(1).commit_index)]
