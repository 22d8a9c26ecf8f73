"""Proposals: a write proposed on this node as leader, or forwarded from this follower to the
leader inside the peer transport (node/forwarding.py), and the leader's side of a forwarded one.

A proposal's future is registered where its entry was appended (the leader's own index, or the
(index, term) the leader answered for a forwarded one) and settled when this node applies that
index (node/proposals.py). A forward the leader never placed ends with the leader change that
makes its fate unknown (`_fail_unplaced_forwards`).
"""

from __future__ import annotations

import contextlib
import logging

import msgpack

from kalamdb.errors import KalamError
from kalamdb.node import forwarding as fw
from kalamdb.node.applier import META_PREFIX
from kalamdb.node.driver_base import DriverBase
from kalamdb.node.proposals import (
    Forwarded,
    ForwardRefused,
    ProposalFuture,
    WriteOutcomeUnknown,
    settle,
    shutting_down,
)
from kalamdb.raft.core import NotLeader, ProposalRejected
from kalamdb.raftio.transport import FrameTooLarge

log = logging.getLogger("kalamdb.raft.driver")


def meta_command(meta: dict) -> bytes:
    """A cluster metadata entry (peers' addresses): the driver's own, never a state-machine command."""
    return META_PREFIX + msgpack.packb(meta)


class ProposingDriver(DriverBase):
    """Proposals from the caller's loop, placed on the Raft thread: here or on the leader."""

    # ------------------------------------------------------------------ proposals (caller's loop)
    def propose(self, data: bytes) -> ProposalFuture:
        """Propose on this (leader) node; the future gives (index, engine Outcome) once applied here,
        or raises NotLeader / ProposalRejected (definite: nothing appended)."""
        self._check_alive()
        fut = ProposalFuture(loop=self._caller_loop())
        self._on_raft(self._propose_here, data, fut)
        return fut

    def propose_meta(self, meta: dict) -> ProposalFuture:
        return self.propose(meta_command(meta))

    def forward(self, leader_id: int, data: bytes) -> ProposalFuture:
        """Send a proposal to the leader over the peer transport (node/forwarding.py); the future
        gives (index, engine Outcome) once this node applied it, like `propose`, or raises
        ForwardRefused (definite) when it could not even be sent or the leader refused it."""
        self._check_alive()
        fut = ProposalFuture(loop=self._caller_loop())
        ctx = next(self._ids)
        fut.forward_ctx = ctx
        self._on_raft(self._forward_here, leader_id, ctx, data, fut)
        return fut

    def abandon(self, fut: ProposalFuture) -> None:
        """The caller stopped waiting for a forwarded proposal (timeout): forget it if unplaced."""
        ctx = fut.forward_ctx
        if ctx is not None:
            with contextlib.suppress(KalamError):
                self._on_raft(self._forwarded.pop, ctx, None)

    # ------------------------------------------------------------------ proposals (Raft thread)
    def _propose_here(self, data: bytes, fut: ProposalFuture) -> None:
        if self.fatal is not None or self._stopping:
            self._on_main(settle, fut, None, shutting_down())
            return
        core = self.core
        try:
            index = core.propose(data)
        except (NotLeader, ProposalRejected) as exc:
            self._on_main(settle, fut, None, exc)
            return
        self._proposals.track(index, core.term, fut)
        self._wake.set()

    def _forward_here(self, leader_id: int, ctx: int, data: bytes, fut: ProposalFuture) -> None:
        try:
            queued = self.fatal is None and self.transport.send(leader_id, fw.propose(ctx, data))
        except FrameTooLarge as exc:
            self._on_main(settle, fut, None, KalamError(
                "PAYLOAD_TOO_LARGE", f"the write is too large to replicate: {exc}",
                details="definite: the write was not applied"))
            return
        if not queued:
            self._on_main(settle, fut, None, ForwardRefused(
                "FORWARD_FAILED", f"node {self.node_id} cannot reach the leader (node {leader_id}) right now",
                leader_id))
            return
        self._forwarded[ctx] = Forwarded(leader_id, fut)
        self.forwarded += 1

    def _on_proposal_message(self, src: int, payload: list) -> None:
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
            self._on_main(settle, f.future, None, ForwardRefused(
                m.code, f"node {src} did not take the write: "
                + ("it is not the leader" if m.code == fw.NOT_LEADER else "it is not accepting writes now"),
                m.leader_id))
        elif m.index <= self.core.commit_index:
            # Cannot happen with in-order delivery (the answer precedes the entry); if it did, the
            # entry may already be applied here and its outcome gone.
            self._on_main(settle, f.future, None, WriteOutcomeUnknown(
                f"write {m.index} was appended by node {src} but committed here before the answer arrived"))
        else:
            self._proposals.track(m.index, m.term, f.future)

    def _on_propose(self, src: int, m: fw.Propose) -> None:
        """A follower's proposal: append it (only that) and say where; the follower learns the
        outcome by applying its own log. Any refusal means nothing was appended."""
        core = self.core
        if self.fatal is not None or self._stopping:
            self.transport.send(src, fw.refused(m.ctx, fw.NOT_ACCEPTING, 0))
            return
        try:
            index = core.propose(m.command)
        except NotLeader:
            self.transport.send(src, fw.refused(m.ctx, fw.NOT_LEADER, core.leader_id))
            return
        except ProposalRejected:
            self.transport.send(src, fw.refused(m.ctx, fw.NOT_ACCEPTING, core.leader_id))
            return
        self.proposals_from_peers += 1
        # Sent by the next Ready, in the same write as and ahead of the AppendEntries that carry
        # the entry (node/raft_loops.py `_send`), so it reaches the follower first. Queued on the
        # link on its own, it held that write back behind the leader's fsync: a link with anything
        # queued takes no direct write, and the follower whose write it is got its entry late.
        self._placements.setdefault(src, []).append(fw.accepted(m.ctx, index, core.term))
        self._wake.set()

    def _fail_unplaced_forwards(self, leader: int) -> None:
        """The leader changed while proposals sent to the old one were unanswered: the old leader
        may or may not have appended them, so their fate is unknown."""
        for ctx in [c for c, f in self._forwarded.items() if f.leader != leader]:
            f = self._forwarded.pop(ctx)
            self._on_main(settle, f.future, None, WriteOutcomeUnknown(
                f"the leader (node {f.leader}) changed before it confirmed the write"))
