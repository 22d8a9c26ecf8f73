"""Runs the sans-IO Raft core for real: ticks from the event loop, fsynced storage on an I/O thread,
TCP peers, and the SQLite state machine on an apply thread.

The Ready contract (docs/design/raft.md) is followed literally: persist entries and hard state,
THEN send, then apply. While a Ready is being persisted the loop keeps stepping messages and
taking proposals, so the next Ready carries everything that arrived meanwhile: that is the group
commit (one fsync for many writes) and the batching of AppendEntries.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from kalamdb.engine import Database
from kalamdb.errors import KalamError
from kalamdb.node import forwarding as fw
from kalamdb.node.clock import clock
from kalamdb.node.failpoints import NodeFailpoints, die, exit_on_storage_failure
from kalamdb.raft.core import NotLeader, ProposalRejected, RaftConfig, RaftCore, Ready, Role
from kalamdb.raft.messages import Message
from kalamdb.raft.storage import LogStorage
from kalamdb.raft.transport import FrameTooLarge, PeerTransport
from kalamdb.raft.types import Entry, EntryKind, Membership, SnapshotMeta

log = logging.getLogger("kalamdb.raft.driver")

APPLY_BATCH = 1024
# Batches at most this big are applied on the event loop (see RaftDriver._apply_inline_ok).
INLINE_APPLY_MAX_ENTRIES = 64
INLINE_APPLY_MAX_BYTES = 16 * 1024
# Entries that are not engine commands (NOOP, CONFIG, cluster metadata) still advance the engine's
# applied index, identically on every replica, through this empty command.
ENGINE_NOOP = Database.noop_command()
META_PREFIX = b"\xc1"  # 0xc1 never starts a msgpack value: marks the driver's own metadata entries


class WriteOutcomeUnknown(KalamError):
    """The write was proposed but its fate is unknown (it may still commit): indefinite."""

    def __init__(self, message: str):
        super().__init__("CLUSTER_UNAVAILABLE", message, status=503,
                         details="indefinite: the write may or may not have been applied")


def definite_not_leader(message: str, leader_api: str | None = None) -> KalamError:
    err = KalamError("NOT_LEADER", message, status=503, details="definite: the write was not applied")
    err.leader_api = leader_api  # type: ignore[attr-defined]
    return err


class ForwardRefused(KalamError):
    """The leader (or the link to it) refused a forwarded proposal: nothing was appended (definite).
    `leader_id` is who the refusing node believes leads (0: unknown)."""

    def __init__(self, code: str, message: str, leader_id: int = 0):
        super().__init__(code, message, status=503, details="definite: the write was not applied")
        self.leader_id = leader_id


@dataclass(slots=True)
class _Proposal:
    term: int
    future: asyncio.Future


@dataclass(slots=True)
class _Forwarded:
    """A proposal sent to the leader that has not yet said where it appended it."""

    leader: int
    future: asyncio.Future


class SnapshotFiles:
    """The node's latest state-machine snapshot as a file, plus the staging file of one being received."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.staging = self.dir / "incoming.sqlite.part"

    def path(self, index: int) -> Path:
        return self.dir / f"snap-{index:020d}.sqlite"

    def latest(self) -> tuple[int, Path] | None:
        found = sorted(self.dir.glob("snap-*.sqlite"))
        if not found:
            return None
        return int(found[-1].name[5:25]), found[-1]

    def publish(self, tmp: Path, index: int) -> Path:
        """Make a complete snapshot file durable under its final name, then drop older ones."""
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.path(index)
        os.replace(tmp, final)
        self._fsync_dir()
        for old in self.dir.glob("snap-*.sqlite"):
            if old != final and int(old.name[5:25]) < index:
                old.unlink(missing_ok=True)
        return final

    def write_chunk(self, offset: int, data: bytes) -> None:
        mode = "wb" if offset == 0 else "r+b"
        if offset and not self.staging.exists():
            raise OSError(f"snapshot chunk at offset {offset} without a staging file")
        with open(self.staging, mode) as f:
            f.seek(offset)
            f.write(data)
            f.truncate(offset + len(data))

    def read_chunk(self, index: int, offset: int, max_bytes: int) -> tuple[bytes, bool] | None:
        path = self.path(index)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset)
                data = f.read(max_bytes)
        except FileNotFoundError:
            return None
        return data, offset + len(data) >= size

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RaftDriver:
    """One node's Raft: the core on the event loop, storage/apply on their own threads."""

    def __init__(self, *, node_id: int, raft_dir: Path, db: Any, transport_secret: bytes,
                 rpc_listen: tuple[str, int], cluster_id: str, peers: dict[int, tuple[str, int]],
                 tick_ms: int, heartbeat_ticks: int, election_ticks: int, snapshot_every: int = 0,
                 bootstrap: bool = False, on_meta: Callable[[dict], None] | None = None,
                 seed: int | None = None):
        self.node_id = node_id
        self.db = db
        self.raft_dir = Path(raft_dir)
        self.tick_s = tick_ms / 1000.0
        self.snapshot_every = snapshot_every
        self._bootstrap = bootstrap
        self._on_meta = on_meta
        self._rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        unsafe_removed_votes = os.environ.get("KALAMDB_UNSAFE_REMOVED_VOTES") == "1"  # planted bug, chaos only
        if unsafe_removed_votes:
            log.critical("UNSAFE MODE: KALAMDB_UNSAFE_REMOVED_VOTES=1 -- removed voters still count toward "
                         "commits; never use this outside checker tests")
        self._raft_cfg = RaftConfig(node_id=node_id, election_ticks=election_ticks,
                                    heartbeat_ticks=heartbeat_ticks, unsafe_removed_votes=unsafe_removed_votes)
        self.transport = PeerTransport(node_id, rpc_listen, transport_secret, on_message=self._on_message,
                                       cluster_id=cluster_id, logger=logging.getLogger("kalamdb.raft.transport"),
                                       rng=random.Random(self._rng.getrandbits(64)))
        self._initial_peers = dict(peers)
        self.snapshots = SnapshotFiles(self.raft_dir / "snapshots")
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"raft-io-{node_id}")
        self._apply_pool = ThreadPoolExecutor(1, thread_name_prefix=f"raft-apply-{node_id}")
        self.storage: LogStorage | None = None
        self.rpc_sock = None  # an inherited listening socket, when the parent bound the port
        self.core: RaftCore | None = None
        self._wake = asyncio.Event()
        self._apply_wake = asyncio.Event()
        self._apply_idle = asyncio.Event()
        self._apply_idle.set()
        self._apply_q: list[Entry] = []
        # index -> proposals waiting for that index to apply. Usually one; more when this node
        # proposed at an index as a deposed leader and a later leader placed a forwarded one there.
        self._proposals: dict[int, list[_Proposal]] = {}
        self._forwarded: dict[int, _Forwarded] = {}  # ctx -> proposal sent to the leader, not yet placed
        self._forward_ids = itertools.count(1)
        self._reads: dict[bytes, asyncio.Future] = {}
        self._read_ids = itertools.count(1)
        self._applied_waiters: list[tuple[int, int, asyncio.Future]] = []
        self._waiter_ids = itertools.count()
        self._leader_changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.applied_index = 0  # engine-applied (what reads and waiters see)
        self.last_snapshot_index = 0
        self._snapshotting = False
        self._snapshot_task: asyncio.Task | None = None
        self.fatal: BaseException | None = None
        self.failpoints = NodeFailpoints.from_env()  # disk faults (docs/faults.md), settable at run time
        self._exit_on_failure = exit_on_storage_failure()
        self.started_at = time.time()
        self.bad_frames = 0
        self.commit_latency_ms: list[float] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.storage, state = await loop.run_in_executor(self._io, self._open_storage)
        if state.snapshot is not None and self.db.applied_index < state.snapshot.index:
            # Crash between recording a received snapshot and installing it: install it now.
            path = self.snapshots.path(state.snapshot.index)
            log.warning("installing snapshot %s left from before a restart", path.name)
            await loop.run_in_executor(self._apply_pool, self.db.restore_from, path)
        self.applied_index = self.db.applied_index
        self.last_snapshot_index = state.snapshot.index if state.snapshot else 0
        self.core = RaftCore(self._raft_cfg, state, self._rng, applied=self.applied_index)
        fresh = not state.entries and state.snapshot is None and state.hard_state.term == 0
        if self._bootstrap and fresh and self.db.applied_index == 0:
            log.info("node %d bootstraps a one-voter cluster", self.node_id)
            self.core.bootstrap(Membership(voters=frozenset({self.node_id})))
            self.core.campaign()  # alone in the cluster: no reason to wait for an election timeout
        for peer_id, addr in self._initial_peers.items():
            self.transport.set_peer(peer_id, addr)
        await self.transport.start(sock=self.rpc_sock)
        self._tasks = [
            asyncio.create_task(self._ready_loop(), name=f"raft-ready-{self.node_id}"),
            asyncio.create_task(self._apply_loop(), name=f"raft-apply-{self.node_id}"),
            asyncio.create_task(self._tick_loop(), name=f"raft-tick-{self.node_id}"),
        ]
        self._wake.set()

    def _open_storage(self):
        storage = LogStorage.open(self.raft_dir / "log", failpoints=self.failpoints)
        state = storage.load()
        self._synced_term_vote = (state.hard_state.term, state.hard_state.vote)
        return storage, state

    async def stop(self) -> None:
        self._stopping = True
        if self._snapshot_task is not None:  # else it could write to the log after it was closed
            self._tasks.append(self._snapshot_task)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await t
        await self.transport.stop()
        err = KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503,
                         details="indefinite: the write may or may not have been applied")
        self._fail_all_proposals(err)
        for f in self._reads.values():
            if not f.done():
                f.set_exception(KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503))
        loop = asyncio.get_running_loop()
        self._apply_pool.shutdown(wait=True)
        if self.storage is not None:
            await loop.run_in_executor(self._io, self.storage.close)
        self._io.shutdown(wait=True)

    # ------------------------------------------------------------------ state for callers
    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return self.core.leader_id if self.core is not None else 0

    def set_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        if node_id != self.node_id:
            self.transport.set_peer(node_id, addr)

    def wake(self) -> None:
        self._wake.set()

    def _check_alive(self) -> None:
        if self.fatal is not None:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node stopped serving after a storage failure: {self.fatal}",
                             status=503)
        if self._stopping:
            raise KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503)

    async def wait_for_leader(self, timeout: float) -> int:
        """The known leader's id, waiting up to `timeout` seconds for one; 0 if none appeared."""
        deadline = time.monotonic() + timeout
        while not self.leader_id:
            left = deadline - time.monotonic()
            if left <= 0:
                return 0
            self._leader_changed.clear()
            try:
                await asyncio.wait_for(self._leader_changed.wait(), left)
            except TimeoutError:
                return self.leader_id
        return self.leader_id

    # ------------------------------------------------------------------ proposals and reads
    def propose(self, data: bytes) -> asyncio.Future:
        """Propose on this (leader) node; the future gives (index, engine Outcome) once applied."""
        self._check_alive()
        core = self.core
        index = core.propose(data)  # NotLeader / ProposalRejected propagate
        fut = asyncio.get_running_loop().create_future()
        self._track(index, core.term, fut)
        self._wake.set()
        return fut

    def forward(self, leader_id: int, data: bytes) -> asyncio.Future:
        """Send a proposal to the leader over the peer transport (node/forwarding.py); the future
        gives (index, engine Outcome) once this node applied it, like `propose`. Raises
        ForwardRefused (definite) when it cannot even be sent."""
        self._check_alive()
        ctx = next(self._forward_ids)
        try:
            queued = self.transport.send(leader_id, fw.propose(ctx, data))
        except FrameTooLarge as exc:
            raise KalamError("PAYLOAD_TOO_LARGE", f"the write is too large to replicate: {exc}",
                             details="definite: the write was not applied") from None
        if not queued:
            raise ForwardRefused("FORWARD_FAILED", f"node {self.node_id} cannot reach the leader (node "
                                 f"{leader_id}) right now", leader_id)
        fut = asyncio.get_running_loop().create_future()
        fut.forward_ctx = ctx  # type: ignore[attr-defined]
        self._forwarded[ctx] = _Forwarded(leader_id, fut)
        return fut

    def abandon(self, fut: asyncio.Future) -> None:
        """The caller stopped waiting for a forwarded proposal (timeout): forget it if unplaced."""
        ctx = getattr(fut, "forward_ctx", None)
        if ctx is not None:
            self._forwarded.pop(ctx, None)

    async def wait_for_leader_change(self, old: int, timeout: float) -> int:
        """The leader id once it is neither `old` nor unknown; 0 at the deadline."""
        deadline = time.monotonic() + timeout
        while self.leader_id in (0, old):
            left = deadline - time.monotonic()
            if left <= 0:
                return 0
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), left)
        return self.leader_id

    def _track(self, index: int, term: int, fut: asyncio.Future) -> None:
        fut.raft_index = index  # type: ignore[attr-defined]
        waiting = self._proposals.get(index)
        if waiting is None:
            self._proposals[index] = [_Proposal(term, fut)]
        else:
            waiting.append(_Proposal(term, fut))

    def _fail_all_proposals(self, err: BaseException) -> None:
        for waiting in self._proposals.values():
            for p in waiting:
                if not p.future.done():
                    p.future.set_exception(err)
        self._proposals.clear()
        for f in self._forwarded.values():
            if not f.future.done():
                f.future.set_exception(err)
        self._forwarded.clear()

    def propose_meta(self, meta: dict) -> asyncio.Future:
        return self.propose(META_PREFIX + msgpack.packb(meta))

    async def read_index(self, timeout: float) -> int:
        """A linearizable read point (ReadIndex): the commit index confirmed by a quorum."""
        self._check_alive()
        ctx = self._read_ids.__next__().to_bytes(8, "big") + self.node_id.to_bytes(2, "big")
        fut = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            self.core.read_index(ctx)
            self._wake.set()
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._reads.pop(ctx, None)

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """True once the engine applied `index` here, False at the deadline (no polling)."""
        if self.applied_index >= index:
            return True
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_ids), fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return self.applied_index >= index
        finally:
            if not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ the loops
    def _on_message(self, src: int, payload: Any) -> None:
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
        if self.core is None or self.fatal is not None:
            return
        self.core.step(msg)
        self._wake.set()

    def _on_proposal_message(self, src: int, payload: list) -> None:
        try:
            m = fw.decode(payload)
        except ValueError as exc:
            self.bad_frames += 1
            log.warning("refused malformed proposal message from node %d: %s", src, exc)
            return
        if self.core is None:
            return
        if isinstance(m, fw.Propose):
            self._on_propose(src, m)
            return
        f = self._forwarded.get(m.ctx)
        if f is None or f.leader != src:
            return  # given up on (timeout, leader change) or not asked of this node: nothing to do
        del self._forwarded[m.ctx]
        if f.future.done():
            return
        if isinstance(m, fw.Refused):
            f.future.set_exception(ForwardRefused(
                m.code, f"node {src} did not take the write: "
                + ("it is not the leader" if m.code == fw.NOT_LEADER else "it is not accepting writes now"),
                m.leader_id))
        elif m.index <= self.applied_index:
            # Cannot happen with in-order delivery (the answer precedes the entry); if it did, this
            # node can no longer see which entry it applied there.
            f.future.set_exception(WriteOutcomeUnknown(
                f"write {m.index} was appended by node {src} but already applied here before the "
                "answer arrived"))
        else:
            self._track(m.index, m.term, f.future)

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
        # Queued before the Ready that carries the entry, so it reaches the follower first.
        self.transport.send(src, fw.accepted(m.ctx, index, core.term))
        self._wake.set()

    def _fail_unplaced_forwards(self, leader: int) -> None:
        """The leader changed while proposals sent to the old one were unanswered: the old leader
        may or may not have appended them, so their fate is unknown."""
        for ctx in [c for c, f in self._forwarded.items() if f.leader != leader]:
            f = self._forwarded.pop(ctx)
            if not f.future.done():
                f.future.set_exception(WriteOutcomeUnknown(
                    f"the leader (node {f.leader}) changed before it confirmed the write"))

    async def _tick_loop(self) -> None:
        core = self.core
        while True:
            await asyncio.sleep(clock.period(self.tick_s))  # the logical clock's period, not a wait for state
            if self.fatal is not None:
                continue
            core.tick()
            if core.has_ready():
                self._wake.set()

    async def _ready_loop(self) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        leader = core.leader_id
        while True:
            if not core.has_ready():
                self._wake.clear()
                await self._wake.wait()
                continue
            rd: Ready = core.ready()
            early = self._leader_sends_early(rd)
            if early:
                self._send(rd.messages)
            try:
                if rd.snapshot_chunks:
                    await loop.run_in_executor(self._io, self._write_chunks, rd.snapshot_chunks)
                if rd.snapshot is not None:
                    await self._install_snapshot(rd.snapshot)
                if rd.entries or rd.hard_state is not None:
                    if self._commit_only_inline_ok(rd):
                        self._persist(rd.entries, rd.hard_state)  # one buffered write, no fsync
                    else:
                        await loop.run_in_executor(self._io, self._persist, rd.entries, rd.hard_state)
            except Exception as exc:  # noqa: BLE001 - a storage failure must stop this node, loudly
                self._fail(exc)
                return
            if not early:
                self._send(rd.messages)
            if rd.committed:
                self._apply_q.extend(rd.committed)
                self._apply_wake.set()
            for rs in rd.read_states:
                fut = self._reads.get(rs.context)
                if fut is not None and not fut.done():
                    fut.set_result(rs.index)
            for req in rd.snapshot_requests:
                chunk = await loop.run_in_executor(self._io, self.snapshots.read_chunk, req.meta.index,
                                                   req.offset, req.max_bytes)
                if chunk is None:
                    core.report_snapshot(req.to, False)
                else:
                    core.provide_snapshot_chunk(req.to, req.meta.index, req.offset, chunk[0], chunk[1])
            core.advance(rd)
            if core.leader_id != leader:
                leader = core.leader_id
                log.info("node %d: leader is now %s (term %d, role %s)", self.node_id, leader or "unknown",
                         core.term, core.role.name.lower())
                self._leader_changed.set()
                if self._forwarded:
                    self._fail_unplaced_forwards(leader)

    def _leader_sends_early(self, rd: Ready) -> bool:
        """A leader whose term and vote are already durable may send before its own fsync, so its
        disk write and the followers' run in parallel (Raft thesis 10.2.1; etcd does the same).
        Safe because a leader's messages promise nothing about its own disk (it grants no votes in
        its term, and its APP carries entries it counts for itself only after `advance`), while a
        follower's acks and every vote still wait for the fsync."""
        hs = rd.hard_state
        return (self.core.role is Role.LEADER and (hs is None or (hs.term, hs.vote) == self._synced_term_vote)
                and rd.snapshot is None and not rd.snapshot_chunks)

    def _commit_only_inline_ok(self, rd: Ready) -> bool:
        """A Ready whose only durable change is the commit index needs no fsync (see _persist), so
        its one small write is done right here instead of through the I/O thread: that round trip
        sat between "committed" and "applied" on every node. Not while a snapshot may be recording
        its meta on the I/O thread, nor with storage failpoints armed (they may sleep)."""
        hs = rd.hard_state
        return (not rd.entries and hs is not None and (hs.term, hs.vote) == self._synced_term_vote
                and not rd.snapshot_chunks and rd.snapshot is None and not self._snapshotting
                and not getattr(self.failpoints, "_actions", True))

    def _persist(self, entries: list[Entry], hard_state) -> None:
        """Entries and term/vote are fsynced before anything is sent. A change of the commit index
        alone is written but not fsynced (as etcd's MustSync): commit is volatile in Raft, a restart
        relearns it from the leader, and the core lifts it to the engine's applied index. Skipping
        that fsync takes one whole disk flush off every write's path on the leader and followers."""
        st = self.storage
        if entries:
            st.append(entries)
        if hard_state is not None:
            st.set_hard_state(hard_state)
        if entries or hard_state is None or (hard_state.term, hard_state.vote) != self._synced_term_vote:
            st.sync()
            if hard_state is not None:
                self._synced_term_vote = (hard_state.term, hard_state.vote)

    def _write_chunks(self, chunks) -> None:
        for c in chunks:
            self.snapshots.write_chunk(c.offset, c.data)

    def _send(self, messages: list[Message]) -> None:
        if not messages:
            return
        by_dst: dict[int, list] = {}
        for m in messages:
            by_dst.setdefault(m.to, []).append(m.to_wire())
        for dst, wires in by_dst.items():
            if not self.transport.send_many(dst, wires) and self.core.is_leader:
                self.core.report_unreachable(dst)

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """Received snapshot: file durable, then meta durable, then the state machine replaced."""
        loop = asyncio.get_running_loop()
        while self._apply_q or not self._apply_idle.is_set():  # earlier committed entries go first
            self._apply_wake.set()
            await asyncio.sleep(0)  # let the apply loop take the queue (yield, not a timed wait)
            await self._apply_idle.wait()
        path = await loop.run_in_executor(self._io, self.snapshots.publish, self.snapshots.staging, meta.index)

        def record() -> None:
            self.storage.save_snapshot_meta(meta, compact=True)
            self.storage.sync()

        await loop.run_in_executor(self._io, record)
        await loop.run_in_executor(self._apply_pool, self.db.restore_from, path)
        self.last_snapshot_index = meta.index
        self._set_applied(self.db.applied_index)
        self._fail_covered_proposals(meta.index)
        log.info("node %d installed snapshot at index %d (term %d)", self.node_id, meta.index, meta.term)

    async def _apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._apply_q:
                self._apply_idle.set()
                self._apply_wake.clear()
                await self._apply_wake.wait()
                continue
            self._apply_idle.clear()
            batch, self._apply_q = self._apply_q[:APPLY_BATCH], self._apply_q[APPLY_BATCH:]
            batch = [e for e in batch if e.index > self.applied_index]
            if not batch:
                continue
            items = []
            for e in batch:
                if e.kind == EntryKind.NORMAL and not e.data.startswith(META_PREFIX):
                    items.append((e.index, e.data))
                else:
                    items.append((e.index, ENGINE_NOOP))
            try:
                if self._apply_inline_ok(items):
                    outcomes = self._apply_batch(items)
                else:
                    outcomes = await loop.run_in_executor(self._apply_pool, self._apply_batch, items)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                return
            for e, outcome in zip(batch, outcomes, strict=True):
                if e.kind == EntryKind.NORMAL and e.data.startswith(META_PREFIX):
                    self._apply_meta(e)
                waiting = self._proposals.pop(e.index, None)
                if waiting is None:
                    continue
                for p in waiting:
                    if p.future.done():
                        continue
                    if p.term == e.term:
                        p.future.set_result((e.index, outcome))
                    else:
                        p.future.set_exception(definite_not_leader(
                            f"leadership changed before write {e.index} committed; it was not applied"))
            self._set_applied(batch[-1].index)
            self._maybe_snapshot()

    def _fail_covered_proposals(self, index: int) -> None:
        """A snapshot replaced the state up to `index`: proposals waiting there will never see
        their entry applied one by one, so nobody can say whether they are in it."""
        for i in [i for i in self._proposals if i <= index]:
            for p in self._proposals.pop(i):
                if not p.future.done():
                    p.future.set_exception(WriteOutcomeUnknown(
                        f"write {i} was overtaken by a snapshot installed at index {index}"))

    def _apply_inline_ok(self, items: list) -> bool:
        """Whether this batch is small enough to apply on the event loop itself. Small batches cost
        tens of microseconds per entry in SQLite (no fsync in cluster mode); handing them to the
        apply thread costs more: two thread hand-offs and a GIL convoy in which the event loop waits
        for the apply thread (measured: ~15% less CPU per write at 64 clients). Never while the apply
        thread may hold the write connection (a snapshot being taken) or a state.apply failpoint is
        armed (it may sleep)."""
        if self._snapshotting or len(items) > INLINE_APPLY_MAX_ENTRIES:
            return False
        if "state.apply" in getattr(self.failpoints, "_actions", {"state.apply": "unknown"}):
            return False  # Failpoints has no public "is armed" query yet
        return sum(len(data) for _, data in items) <= INLINE_APPLY_MAX_BYTES

    def _apply_batch(self, items: list) -> list:
        self.failpoints.hit("state.apply")
        return self.db.apply_batch(items)

    def _apply_meta(self, e: Entry) -> None:
        try:
            meta = msgpack.unpackb(e.data[1:], raw=False)
        except Exception:  # noqa: BLE001 - a bad metadata entry is skipped identically everywhere
            log.error("skipping undecodable cluster metadata entry %d", e.index)
            return
        if self._on_meta is not None and isinstance(meta, dict):
            try:
                self._on_meta(meta)
            except Exception:
                log.exception("cluster metadata entry %d could not be applied", e.index)

    def _set_applied(self, index: int) -> None:
        self.applied_index = max(self.applied_index, index)
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= self.applied_index:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        """After a failed fsync or apply nothing on disk can be trusted: stop acknowledging anything."""
        self.fatal = exc
        if self._exit_on_failure:
            die(self.node_id, exc)
        log.critical("node %d: storage failure, refusing all further work until restarted: %r", self.node_id, exc)
        err = KalamError("CLUSTER_UNAVAILABLE", f"storage failure on node {self.node_id}: {exc}", status=503,
                         details="indefinite: the write may or may not have been applied")
        self._fail_all_proposals(err)
        self.transport.send = lambda *a, **k: False  # type: ignore[method-assign]
        self.transport.send_many = lambda *a, **k: False  # type: ignore[method-assign]

    # ------------------------------------------------------------------ snapshots and log purge
    def _maybe_snapshot(self) -> None:
        if (self.snapshot_every and not self._snapshotting
                and self.applied_index - self.last_snapshot_index >= self.snapshot_every):
            self._snapshot_task = asyncio.get_running_loop().create_task(self.take_snapshot())

    async def take_snapshot(self) -> int:
        """Snapshot the engine at its applied index, compact the log up to it; returns the index."""
        if self._snapshotting:
            raise KalamError("SQL_EXECUTION_ERROR", "a snapshot is already being taken")
        self._snapshotting = True
        loop = asyncio.get_running_loop()
        try:
            tmp = self.snapshots.dir / "taking.sqlite.part"

            def take() -> tuple[int, Path]:
                self.failpoints.hit("snapshot.write")
                tmp.unlink(missing_ok=True)
                index = self.db.snapshot_to(tmp)
                return index, self.snapshots.publish(tmp, index)

            index, _ = await loop.run_in_executor(self._apply_pool, take)
            core = self.core
            if core.snapshot is not None and index <= core.snapshot.index:
                return index
            meta = core.snapshot_meta_at(index)

            def record() -> None:
                self.storage.save_snapshot_meta(meta, compact=True)
                self.storage.sync()

            await loop.run_in_executor(self._io, record)
            core.compact(meta)
            self.last_snapshot_index = index
            log.info("node %d took a snapshot at index %d and compacted the log", self.node_id, index)
            return index
        finally:
            self._snapshotting = False

    # ------------------------------------------------------------------ control
    def campaign(self) -> None:
        self.core.campaign()
        self._wake.set()

    def step_down(self) -> None:
        self.core.step_down()
        self._wake.set()

    def transfer_leadership(self, target: int) -> None:
        self.core.transfer_leadership(target)
        self._wake.set()

    def add_learner(self, node_id: int) -> int:
        index = self.core.add_learner(node_id)
        self._wake.set()
        return index

    def change_membership(self, voters: set[int]) -> int:
        index = self.core.change_membership(voters)
        self._wake.set()
        return index

    def remove_learner(self, node_id: int) -> int:
        index = self.core.remove_learner(node_id)
        self._wake.set()
        return index


__all__ = [
    "ENGINE_NOOP",
    "META_PREFIX",
    "ForwardRefused",
    "NotLeader",
    "ProposalRejected",
    "RaftDriver",
    "SnapshotFiles",
    "WriteOutcomeUnknown",
    "definite_not_leader",
]
