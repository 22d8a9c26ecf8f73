"""Membership: OpenRaft-style formation (learner, then voter), learners never vote nor count,
one change at a time, joint consensus with automatic leave, and removal of the leader itself."""

from __future__ import annotations

import random

import pytest

from kalamdb.raft.core import ProposalRejected, RaftConfig, RaftCore, Role
from kalamdb.raft.messages import Message, MsgType, encode_membership
from kalamdb.raft.types import Entry, EntryKind, Membership, PersistentState
from tests.raft.memnet import MemCluster


def formed(ids: list[int], seed: int = 0) -> MemCluster:
    """Node 1 bootstraps alone; the others join as learners and are then promoted."""
    c = MemCluster(ids, seed=seed, voters=[1])
    c.elect()
    for i in ids[1:]:
        c.core(1).add_learner(i)
        c.stabilize()
    c.core(1).change_membership(set(ids))
    c.run_until(lambda: all(c.core(i).membership == Membership(frozenset(ids)) for i in ids)
                and c.core(1).commit_index == c.core(1).last_index, max_ticks=50, what="formation")
    return c


def configs_in_log(core: RaftCore) -> list[Membership]:
    from kalamdb.raft.messages import decode_membership

    return [decode_membership(e.data) for e in core.entries(1, core.last_index) if e.kind is EntryKind.CONFIG]


def test_formation_goes_through_joint_consensus_and_leaves_it_automatically():
    c = formed([1, 2, 3])
    seen = configs_in_log(c.core(3))
    assert Membership(frozenset({1, 2, 3}), frozenset(), frozenset({1})) in seen  # the joint step
    assert seen[-1] == Membership(frozenset({1, 2, 3}))
    idx = c.propose(b"after formation")
    c.wait_applied(idx)


def test_single_voter_change_is_direct():
    c = MemCluster([1, 2], seed=1, voters=[1])
    c.elect()
    c.core(1).add_learner(2)
    c.stabilize()
    idx = c.core(1).change_membership({1, 2})
    c.stabilize()
    assert c.core(1).entries(idx, idx)[0].kind is EntryKind.CONFIG
    assert c.core(2).membership == Membership(frozenset({1, 2}))
    assert not any(m.is_joint for m in configs_in_log(c.core(2)))


def test_learners_are_not_counted_for_commit():
    c = MemCluster([1, 2, 3], seed=2, voters=[1, 2])
    lid = c.elect()
    c.core(lid).add_learner(3)
    c.stabilize()
    other_voter = 3 - lid
    c.partition([lid, 3], [other_voter])
    idx = c.core(lid).propose(b"needs a voter")
    c.tick(5)
    assert c.core(3).last_index >= idx  # the learner has it ...
    assert c.core(lid).commit_index < idx  # ... but it does not count
    c.heal()
    c.wait_applied(idx)


def test_learners_never_vote_or_campaign():
    c = MemCluster([1, 2, 3], seed=3, voters=[1])
    c.elect()
    for i in (2, 3):
        c.core(1).add_learner(i)
        c.stabilize()
    c.crash(1)
    c.tick(80)
    assert c.leaders() == []
    assert c.core(2).term == c.core(1).term and c.core(3).term == c.core(1).term


def test_only_one_membership_change_at_a_time():
    c = MemCluster([1, 2, 3], seed=4, voters=[1, 2])
    lid = c.elect()
    c.core(lid).add_learner(3)
    with pytest.raises(ProposalRejected):
        c.core(lid).add_learner(4)
    c.stabilize()
    c.core(lid).add_learner(4)  # accepted once the first change committed


def test_promotion_requires_being_a_learner_first():
    c = MemCluster([1, 2], seed=5, voters=[1])
    c.elect()
    with pytest.raises(ValueError):
        c.core(1).change_membership({1, 2})


@pytest.mark.parametrize("seed", range(3))
def test_leader_removes_itself_then_steps_down_and_the_rest_continue(seed):
    c = formed([1, 2, 3], seed=seed)
    c.run_until(lambda: c.leader() == 1, max_ticks=5)
    c.core(1).change_membership({2, 3})
    c.run_until(lambda: c.leader() in (2, 3), max_ticks=5, what="hand-over after self-removal")
    assert c.core(1).role is Role.FOLLOWER and not c.core(1).promotable
    new = c.leader()
    idx = c.core(new).propose(b"after removal")
    c.wait_applied(idx, ids=[2, 3])
    c.tick(100)  # the removed node never campaigns nor disturbs
    assert c.leader() == new and c.core(1).role is Role.FOLLOWER


