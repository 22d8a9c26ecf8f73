"""Log replication: Figure 8 commit rule, durability-gated self votes, batching, pipelining, fast
backtracking over long divergent tails, and restarts (one node or the whole cluster)."""

from __future__ import annotations

import random

from kalamdb.raft.core import RaftConfig, RaftCore, Role
from kalamdb.raft.messages import Message, MsgType, encode_membership
from kalamdb.raft.progress import ProgressState
from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, PersistentState
from tests.raft.memnet import MemCluster


def drain(core: RaftCore):
    rd = core.ready()
    core.advance(rd)
    return rd


def five_node_leader_with_old_entry() -> RaftCore:
    """Node 1 won term 4 holding an uncommitted entry from term 2 at index 2 (Figure 8 (c))."""
    cfg_entry = Entry(1, 1, EntryKind.CONFIG, encode_membership(Membership(frozenset({1, 2, 3, 4, 5}))))
    state = PersistentState(HardState(3, 0, 1), None, [cfg_entry, Entry(2, 2, EntryKind.NORMAL, b"old")])
    core = RaftCore(RaftConfig(1, pre_vote=False), state, random.Random(1))
    core.campaign()
    for v in (2, 3):
        core.step(Message(MsgType.VOTE_RESP, 1, v, 4))
    assert core.role is Role.LEADER and core.term == 4
    drain(core)  # persist the no-op at index 3
    return core


def test_figure8_previous_term_entry_is_not_committed_by_counting_replicas():
    core = five_node_leader_with_old_entry()
    assert core.last_index == 3 and core.term_at(3) == 4
    # a majority (1, 2, 3) now holds the term-2 entry at index 2 ...
    for v in (2, 3):
        core.step(Message(MsgType.APP_RESP, 1, v, 4, index=2))
    assert core.commit_index == 1  # ... but counting replicas of an old-term entry commits nothing
    core.step(Message(MsgType.APP_RESP, 1, 2, 4, index=3))
    assert core.commit_index == 1  # the no-op is on 2 of 5 only
    core.step(Message(MsgType.APP_RESP, 1, 3, 4, index=3))
    assert core.commit_index == 3  # the current-term no-op commits, and index 2 with it
    assert [e.data for e in core.ready().committed] == [b"old", b""]


def test_leader_counts_its_own_entry_only_after_it_is_persisted():
    c = MemCluster([1, 2, 3], seed=1, voters=[1, 2, 3])
    lid = c.elect()
    core = c.core(lid)
    f2, f3 = [i for i in (1, 2, 3) if i != lid]
    idx = core.propose(b"x")
    rd = core.ready()  # the caller has NOT persisted it yet
    assert [e.index for e in rd.entries] == [idx]
    core.step(Message(MsgType.APP_RESP, lid, f2, core.term, index=idx))
    assert core.commit_index < idx  # follower + unpersisted leader is not a majority
    core.advance(rd)
    assert core.commit_index == idx
    del f3


def test_a_hundred_proposals_go_out_as_one_append_per_follower():
    c = MemCluster([1, 2, 3], seed=2, voters=[1, 2, 3])
    lid = c.elect()
    core = c.core(lid)
    for k in range(100):
        core.propose(b"p%d" % k)
    rd = core.ready()
    apps = [m for m in rd.messages if m.type == MsgType.APP]
    assert sorted(m.to for m in apps) == sorted(i for i in (1, 2, 3) if i != lid)
    assert all(len(m.entries) == 100 for m in apps)
    core.advance(rd)


def test_pipelining_keeps_up_to_max_inflight_appends_outstanding():
    c = MemCluster([1, 2], seed=3, voters=[1, 2], max_inflight_msgs=4, max_entries_per_msg=1)
    lid = c.elect()
    other = 3 - lid
    core = c.core(lid)
    assert core.progress[other].state == ProgressState.REPLICATE
    for k in range(10):
        core.propose(b"%d" % k)
    rd = core.ready()
    apps = [m for m in rd.messages if m.type == MsgType.APP and m.to == other]
    assert len(apps) == 4 and [len(m.entries) for m in apps] == [1, 1, 1, 1]
    core.advance(rd)
    core.step(Message(MsgType.APP_RESP, lid, other, core.term, index=apps[0].entries[0].index))
    more = [m for m in core.ready().messages if m.type == MsgType.APP]
    assert len(more) == 1  # one slot freed, one more append sent


def test_byte_limit_splits_batches():
    c = MemCluster([1, 2], seed=4, voters=[1, 2], max_bytes_per_msg=1000)
    lid = c.elect()
    core = c.core(lid)
    for _ in range(10):
        core.propose(b"z" * 300)
    rd = core.ready()
    sizes = [len(m.entries) for m in rd.messages if m.type == MsgType.APP]
    assert sum(sizes) == 10 and max(sizes) <= 3
    core.advance(rd)


