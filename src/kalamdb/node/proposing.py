"""Proposals: a write proposed on this node as leader, or forwarded from this follower to the
leader inside the peer transport (node/forwarding.py), and the leader's side of a forwarded one.

A proposal's future is registered where its entry was appended (the leader's own index, or the
(index, term) the leader answered for a forwarded one) and settled when this node applies that
index (node/proposals.py). A forward the leader never placed ends with the leader change that
makes its fate unknown (`leader_changed`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from kalamdb.errors import KalamError
from kalamdb.node import forwarding as fw
from kalamdb.node.applier import META_PREFIX
from kalamdb.node.health import NodeHealth
from kalamdb.node.hops import ThreadHops
from kalamdb.node.proposals import (
    Forwarded,
    ForwardRefused,
    ProposalFuture,
    Settlement,
    WaitingProposals,
    WriteOutcomeUnknown,
    settle,
    shutting_down,
)
from kalamdb.raft.core import NotLeader, ProposalRejected, RaftCore
from kalamdb.raft.types import Entry
from kalamdb.raftio.transport import FrameTooLarge, PeerTransport

log = logging.getLogger("kalamdb.raft.driver")


def meta_command(meta: dict) -> bytes:
    """A cluster metadata entry (peers' addresses): the driver's own, never a state-machine command."""
    return META_PREFIX + msgpack.packb(meta)


class Proposer:
    """Proposals from the caller's loop, placed on the Raft thread: here or on the leader.

    Its state is its own: which proposals wait for which index (`waiting`, shared with the apply
    thread that settles them), which forwards the leader has not placed yet, and the answers this
    leader owes followers for theirs (sent with the next Ready's messages, `take_placements`)."""

    def __init__(self, *, node_id: int, hops: ThreadHops, health: NodeHealth, transport: PeerTransport,
                 core: Callable[[], RaftCore], wake: Callable[[], None]):
        """`core()`: the Raft core (Raft thread, once started); `wake()`: the Ready loop has work."""
        self.node_id = node_id
        self._hops = hops
        self._health = health
        self._transport = transport
        self._core = core
        self._wake = wake
        self.waiting = WaitingProposals()  # by index, until applied here
        self._forwarded: dict[int, Forwarded] = {}  # ctx -> proposal sent to the leader, not yet placed
        self._placements: dict[int, list[list]] = {}  # follower -> answers to its proposals, not yet sent
        self._ctx = itertools.count(1)
        self.forwarded = 0  # proposals this node sent to a leader
        self.from_peers = 0  # proposals followers sent to this node as leader
        self.bad_frames = 0  # malformed proposal messages refused

    # ------------------------------------------------------------------ the caller's loop
    def propose(self, data: bytes) -> ProposalFuture:
        """Propose on this (leader) node; the future gives (index, engine Outcome) once applied here,
        or raises NotLeader / ProposalRejected (definite: nothing appended)."""
        self._health.check_alive()
        fut = ProposalFuture(loop=self._hops.caller_loop())
        self._hops.to_raft(self._propose_here, data, fut)
        return fut

    def forward(self, leader_id: int, data: bytes) -> ProposalFuture:
        """Send a proposal to the leader over the peer transport (node/forwarding.py); the future
        gives (index, engine Outcome) once this node applied it, like `propose`, or raises
        ForwardRefused (definite) when it could not even be sent or the leader refused it."""
        self._health.check_alive()
        fut = ProposalFuture(loop=self._hops.caller_loop())
        ctx = next(self._ctx)
        fut.forward_ctx = ctx
        self._hops.to_raft(self._forward_here, leader_id, ctx, data, fut)
        return fut

    def abandon(self, fut: ProposalFuture) -> None:
        """The caller stopped waiting for a forwarded proposal (timeout): forget it if unplaced."""
        ctx = fut.forward_ctx
        if ctx is not None:
            with contextlib.suppress(KalamError):
                self._hops.to_raft(self._forwarded.pop, ctx, None)

    def fail_all(self, err: BaseException) -> None:
        """Every waiting proposal gets `err` (the node failed or stopped)."""
        waiting = self.waiting.pop_all()
        waiting += [f.future for f in list(self._forwarded.values())]
        self._forwarded.clear()
        for fut in waiting:
            settle(fut, None, err)

    # ------------------------------------------------------------------ the Raft thread
    def _propose_here(self, data: bytes, fut: ProposalFuture) -> None:
        if self._health.closed:
            self._hops.to_caller(settle, fut, None, shutting_down())
            return
        core = self._core()
        try:
            index = core.propose(data)
        except (NotLeader, ProposalRejected) as exc:
            self._hops.to_caller(settle, fut, None, exc)
            return
        self.waiting.track(index, core.term, fut)
        self._wake()

    def _forward_here(self, leader_id: int, ctx: int, data: bytes, fut: ProposalFuture) -> None:
        try:
            queued = self._health.fatal is None and self._transport.send(leader_id, fw.propose(ctx, data))
        except FrameTooLarge as exc:
            self._hops.to_caller(settle, fut, None, KalamError(
                "PAYLOAD_TOO_LARGE", f"the write is too large to replicate: {exc}",
                details="definite: the write was not applied"))
            return
        if not queued:
            self._hops.to_caller(settle, fut, None, ForwardRefused(
                "FORWARD_FAILED", f"node {self.node_id} cannot reach the leader (node {leader_id}) right now",
                leader_id))
            return
        self._forwarded[ctx] = Forwarded(leader_id, fut)
        self.forwarded += 1

    def on_message(self, src: int, payload: list) -> None:
        """A proposal message from a peer: a follower's proposal (as leader), or the leader's answer
        to one of ours."""
        try:
            m = fw.decode(payload)
        except ValueError as exc:
            self.bad_frames += 1
            log.warning("refused malformed proposal message from node %d: %s", src, exc)
            return
        if isinstance(m, fw.Propose):
            self._on_propose(src, m)
            return
        f = self._forwarded.get(m.ctx)
        if f is None or f.leader != src:
            return  # given up on (timeout, leader change) or not asked of this node: nothing to do
        del self._forwarded[m.ctx]
        if isinstance(m, fw.Refused):
            self._hops.to_caller(settle, f.future, None, ForwardRefused(
                m.code, f"node {src} did not take the write: "
                + ("it is not the leader" if m.code == fw.NOT_LEADER else "it is not accepting writes now"),
                m.leader_id))
        elif m.index <= self._core().commit_index:
            # Cannot happen with in-order delivery (the answer precedes the entry); if it did, the
            # entry may already be applied here and its outcome gone.
            self._hops.to_caller(settle, f.future, None, WriteOutcomeUnknown(
                f"write {m.index} was appended by node {src} but committed here before the answer arrived"))
        else:
            self.waiting.track(m.index, m.term, f.future)

    def _on_propose(self, src: int, m: fw.Propose) -> None:
        """A follower's proposal: append it (only that) and say where; the follower learns the
        outcome by applying its own log. Any refusal means nothing was appended."""
        core = self._core()
        if self._health.closed:
            self._transport.send(src, fw.refused(m.ctx, fw.NOT_ACCEPTING, 0))
            return
        try:
            index = core.propose(m.command)
        except NotLeader:
            self._transport.send(src, fw.refused(m.ctx, fw.NOT_LEADER, core.leader_id))
            return
        except ProposalRejected:
            self._transport.send(src, fw.refused(m.ctx, fw.NOT_ACCEPTING, core.leader_id))
            return
        self.from_peers += 1
        # Sent by the next Ready, in the same write as and ahead of the AppendEntries that carry
        # the entry (node/raft_loops.py `_send`), so it reaches the follower first. Queued on the
        # link on its own, it held that write back behind the leader's fsync: a link with anything
        # queued takes no direct write, and the follower whose write it is got its entry late.
        self._placements.setdefault(src, []).append(fw.accepted(m.ctx, index, core.term))
        self._wake()

    def take_placements(self) -> dict[int, list[list]]:
        """The answers owed to followers, by follower, to send ahead of this Ready's messages."""
        placements, self._placements = self._placements, {}
        return placements

    def leader_changed(self, leader: int) -> None:
        """The leader changed while proposals sent to the old one were unanswered: the old leader
        may or may not have appended them, so their fate is unknown."""
        for ctx in [c for c, f in self._forwarded.items() if f.leader != leader]:
            f = self._forwarded.pop(ctx)
            self._hops.to_caller(settle, f.future, None, WriteOutcomeUnknown(
                f"the leader (node {f.leader}) changed before it confirmed the write"))

    def covered_by_snapshot(self, index: int) -> None:
        """A snapshot replaced the state up to `index`: proposals waiting there will never see
        their entry applied one by one, so nobody can say whether they are in it."""
        for i, waiting in self.waiting.pop_through(index):
            for p in waiting:
                self._hops.to_caller(settle, p.future, None, WriteOutcomeUnknown(
                    f"write {i} was overtaken by a snapshot installed at index {index}"))

    # ------------------------------------------------------------------ the apply thread
    def applied(self, batch: list[Entry], outcomes: list[Any]) -> list[Settlement]:
        """The answers this applied batch decides, to settle on the caller's loop."""
        return self.waiting.applied(batch, outcomes)