def test_replacing_every_voter_including_the_leader_via_joint_consensus():
    c = formed([1, 2, 3, 4, 5, 6], seed=6)
    c.core(1).change_membership({1, 2, 3})  # shrink first: a multi-voter change, so joint again
    c.run_until(lambda: c.core(1).membership == Membership(frozenset({1, 2, 3}))
                and c.core(1).commit_index == c.core(1).last_index, max_ticks=30)
    lid = c.leader()
    for i in (4, 5, 6):
        c.core(lid).add_learner(i)
        c.stabilize()
    c.core(lid).change_membership({4, 5, 6})
    c.run_until(lambda: c.leader() in (4, 5, 6), max_ticks=60, what="new voter set leads")
    new = c.leader()
    assert c.core(new).membership == Membership(frozenset({4, 5, 6}))
    idx = c.core(new).propose(b"new world")
    c.wait_applied(idx, ids=[4, 5, 6])


def test_membership_reverts_when_an_uncommitted_config_entry_is_overwritten():
    base = Membership(frozenset({1, 2, 3}))
    grown = Membership(frozenset({1, 2, 3}), frozenset({4}))
    log = [Entry(1, 1, EntryKind.CONFIG, encode_membership(base))]
    core = RaftCore(RaftConfig(2), PersistentState(entries=log), random.Random(0))
    core.step(Message(MsgType.APP, 2, 1, 2, log_term=1, index=1, commit=1,
                      entries=[Entry(2, 2, EntryKind.CONFIG, encode_membership(grown))]))
    assert core.membership == grown  # in force as soon as appended
    core.step(Message(MsgType.APP, 2, 3, 3, log_term=1, index=1, commit=1,
                      entries=[Entry(3, 2, EntryKind.NOOP)]))
    assert core.membership == base
    assert core.membership_at(2) == base


def test_whole_cluster_restart_in_the_middle_of_the_leaders_self_removal_still_elects():
    # Found by the simulator (seed 43): {1} -> {2} goes joint, the joint commits, the final config
    # {2} reaches only node 1, then everything restarts. Node 1 has the newest log but is not a
    # voter of its own latest config; node 2 still needs node 1 in the joint config.
    from kalamdb.raft.messages import decode_membership

    c = MemCluster([1, 2], seed=12, voters=[1])
    c.elect()
    c.core(1).add_learner(2)
    c.stabilize()
    final = Membership(frozenset({2}))

    def hide_final_config(m):
        return m.type == MsgType.APP and m.to == 2 and any(
            e.kind is EntryKind.CONFIG and decode_membership(e.data) == final for e in m.entries)

    c.drop = hide_final_config
    c.core(1).change_membership({2})
    c.stabilize()
    assert c.core(1).membership == final and c.core(2).membership.is_joint
    c.crash(1)
    c.crash(2)
    c.drop = None
    c.restart(1)
    c.restart(2)
    c.run_until(lambda: c.leader() == 2 and c.core(2).membership == final
                and c.core(2).commit_index == c.core(2).last_index, max_ticks=200, what="node 2 leads {2}")
    assert not c.core(1).promotable
    idx = c.core(2).propose(b"alive")
    c.wait_applied(idx, ids=[2])


def test_joint_config_needs_the_new_majority_too_before_it_can_be_left():
    c = formed([1, 2, 3, 4, 5], seed=13)
    c.core(1).change_membership({1, 2, 3})
    c.run_until(lambda: c.core(1).membership == Membership(frozenset({1, 2, 3}))
                and c.core(1).commit_index == c.core(1).last_index, max_ticks=30)
    lid = c.leader()
    for i in (4, 5):
        c.core(lid).add_learner(i)
        c.stabilize()
    # cut the leader off from every node of the incoming set except itself
    lid = c.leader()
    others_old = [i for i in (1, 2, 3) if i != lid]
    c.partition([lid, *others_old], [4, 5])
    joint_idx = c.core(lid).change_membership({lid, 4, 5})
    c.tick(5)
    core = c.core(lid)
    assert core.membership.is_joint
    assert core.commit_index < joint_idx  # the old majority alone cannot commit the joint config
    c.heal()
    c.run_until(lambda: not c.core(c.leader()).membership.is_joint
                and c.core(c.leader()).commit_index == c.core(c.leader()).last_index, max_ticks=30)
    assert c.core(c.leader()).membership.voters == frozenset({lid, 4, 5})
