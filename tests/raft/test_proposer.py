"""node/proposing.py's Proposer on its own: a core and a transport that only record, the real
thread hops on the test's loop. The cases that a live cluster reaches only by bad luck (an answer
from the wrong node, a placement at an index already committed, a leader change with forwards in
flight) are driven here one by one; tests/raft/test_driver.py runs the same code on real drivers."""

from __future__ import annotations

import asyncio

import pytest

from kalamdb.node import forwarding as fw
from kalamdb.node.health import NodeHealth
from kalamdb.node.hops import ThreadHops
from kalamdb.node.proposals import ForwardRefused, ProposalFuture, WriteOutcomeUnknown, settle
from kalamdb.node.proposing import Proposer
from kalamdb.raft.core import NotLeader
from kalamdb.raft.types import Entry


class RecordingCore:
    """What the Proposer asks of the core: propose, term, leader, commit index."""

    def __init__(self, *, leader: bool = True, term: int = 3, commit_index: int = 0, leader_id: int = 1):
        self.leader, self.term, self.commit_index, self.leader_id = leader, term, commit_index, leader_id
        self.log: list[bytes] = []

    def propose(self, data: bytes) -> int:
        if not self.leader:
            raise NotLeader(self.leader_id)
        self.log.append(data)
        return self.commit_index + len(self.log)


class RecordingTransport:
    def __init__(self, up: bool = True):
        self.up = up
        self.sent: list[tuple[int, list]] = []

    def send(self, dst: int, payload: list) -> bool:
        if self.up:
            self.sent.append((dst, payload))
        return self.up


def _proposer(core: RecordingCore, transport: RecordingTransport | None = None,
              health: NodeHealth | None = None) -> tuple[Proposer, list[int]]:
    hops = ThreadHops()
    hops.bind_caller()
    hops.bind_raft()  # one loop plays both threads: every hop is a queued callback on it
    health = health or NodeHealth(2, exit_on_failure=False, on_fatal=lambda err: None)
    wakes: list[int] = []
    p = Proposer(node_id=2, hops=hops, health=health, transport=transport or RecordingTransport(),  # type: ignore[arg-type]
                 core=lambda: core, wake=lambda: wakes.append(1))  # type: ignore[arg-type,return-value]
    return p, wakes


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)  # scheduling steps: let the queued hops run, not a wait for state


async def test_a_proposal_here_is_answered_by_the_apply_of_its_own_index_and_term():
    core = RecordingCore(term=3, commit_index=10)
    p, wakes = _proposer(core)
    fut = p.propose(b"cmd")
    await _turns()
    assert core.log == [b"cmd"] and wakes and fut.raft_index == 11 and not fut.done()
    for settlement in p.applied([Entry(term=3, index=11, data=b"cmd")], ["outcome"]):
        settle(*settlement)
    assert await fut == (11, "outcome")


async def _forward_to_node_1(commit_index: int) -> tuple[Proposer, ProposalFuture, int]:
    """A follower's proposal sent to node 1: the proposer, the write's future, its ctx."""
    transport = RecordingTransport()
    p, _ = _proposer(RecordingCore(leader=False, commit_index=commit_index), transport)
    fut = p.forward(1, b"cmd")
    await _turns()
    (dst, payload), = transport.sent
    assert dst == 1 and payload[0] == fw.PROPOSE
    return p, fut, payload[1]


async def test_a_forward_answered_by_a_node_it_was_not_sent_to_is_ignored():
    p, fut, ctx = await _forward_to_node_1(commit_index=5)
    p.on_message(3, fw.accepted(ctx, 9, 4))  # node 3 was never asked
    assert fut.raft_index is None
    p.on_message(1, fw.accepted(ctx, 9, 4))
    assert fut.raft_index == 9 and not fut.done()


async def test_a_placement_at_an_index_this_node_already_committed_ends_indefinite():
    p, fut, ctx = await _forward_to_node_1(commit_index=20)
    p.on_message(1, fw.accepted(ctx, 20, 4))
    await _turns()
    with pytest.raises(WriteOutcomeUnknown):
        await fut


async def test_a_leader_change_ends_only_the_forwards_the_new_leader_never_placed():
    core = RecordingCore(leader=False)
    p, _ = _proposer(core)
    to_old, to_new = p.forward(1, b"a"), p.forward(3, b"b")
    await _turns()
    p.leader_changed(3)
    await _turns()
    with pytest.raises(WriteOutcomeUnknown, match="node 1"):
        await to_old
    assert not to_new.done()


async def test_a_forward_that_cannot_be_sent_is_refused_definitely():
    p, _ = _proposer(RecordingCore(leader=False), RecordingTransport(up=False))
    fut = p.forward(1, b"cmd")
    await _turns()
    with pytest.raises(ForwardRefused) as e:
        await fut
    assert e.value.details.startswith("definite")


async def test_a_followers_proposal_to_a_non_leader_is_refused_with_who_leads():
    core = RecordingCore(leader=False, leader_id=3)
    transport = RecordingTransport()
    p, _ = _proposer(core, transport)
    p.on_message(2, fw.propose(77, b"cmd"))
    assert transport.sent == [(2, fw.refused(77, fw.NOT_LEADER, 3))]
    assert p.take_placements() == {}


async def test_the_answer_to_a_followers_proposal_is_handed_out_once_for_the_next_ready():
    core = RecordingCore(term=5, commit_index=7)
    p, wakes = _proposer(core)
    p.on_message(2, fw.propose(77, b"cmd"))
    assert wakes and p.from_peers == 1
    assert p.take_placements() == {2: [fw.accepted(77, 8, 5)]}
    assert p.take_placements() == {}


async def test_a_malformed_proposal_message_is_counted_and_dropped():
    core = RecordingCore()
    p, _ = _proposer(core)
    p.on_message(2, ["prop", -1, b"cmd"])
    p.on_message(2, ["prop_no", 1, "MADE_UP", 0])
    assert p.bad_frames == 2 and core.log == []


async def test_a_closed_node_settles_a_new_proposal_as_shutting_down():
    core = RecordingCore()
    health = NodeHealth(2, exit_on_failure=False, on_fatal=lambda err: None)
    p, _ = _proposer(core, health=health)
    fut = p.propose(b"cmd")
    health.stopping = True  # stops after the proposal was queued for the Raft thread
    await _turns()
    with pytest.raises(Exception, match="shutting down"):
        await fut
    assert core.log == []