def test_fast_backtracking_skips_a_long_divergent_tail_in_a_few_round_trips():
    c = MemCluster([1, 2, 3], seed=5, voters=[1, 2, 3], max_entries_per_msg=1000)
    old = c.elect()
    rest = [i for i in (1, 2, 3) if i != old]
    c.partition([old], rest)
    for k in range(200):
        c.core(old).propose(b"lost%d" % k)  # never committed: old leader is alone
    c.stabilize()
    c.run_until(lambda: any(c.core(i).role is Role.LEADER for i in rest), max_ticks=100)
    new = c.leader()
    for k in range(50):
        c.core(new).propose(b"kept%d" % k)
    c.stabilize()
    # a second leader change makes the leader's first guess for `old` (its own last index) land far
    # inside old's divergent tail, which is what backtracking has to walk out of
    other = next(i for i in rest if i != new)
    c.core(new).transfer_leadership(other)
    c.run_until(lambda: c.core(other).role is Role.LEADER, max_ticks=10)
    new = other
    rejects = []
    c.drop = lambda m: rejects.append(m) if (m.type == MsgType.APP_RESP and m.reject and m.frm == old) else False
    c.heal()
    c.run_until(lambda: c.core(old).last_index == c.core(new).last_index and c.core(old).role is Role.FOLLOWER,
                max_ticks=30)
    assert 1 <= len(rejects) <= 3, f"{len(rejects)} round trips to find the match point"
    datas = [e.data for e in c.core(old).entries(1, c.core(old).last_index)]
    assert not any(d.startswith(b"lost") for d in datas)
    assert b"kept49" in datas


def test_follower_restart_keeps_its_log_and_does_not_reapply():
    c = MemCluster([1, 2, 3], seed=6, voters=[1, 2, 3])
    lid = c.elect()
    for k in range(30):
        c.propose(b"a%d" % k)
    c.stabilize()
    victim = next(i for i in (1, 2, 3) if i != lid)
    c.wait_applied(c.core(lid).last_index)
    durable_len = len(c.nodes[victim].log)
    c.crash(victim)
    for k in range(30):
        c.propose(b"b%d" % k)
    c.stabilize()
    c.restart(victim)
    assert c.core(victim).last_index >= durable_len  # came back with its durable log
    c.wait_applied(c.core(lid).last_index)
    assert c.nodes[victim].applied_data == c.nodes[lid].applied_data  # memnet asserts no double apply


def test_whole_cluster_restart_loses_no_committed_entry():
    c = MemCluster([1, 2, 3], seed=7, voters=[1, 2, 3])
    c.elect()
    committed = []
    for k in range(40):
        committed.append(c.propose(b"c%d" % k))
    c.wait_applied(committed[-1])
    before = c.nodes[1].applied_data
    for i in (1, 2, 3):
        c.crash(i)
    for i in (1, 2, 3):
        c.restart(i)
    c.elect()
    idx = c.propose(b"after")
    c.wait_applied(idx)
    for i in (1, 2, 3):
        assert c.nodes[i].applied_data == [*before, b"after"]


def test_learner_follower_with_empty_log_is_caught_up_from_index_one():
    c = MemCluster([1, 2], seed=8, voters=[1])
    c.elect()
    for k in range(10):
        c.propose(b"e%d" % k)
    c.stabilize()
    c.core(1).add_learner(2)
    idx = c.propose(b"last")
    c.wait_applied(idx)
    assert c.nodes[2].applied_data == c.nodes[1].applied_data
    assert c.core(2).membership.learners == frozenset({2})


def test_an_append_that_would_overwrite_a_committed_entry_changes_nothing():
    c = MemCluster([1, 2, 3], seed=9, voters=[1, 2, 3])
    lid = c.elect()
    idx = c.propose(b"committed")
    c.wait_applied(idx)
    follower = next(i for i in (1, 2, 3) if i != lid)
    core = c.core(follower)
    before = core.entries(1, core.last_index)
    bogus = Message(MsgType.APP, follower, lid, core.term + 1, log_term=core.term_at(idx - 1), index=idx - 1,
                    entries=[Entry(core.term + 1, idx, EntryKind.NORMAL, b"rewrite")])
    core.step(bogus)
    assert core.entries(1, core.last_index) == before
    rd = core.ready()
    assert [(m.type, m.index, m.reject) for m in rd.messages] == [(MsgType.APP_RESP, core.commit_index, False)]
    core.advance(rd)
