"""Leader election: one leader, votes durable before answered, election restriction, pre-vote,
check-quorum and the leader lease."""

from __future__ import annotations

import random

import pytest

from kalamdb.raft.core import RaftConfig, RaftCore, Role
from kalamdb.raft.messages import Message, MsgType
from kalamdb.raft.types import Entry, EntryKind, HardState, PersistentState
from tests.raft.memnet import MemCluster


def fresh_core(node_id: int, **cfg) -> RaftCore:
    return RaftCore(RaftConfig(node_id, **cfg), PersistentState(), random.Random(node_id))


@pytest.mark.parametrize("seed", range(6))
def test_exactly_one_leader_is_elected_and_everyone_follows_it(seed):
    c = MemCluster([1, 2, 3, 4, 5], seed=seed, voters=[1, 2, 3, 4, 5])
    lid = c.elect()
    c.tick(3)
    assert c.leaders() == [lid], f"seed={seed}"
    term = c.core(lid).term
    for i in c.nodes:
        assert c.core(i).leader_id == lid and c.core(i).term == term, f"seed={seed}"


def test_single_voter_elects_itself_without_any_message():
    c = MemCluster([1], voters=[1])
    ticks = c.run_until(lambda: c.core(1).role is Role.LEADER, max_ticks=30)
    assert ticks <= 20
    assert c.delivered == 0


def test_vote_is_in_the_same_ready_as_its_response_so_it_is_persisted_first():
    core = fresh_core(2)
    core.step(Message(MsgType.VOTE, 2, 1, 5, log_term=0, index=0))
    rd = core.ready()
    assert rd.hard_state == HardState(term=5, vote=1, commit=0)
    assert [(m.type, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, False)]
    core.advance(rd)
    # after a restart from that persisted hard state it must not vote for someone else in term 5
    again = RaftCore(RaftConfig(2), PersistentState(hard_state=rd.hard_state), random.Random(0))
    again.step(Message(MsgType.VOTE, 2, 3, 5, log_term=0, index=0))
    resp = again.ready().messages
    assert resp[0].type == MsgType.VOTE_RESP and resp[0].reject


def test_election_restriction_rejects_candidates_with_older_logs():
    state = PersistentState(HardState(2, 0, 0), None, [Entry(1, 1, EntryKind.NOOP), Entry(2, 2)])
    core = RaftCore(RaftConfig(2, check_quorum=False), state, random.Random(0))
    core.step(Message(MsgType.VOTE, 2, 1, 3, log_term=1, index=5))  # longer log, older last term
    core.step(Message(MsgType.VOTE, 2, 3, 3, log_term=2, index=1))  # same term, shorter
    core.step(Message(MsgType.VOTE, 2, 4, 3, log_term=2, index=2))  # as up to date: granted
    resps = [(m.to, m.reject) for m in core.ready().messages]
    assert resps == [(1, True), (3, True), (4, False)]


def isolate_and_rejoin(pre_vote: bool, check_quorum: bool) -> tuple[int, int, int, int]:
    c = MemCluster([1, 2, 3], seed=7, voters=[1, 2, 3], pre_vote=pre_vote, check_quorum=check_quorum)
    lid = c.elect()
    term_before = c.core(lid).term
    outsider = next(i for i in (1, 2, 3) if i != lid)
    c.partition([i for i in (1, 2, 3) if i != outsider], [outsider])
    c.tick(100)
    outsider_term = c.core(outsider).term
    c.heal()
    c.tick(30)
    return term_before, outsider_term, c.leader(), lid


def test_pre_vote_keeps_a_rejoining_partitioned_node_from_disrupting_the_leader():
    term_before, outsider_term, leader_after, leader_before = isolate_and_rejoin(True, True)
    assert outsider_term == term_before  # pre-votes failed, so its term never moved
    assert leader_after == leader_before


def test_without_pre_vote_the_same_rejoin_does_disrupt():
    # the contrast that shows the previous test can fail
    term_before, outsider_term, _, _ = isolate_and_rejoin(False, False)
    assert outsider_term > term_before + 3


def test_check_quorum_makes_an_isolated_leader_step_down_and_the_majority_move_on():
    c = MemCluster([1, 2, 3], seed=3, voters=[1, 2, 3])
    old = c.elect()
    rest = [i for i in (1, 2, 3) if i != old]
    c.partition([old], rest)
    ticks = c.run_until(lambda: c.core(old).role is not Role.LEADER, max_ticks=40, what="step down")
    assert ticks <= 2 * c.core(old).cfg.election_ticks
    c.run_until(lambda: any(c.core(i).role is Role.LEADER for i in rest), max_ticks=100)
    new = next(i for i in rest if c.core(i).role is Role.LEADER)
    assert c.core(new).term > c.core(old).term or c.core(old).role is not Role.LEADER


def test_leader_lease_followers_ignore_vote_requests_while_the_leader_is_alive():
    c = MemCluster([1, 2, 3], seed=5, voters=[1, 2, 3])
    lid = c.elect()
    follower, candidate = [i for i in (1, 2, 3) if i != lid]
    core = c.core(follower)
    term = core.term
    for mtype in (MsgType.VOTE, MsgType.PRE_VOTE):
        core.step(Message(mtype, follower, candidate, term + 5, log_term=core.last_term + 1,
                          index=core.last_index + 10))
    assert core.term == term and core.leader_id == lid
    rd = core.ready()
    assert rd.messages == []  # not even a rejection: the request is simply ignored
    core.advance(rd)
    # a transfer-initiated election is the exception: the leader itself asked for it
    core2 = c.core(candidate)
    core2.step(Message(MsgType.VOTE, candidate, follower, term + 5, log_term=core2.last_term + 1,
                       index=core2.last_index + 10, context=b"transfer"))
    assert core2.term == term + 5 and core2.vote == follower


def test_stale_leader_steps_down_on_hearing_a_higher_term():
    c = MemCluster([1, 2, 3], seed=11, voters=[1, 2, 3], check_quorum=False)
    old = c.elect()
    c.partition([old], [i for i in (1, 2, 3) if i != old])
    c.run_until(lambda: len(c.leaders()) == 2, max_ticks=100, what="second leader in higher term")
    c.heal()
    c.tick(2)
    assert c.leaders() != [old] and len(c.leaders()) == 1
    assert c.core(old).role is Role.FOLLOWER
    assert c.core(old).term == c.core(c.leader()).term


def test_non_voters_never_campaign():
    c = MemCluster([1, 2], voters=[1])
    c.elect()
    c.crash(1)
    c.tick(100)
    assert c.core(2).role is Role.FOLLOWER and c.core(2).term == 0
