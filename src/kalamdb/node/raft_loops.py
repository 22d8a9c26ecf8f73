"""The Raft thread's loops: messages from peers into the core, the logical clock's ticks, the
leader's maintenance step, and the Ready loop that persists, sends, hands committed entries to the
apply side and answers reads.

The Ready contract (docs/design/raft.md) is followed literally: persist entries and hard state,
THEN send (a leader may send first, see `_leader_sends_early`), then apply. While the loop is busy
the core keeps taking messages and proposals, so the next Ready carries everything that arrived
meanwhile: that is the group commit (one fsync for many writes) and the batching of AppendEntries.
The fsync itself runs on the log's sync thread (raftio/log_sync.py): while it is in flight this
thread keeps stepping messages and ticking, and sends what may leave before it ends (`_send_early`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kalamdb.node import forwarding as fw
from kalamdb.node.apply_router import ApplyRouter
from kalamdb.node.clock import clock
from kalamdb.node.failpoints import NodeFailpoints
from kalamdb.node.health import NodeHealth
from kalamdb.node.proposing import Proposer
from kalamdb.node.snapshot_files import SnapshotFiles
from kalamdb.node.snapshotting import Snapshotter
from kalamdb.raft.core import NotLeader, ProposalRejected, RaftCore, Ready, Role
from kalamdb.raft.messages import Message
from kalamdb.raft.types import Entry, HardState
from kalamdb.raftio.log_sync import LogSyncer
from kalamdb.raftio.storage import LogStorage
from kalamdb.raftio.transport import LogThrottle, PeerTransport

log = logging.getLogger("kalamdb.raft.driver")


class RaftLoops:
    """What runs on the Raft thread once the log is open: the message handler and three loops.
    Made on the Raft thread (`wake` is an event of its loop) with the core and the log it opened;
    everything it hands on goes through the parts it is given, never through the driver."""

    def __init__(self, *, node_id: int, core: RaftCore, storage: LogStorage, syncer: LogSyncer,
                 transport: PeerTransport, wake: asyncio.Event, health: NodeHealth, failpoints: NodeFailpoints,
                 proposer: Proposer, snapshotter: Snapshotter, snapshot_files: SnapshotFiles, router: ApplyRouter,
                 synced_term_vote: tuple[int, int], tick_s: float,
                 read_states: Callable[[list[tuple[bytes, int]]], None],
                 leader_changed: Callable[[int], None],
                 maintenance: Callable[[], None] | None = None, maintenance_every_s: float = 0.05):
        """`read_states(states)`: ReadIndex answers (context, index) are ready; `leader_changed(id)`:
        the core's leader changed (0: unknown); `maintenance()`: the leader's periodic step."""
        self.node_id = node_id
        self.core = core
        self.storage = storage
        self._syncer = syncer
        self.transport = transport
        self.wake = wake
        self._health = health
        self._failpoints = failpoints
        self._proposer = proposer
        self._snapshotter = snapshotter
        self._snapshot_files = snapshot_files
        self._router = router
        self._synced_term_vote = synced_term_vote
        self._unwritten_commit: HardState | None = None  # a commit-only hard state not yet written
        self._syncing = False  # an fsync of the log is in flight (the Ready loop awaits it)
        self._synced_ready_sent = False  # ... and the Ready it makes durable already sent its messages
        self._early_due = False  # a `_send_early` is scheduled
        self._tick_s = tick_s
        self._read_states = read_states
        self._leader_changed = leader_changed
        self.maintenance = maintenance
        self._maintenance_every_s = maintenance_every_s
        self._stall_log = LogThrottle(log, 10.0)
        self.bad_frames = 0  # malformed or misaddressed Raft messages refused
        self.stalls = 0  # ticks that fired more than 4 periods late
        self.max_tick_lateness_s = 0.0
        self.fsyncs = 0  # log syncs: one per group of entries (group commit)
        self.early_messages = 0  # messages sent while an fsync was in flight
        self.persisted_entries = 0

    # ------------------------------------------------------------------ messages from peers
    def on_message(self, src: int, payload: Any) -> None:
        """A payload from a peer: a Raft message into the core, or a forwarded proposal's."""
        if self._health.fatal is not None:
            return
        if fw.is_proposal_payload(payload):
            self._proposer.on_message(src, payload)
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
            self._health.fail(exc)
            return
        if self._syncing:
            self._schedule_early()
        self.wake.set()

    def _schedule_early(self) -> None:
        """One `_send_early` after this turn of the loop: the messages that arrive together leave
        together."""
        if not self._early_due:
            self._early_due = True
            asyncio.get_running_loop().call_soon(self._send_early)

    def _send_early(self) -> None:
        """While the log's fsync is in flight: send what the core says may leave before it ends (a
        leader's heartbeats, appends and commits, anyone's heartbeat answers), so that a slow disk
        costs no leadership. Acknowledgements and votes wait for the fsync (the next Ready)."""
        self._early_due = False
        core = self.core
        if not self._syncing or self._health.fatal is not None:
            return
        durable = self._synced_ready_sent and (core.term, core.vote) == self._synced_term_vote
        msgs = core.take_early_messages(leader_durable=durable)
        if msgs:
            self.early_messages += len(msgs)
            # with the answers to forwarded proposals ahead, as in `_send`: an append taken here
            # may carry a forwarded entry, and its proposer must learn the index first
            self._send_messages(msgs, self._proposer.take_placements())

    # ------------------------------------------------------------------ the loops
    async def tick_loop(self) -> None:
        core = self.core
        period = clock.period(self._tick_s)
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
            if self._health.fatal is not None:
                continue
            core.tick()
            if self._syncing:
                self._schedule_early()
            elif core.has_ready():
                self.wake.set()

    async def maintenance_loop(self) -> None:
        maintenance = self.maintenance
        if maintenance is None:
            return
        while True:
            await asyncio.sleep(self._maintenance_every_s)  # the maintenance period
            if self._health.fatal is not None or self.core.role is not Role.LEADER:
                continue
            try:
                maintenance()
            except (NotLeader, ProposalRejected):
                pass
            except Exception:
                log.exception("node %d: cluster maintenance failed", self.node_id)
            if self.core.has_ready():
                self.wake.set()

    async def ready_loop(self) -> None:
        core = self.core
        leader = core.leader_id
        while True:
            if not core.has_ready():
                self.wake.clear()
                await self.wake.wait()
                continue
            if self._health.fatal is not None:
                return
            self._failpoints.hit("raft.ready")
            rd: Ready = core.ready()
            early = self._leader_sends_early(rd)
            if early:
                self._send(rd.messages)
            try:
                if rd.snapshot_chunks:
                    for c in rd.snapshot_chunks:
                        self._snapshot_files.write_chunk(c.offset, c.data)
                if rd.snapshot is not None:
                    await self._snapshotter.install(rd.snapshot)
                if rd.entries or rd.hard_state is not None:
                    await self._persist(rd.entries, rd.hard_state, sent=early)
            except Exception as exc:  # noqa: BLE001 - a storage failure must stop this node, loudly
                self._health.fail(exc)
                return
            if not early:
                self._send(rd.messages)
            if rd.committed:
                self._router.submit(rd.committed)
            if rd.read_states:
                self._read_states([(rs.context, rs.index) for rs in rd.read_states])
            for req in rd.snapshot_requests:
                chunk = self._snapshot_files.read_chunk(req.meta.index, req.offset, req.max_bytes)
                if chunk is None:
                    core.report_snapshot(req.to, False)
                else:
                    core.provide_snapshot_chunk(req.to, req.meta.index, req.offset, chunk[0], chunk[1])
            core.advance(rd)
            if core.leader_id != leader:
                leader = core.leader_id
                log.info("node %d: leader is now %s (term %d, role %s)", self.node_id, leader or "unknown",
                         core.term, core.role.name.lower())
                self._leader_changed(leader)
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

    async def _persist(self, entries: list[Entry], hard_state: HardState | None, *, sent: bool) -> None:
        """Entries and term/vote are fsynced before anything is sent (`sent`: the Ready's messages
        left early, as a leader's may). The fsync runs on the sync thread; this thread keeps
        stepping and ticking meanwhile (`_send_early`). A change of the commit index
        alone is not even written when it comes alone (etcd writes it without an fsync): commit is
        volatile in Raft, a restart relearns it from the leader, and the core lifts it to the
        engine's applied index. It is written with the next entries or term/vote change, in the
        same write() as they are, and at a clean stop (`flush_commit`). That takes one system call
        per write off every node, on the leader between its commit and the apply."""
        st = self.storage
        if not entries and hard_state is not None and (hard_state.term, hard_state.vote) == self._synced_term_vote:
            self._unwritten_commit = hard_state
            return
        if hard_state is None:
            hard_state = self._unwritten_commit  # the commit known but not yet written rides along
        self._unwritten_commit = None
        st.append(entries, hard_state)
        self.persisted_entries += len(entries)
        ticket = st.begin_sync()
        if ticket is not None:
            self._syncing, self._synced_ready_sent = True, sent
            try:
                await self._syncer.sync(st, ticket)
            finally:
                self._syncing = False
            st.end_sync(ticket)
        self.fsyncs += 1
        if hard_state is not None:
            self._synced_term_vote = (hard_state.term, hard_state.vote)

    def flush_commit(self) -> None:
        """(a clean stop) Write the commit index known but not yet written; the log's close makes
        it durable. Best effort: a restart relearns it from the leader anyway."""
        pending, self._unwritten_commit = self._unwritten_commit, None
        if pending is not None and self._health.fatal is None:
            self.storage.set_hard_state(pending)

    def _send(self, messages: list[Message]) -> None:
        """A Ready's messages, one `send_many` (one write on an idle link) per peer, with the
        answers to that peer's forwarded proposals ahead of them (node/proposing.py)."""
        if self._health.fatal is not None:
            return
        self._send_messages(messages, self._proposer.take_placements())

    def _send_messages(self, messages: list[Message], by_dst: dict[int, list]) -> None:
        if not messages and not by_dst:
            return
        for m in messages:
            by_dst.setdefault(m.to, []).append(m.to_wire())
        for dst, wires in by_dst.items():
            if not self.transport.send_many(dst, wires) and self.core.is_leader:
                self.core.report_unreachable(dst)
