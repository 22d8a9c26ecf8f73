"""The Raft thread's loops: messages from peers into the core, the logical clock's ticks, the
leader's maintenance step, and the Ready loop that persists, sends, hands committed entries to the
apply thread and answers reads.

The Ready contract (docs/design/raft.md) is followed literally: persist entries and hard state,
THEN send (a leader may send first, see `_leader_sends_early`), then apply. While the loop is busy
the core keeps taking messages and proposals, so the next Ready carries everything that arrived
meanwhile: that is the group commit (one fsync for many writes) and the batching of AppendEntries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kalamdb.node import forwarding as fw
from kalamdb.node.clock import clock
from kalamdb.node.proposing import ProposingDriver
from kalamdb.node.snapshotting import SnapshottingDriver
from kalamdb.raft.core import NotLeader, ProposalRejected, Ready, Role
from kalamdb.raft.messages import Message
from kalamdb.raft.types import Entry

log = logging.getLogger("kalamdb.raft.driver")


class RaftLoops(ProposingDriver, SnapshottingDriver):
    """What runs on the Raft thread once it is started: the message handler and three loops."""

    # ------------------------------------------------------------------ the Raft thread's loops
    def _on_message(self, src: int, payload: Any) -> None:
        if self.core is None or self.fatal is not None:
            return
        if fw.is_proposal_payload(payload):
            self._on_proposal_message(src, payload)
            return
        try:
            msg = Message.from_wire(payload)
        except (ValueError, TypeError, KeyError) as exc:
            self.bad_frames += 1
            log.warning("refused malformed raft message from node %d: %s", src, exc)
            return
        if msg.frm != src or msg.to != self.node_id:
            self.bad_frames += 1
            log.warning("refused raft message from node %d claiming to be %d -> %d", src, msg.frm, msg.to)
            return
        try:
            self.core.step(msg)
        except Exception as exc:  # noqa: BLE001 - RaftSafetyError or a bug: the core can't be trusted now
            self._fail(exc)
            return
        self._wake.set()

    async def _tick_loop(self) -> None:
        core = self.core
        period = clock.period(self.tick_s)
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(period)  # the logical clock's period, not a wait for state
            late = time.monotonic() - t0 - period
            self.max_tick_lateness_s = max(self.max_tick_lateness_s, late)
            if late > 4 * period:  # the Raft thread did not get to run (CPU or GIL): say so
                self.stalls += 1
                self._stall_log.warning("stall", "node %d: the Raft thread ran %.0f ms late (a tick is %.0f ms; a "
                                        "stall longer than the election timeout costs a leader its leadership)",
                                        self.node_id, late * 1000, period * 1000)
            if self.fatal is not None:
                continue
            core.tick()
            if core.has_ready():
                self._wake.set()

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._maintenance_every_s)  # the maintenance period
            if self.fatal is not None or not self.is_leader:
                continue
            maintenance = self._maintenance
            assert maintenance is not None  # this loop runs only when a maintenance step was given
            try:
                maintenance()
            except (NotLeader, ProposalRejected):
                pass
            except Exception:
                log.exception("node %d: cluster maintenance failed", self.node_id)
            if self.core.has_ready():
                self._wake.set()

    async def _ready_loop(self) -> None:
        core = self.core
        leader = core.leader_id
        while True:
            if not core.has_ready():
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.fatal is not None:
                return
            self.failpoints.hit("raft.ready")
            rd: Ready = core.ready()
            early = self._leader_sends_early(rd)
            if early:
                self._send(rd.messages)
            try:
                if rd.snapshot_chunks:
                    for c in rd.snapshot_chunks:
                        self.snapshots.write_chunk(c.offset, c.data)
                if rd.snapshot is not None:
                    await self._install_snapshot(rd.snapshot)
                if rd.entries or rd.hard_state is not None:
                    self._persist(rd.entries, rd.hard_state)
            except Exception as exc:  # noqa: BLE001 - a storage failure must stop this node, loudly
                self._fail(exc)
                return
            if not early:
                self._send(rd.messages)
            if rd.committed:
                self.router.submit(rd.committed)
            if rd.read_states:
                self._on_main(self._serve_reads, [(rs.context, rs.index) for rs in rd.read_states])
            for req in rd.snapshot_requests:
                chunk = self.snapshots.read_chunk(req.meta.index, req.offset, req.max_bytes)
                if chunk is None:
                    core.report_snapshot(req.to, False)
                else:
                    core.provide_snapshot_chunk(req.to, req.meta.index, req.offset, chunk[0], chunk[1])
            core.advance(rd)
            if core.leader_id != leader:
                leader = core.leader_id
                log.info("node %d: leader is now %s (term %d, role %s)", self.node_id, leader or "unknown",
                         core.term, core.role.name.lower())
                self._on_main(self._leader_changed.set)
                if self._forwarded:
                    self._fail_unplaced_forwards(leader)
            # Let the transport deliver what arrived meanwhile: the next Ready batches all of it.
            await asyncio.sleep(0)

    def _leader_sends_early(self, rd: Ready) -> bool:
        """A leader whose term and vote are already durable may send before its own fsync, so its
        disk write and the followers' run in parallel (Raft thesis 10.2.1; etcd does the same).
        Safe because a leader's messages promise nothing about its own disk (it grants no votes in
        its term, and its APP carries entries it counts for itself only after `advance`), while a
        follower's acks and every vote still wait for the fsync."""
        hs = rd.hard_state
        return (self.core.role is Role.LEADER and (hs is None or (hs.term, hs.vote) == self._synced_term_vote)
                and rd.snapshot is None and not rd.snapshot_chunks)

    def _persist(self, entries: list[Entry], hard_state: Any) -> None:
        """Entries and term/vote are fsynced before anything is sent. A change of the commit index
        alone is not even written when it comes alone (etcd writes it without an fsync): commit is
        volatile in Raft, a restart relearns it from the leader, and the core lifts it to the
        engine's applied index. It is written with the next entries or term/vote change, in the
        same write() as they are, and at a clean stop. That takes one system call per write off
        every node, on the leader between its commit and the apply."""
        st = self.storage
        if not entries and hard_state is not None and (hard_state.term, hard_state.vote) == self._synced_term_vote:
            self._unwritten_commit = hard_state
            return
        if hard_state is None:
            hard_state = self._unwritten_commit  # the commit known but not yet written rides along
        self._unwritten_commit = None
        st.append(entries, hard_state)
        self.persisted_entries += len(entries)
        st.sync()
        self.fsyncs += 1
        if hard_state is not None:
            self._synced_term_vote = (hard_state.term, hard_state.vote)

    def _send(self, messages: list[Message]) -> None:
        """A Ready's messages, one `send_many` (one write on an idle link) per peer, with the
        answers to that peer's forwarded proposals ahead of them (node/proposing.py)."""
        if (not messages and not self._placements) or self.fatal is not None:
            return
        by_dst: dict[int, list] = {}
        if self._placements:
            by_dst, self._placements = self._placements, {}
        for m in messages:
            by_dst.setdefault(m.to, []).append(m.to_wire())
        for dst, wires in by_dst.items():
            if not self.transport.send_many(dst, wires) and self.core.is_leader:
                self.core.report_unreachable(dst)
