"""COMMIT: a leader tells a pipelining follower that holds every entry about a new commit index
with a message that asks for no answer (raft/core.py `_send_commit`), where it used to send an
empty AppendEntries whose answer repeated what it already knew."""

from __future__ import annotations

import random

from kalamdb.raft.core import RaftConfig, RaftCore, Role
from kalamdb.raft.messages import Message, MsgType, encode_membership
from kalamdb.raft.progress import ProgressState
from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, PersistentState
from tests.raft.memnet import MemCluster


def _drain(core: RaftCore):
    rd = core.ready()
    core.advance(rd)
    return rd


def _leader_with_one_uncommitted_entry():
    """A 3-node leader whose followers are both replicating and were sent entry `idx`."""
    c = MemCluster([1, 2, 3], seed=11, voters=[1, 2, 3])
    lid = c.elect()
    core = c.core(lid)
    f2, f3 = [i for i in (1, 2, 3) if i != lid]
    idx = core.propose(b"x")
    rd = _drain(core)
    assert sorted(m.to for m in rd.messages if m.type == MsgType.APP) == sorted([f2, f3])
    assert all(core.progress[f].state == ProgressState.REPLICATE for f in (f2, f3))
    return core, lid, f2, f3, idx


def test_a_commit_goes_to_replicating_followers_as_commit_not_as_an_empty_append():
    core, lid, f2, f3, idx = _leader_with_one_uncommitted_entry()
    core.step(Message(MsgType.APP_RESP, lid, f2, core.term, index=idx))
    assert core.commit_index == idx
    rd = _drain(core)
    by_to = {m.to: m for m in rd.messages}
    assert set(by_to) == {f2, f3}
    for m in by_to.values():
        assert m.type == MsgType.COMMIT and not m.entries
        assert (m.index, m.log_term, m.commit) == (idx, core.term, idx)
    # f3 has not answered yet: its COMMIT names the last entry it was sent, which it will hold
    assert core.progress[f3].match < idx


def test_a_probed_follower_still_gets_an_empty_append_whose_answer_the_probe_needs():
    core, lid, f2, f3, idx = _leader_with_one_uncommitted_entry()
    pr = core.progress[f3]
    pr.become_probe()
    pr.match, pr.next = idx, idx + 1  # holds everything: only the commit is news to it
    core.step(Message(MsgType.APP_RESP, lid, f2, core.term, index=idx))
    rd = _drain(core)
    by_to = {m.to: m for m in rd.messages}
    assert by_to[f2].type == MsgType.COMMIT
    assert by_to[f3].type == MsgType.APP and by_to[f3].entries == []


def test_a_follower_commits_on_commit_without_answering():
    c = MemCluster([1, 2, 3], seed=12, voters=[1, 2, 3])
    lid = c.elect()
    c.core(lid).propose(b"x")
    seen: list[Message] = []
    c.drop = lambda m: seen.append(m) or False
    c.stabilize()
    idx = c.core(lid).last_index
    assert all(c.core(n).commit_index == idx for n in (1, 2, 3))
    commits = [m for m in seen if m.type == MsgType.COMMIT]
    assert commits, "the commit of the entry reached the followers by COMMIT"
    # Two followers: each acked the entry once, and nobody answered a COMMIT.
    acks = [m for m in seen if m.type == MsgType.APP_RESP]
    assert len(acks) == 2


def _follower(entries: list[Entry], commit: int) -> RaftCore:
    state = PersistentState(HardState(2, 0, commit), None, entries)
    core = RaftCore(RaftConfig(2, pre_vote=False), state, random.Random(1))
    core.step(Message(MsgType.HEARTBEAT, 2, 1, 2, commit=commit))
    _drain(core)
    assert core.role is Role.FOLLOWER and core.leader_id == 1
    return core


def _entries(*terms: int) -> list[Entry]:
    """Entries of these terms from index 1; the first is the 3-voter config."""
    config = encode_membership(Membership(frozenset({1, 2, 3})))
    return [Entry(t, i, EntryKind.CONFIG, config) if i == 1 else Entry(t, i, EntryKind.NORMAL, b"e%d" % i)
            for i, t in enumerate(terms, start=1)]


def test_commit_is_bounded_by_the_entry_it_names():
    f = _follower(_entries(1, 2, 2, 2), commit=1)
    f.step(Message(MsgType.COMMIT, 2, 1, 2, log_term=2, index=3, commit=4))
    assert f.commit_index == 3  # entry 4 is not known to match the leader's log
    rd = f.ready()
    assert [e.index for e in rd.committed] == [2, 3]
    assert rd.messages == []  # no answer


def test_commit_naming_an_entry_the_follower_lacks_or_holds_in_another_term_is_ignored():
    f = _follower(_entries(1, 1, 1), commit=1)
    f.step(Message(MsgType.COMMIT, 2, 1, 2, log_term=2, index=3, commit=3))  # entry 3 is term 1 here
    assert f.commit_index == 1
    f.step(Message(MsgType.COMMIT, 2, 1, 2, log_term=2, index=5, commit=5))  # beyond the log
    assert f.commit_index == 1
    assert f.ready().messages == []


def test_commit_never_lowers_the_commit_index():
    f = _follower(_entries(1, 2, 2), commit=3)
    f.step(Message(MsgType.COMMIT, 2, 1, 2, log_term=2, index=2, commit=2))
    assert f.commit_index == 3


def test_commit_from_a_newer_term_makes_a_candidate_follow_and_a_stale_leader_hears_of_it():
    f = _follower(_entries(1, 2), commit=2)
    f.campaign()
    assert f.role is Role.CANDIDATE
    _drain(f)
    f.step(Message(MsgType.COMMIT, 2, 3, f.term + 1, log_term=2, index=2, commit=2))
    assert f.role is Role.FOLLOWER and f.leader_id == 3
    stale = Message(MsgType.COMMIT, 2, 1, f.term - 1, log_term=2, index=2, commit=2)
    _drain(f)
    f.step(stale)
    answers = f.ready().messages
    assert [(m.type, m.to, m.term) for m in answers] == [(MsgType.APP_RESP, 1, f.term)]


def test_commit_round_trips_the_wire():
    m = Message(MsgType.COMMIT, 2, 1, 7, log_term=6, index=41, commit=40)
    assert Message.from_wire(m.to_wire()) == m
