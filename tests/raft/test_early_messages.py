"""Messages that leave while a Ready is being persisted (raft/core.py `take_early_messages`): a
durable leader's all, anyone's heartbeat responses and ReadIndex requests; acknowledgements and
votes wait for the fsync (the next Ready after `advance`)."""

from __future__ import annotations

import random

from kalamdb.raft.core import RaftConfig, RaftCore, Role
from kalamdb.raft.messages import Message, MsgType, encode_membership
from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, PersistentState
from tests.raft.memnet import MemCluster


def _drain(core: RaftCore):
    rd = core.ready()
    core.advance(rd)
    return rd


def _leader() -> tuple[RaftCore, list[int]]:
    c = MemCluster([1, 2, 3], seed=21, voters=[1, 2, 3])
    lid = c.elect()
    core = c.core(lid)
    _drain(core)
    return core, [i for i in (1, 2, 3) if i != lid]


def _follower() -> RaftCore:
    config = encode_membership(Membership(frozenset({1, 2, 3})))
    state = PersistentState(HardState(2, 0, 1), None, [Entry(1, 1, EntryKind.CONFIG, config)])
    core = RaftCore(RaftConfig(2, pre_vote=False), state, random.Random(1))
    core.step(Message(MsgType.HEARTBEAT, 2, 1, 2, commit=1))
    _drain(core)
    assert core.role is Role.FOLLOWER and core.leader_id == 1
    return core


def _heartbeat_due(core: RaftCore) -> None:
    for _ in range(core.cfg.heartbeat_ticks):
        core.tick()


def test_a_leader_sends_its_heartbeats_while_its_fsync_is_in_flight():
    core, followers = _leader()
    core.propose(b"x")
    rd = core.ready()  # the caller now persists rd.entries (its messages went out early)
    _heartbeat_due(core)
    early = core.take_early_messages(leader_durable=True)
    assert sorted((m.type, m.to) for m in early) == sorted((MsgType.HEARTBEAT, f) for f in followers)
    core.advance(rd)
    assert not any(m.type == MsgType.HEARTBEAT for m in core.ready().messages)  # not sent twice


def test_a_leader_whose_term_or_messages_are_not_durable_holds_everything():
    core, followers = _leader()
    core.propose(b"x")
    rd = core.ready()
    _heartbeat_due(core)
    assert core.take_early_messages(leader_durable=False) == []
    core.advance(rd)
    assert sorted(m.to for m in core.ready().messages if m.type == MsgType.HEARTBEAT) == sorted(followers)


def test_proposals_during_the_fsync_keep_batching_into_the_next_ready():
    core, followers = _leader()
    core.propose(b"a")
    rd = core.ready()
    idx = core.propose(b"b")
    assert not any(m.type == MsgType.APP for m in core.take_early_messages(leader_durable=True))
    core.advance(rd)
    apps = [m for m in core.ready().messages if m.type == MsgType.APP]
    assert sorted(m.to for m in apps) == sorted(followers)
    assert all(idx in [e.index for e in m.entries] for m in apps)


def test_a_follower_answers_heartbeats_but_holds_its_ack_until_its_fsync_is_done():
    f = _follower()
    f.step(Message(MsgType.APP, 2, 1, 2, log_term=1, index=1, commit=1,
                   entries=[Entry(2, 2, EntryKind.NORMAL, b"x")]))
    rd = f.ready()  # the caller persists entry 2, then sends its ack
    assert [(m.type, m.index) for m in rd.messages] == [(MsgType.APP_RESP, 2)]
    f.step(Message(MsgType.APP, 2, 1, 2, log_term=2, index=2, commit=1,
                   entries=[Entry(2, 3, EntryKind.NORMAL, b"y")]))  # arrives during the fsync
    f.step(Message(MsgType.HEARTBEAT, 2, 1, 2, commit=1))
    early = f.take_early_messages(leader_durable=True)  # a follower is no leader: the flag changes nothing
    assert [(m.type, m.to) for m in early] == [(MsgType.HEARTBEAT_RESP, 1)]
    f.advance(rd)
    held = f.ready().messages
    assert [(m.type, m.index) for m in held] == [(MsgType.APP_RESP, 3)]


def test_a_vote_is_granted_only_after_the_fsync():
    f = _follower()
    f.step(Message(MsgType.APP, 2, 1, 2, log_term=1, index=1, commit=1,
                   entries=[Entry(2, 2, EntryKind.NORMAL, b"x")]))
    rd = f.ready()
    for _ in range(2 * f.cfg.election_ticks):  # the leader is gone: no lease holds the vote back
        f.tick()
    f.step(Message(MsgType.VOTE, 2, 3, 9, log_term=2, index=5))
    assert f.take_early_messages(leader_durable=True) == []
    f.advance(rd)
    grants = [m for m in f.ready().messages if m.type == MsgType.VOTE_RESP]
    assert [(m.to, m.reject) for m in grants] == [(3, False)]


def test_nothing_leaves_early_without_a_ready_being_persisted():
    core, followers = _leader()
    _heartbeat_due(core)
    assert core.take_early_messages(leader_durable=True) == []
    assert sorted(m.to for m in core.ready().messages if m.type == MsgType.HEARTBEAT) == sorted(followers)
