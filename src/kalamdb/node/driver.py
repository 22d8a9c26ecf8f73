"""Runs the sans-IO Raft core for real, on a thread of its own.

Each node runs three kinds of threads, each with one job (ARCHITECTURE.md decision 15):
- the **Raft thread** (its own event loop): ticks, the peer transport, the core and the log storage.
  It runs no SQL, so heartbeats, votes and acknowledgements never wait behind a query. The log is
  fsynced right on this thread (as etcd's raft loop does): a fsync here is 0.06–0.2 ms, cheaper
  than handing it to another thread and back, and the leader sends its AppendEntries before it,
  so its disk and the followers' work in parallel;
- the **apply thread** (node/applier.py): committed entries into the state machine, snapshots;
- the **caller's event loop** (the HTTP server): proposals and reads come from there, and their
  futures are settled there. Thread hand-offs are `call_soon_threadsafe` (one per batch where it
  matters); nothing blocks a loop.

The Ready contract (docs/design/raft.md) is followed literally: persist entries and hard state,
THEN send (a leader may send first, see `_leader_sends_early`), then apply. While the loop is busy
the core keeps taking messages and proposals, so the next Ready carries everything that arrived
meanwhile: that is the group commit (one fsync for many writes) and the batching of AppendEntries.

Fail-stop: a storage or apply failure, a `RaftSafetyError` or any unexpected exception in one of the
loops ends the process (exit status 87, reason logged CRITICAL), or with
`KALAMDB_ON_STORAGE_FAILURE=refuse` leaves it refusing every request with the reason in its health.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from kalamdb.errors import KalamError, NotLeaderError
from kalamdb.node import forwarding as fw
from kalamdb.node.applier import META_PREFIX, Applier
from kalamdb.node.clock import clock
from kalamdb.node.failpoints import NodeFailpoints, die, exit_on_storage_failure
from kalamdb.node.snapshot_files import SnapshotFiles
from kalamdb.node.state_machine import StateMachine
from kalamdb.raft.core import NotLeader, ProposalRejected, RaftConfig, RaftCore, RaftSafetyError, Ready, Role
from kalamdb.raft.messages import Message
from kalamdb.raft.types import Entry, EntryKind, Membership, PersistentState, SnapshotMeta
from kalamdb.raftio.storage import LogStorage
from kalamdb.raftio.transport import FrameTooLarge, LogThrottle, PeerTransport

log = logging.getLogger("kalamdb.raft.driver")

STOP_TIMEOUT_S = 30.0


class WriteOutcomeUnknown(KalamError):
    """The write was proposed but its fate is unknown (it may still commit): indefinite."""

    def __init__(self, message: str):
        super().__init__("CLUSTER_UNAVAILABLE", message, status=503,
                         details="indefinite: the write may or may not have been applied")


def definite_not_leader(message: str, leader_api: str | None = None) -> NotLeaderError:
    return NotLeaderError(message, leader_api, details="definite: the write was not applied")


class ForwardRefused(KalamError):
    """The leader (or the link to it) refused a forwarded proposal: nothing was appended (definite).
    `leader_id` is who the refusing node believes leads (0: unknown)."""

    def __init__(self, code: str, message: str, leader_id: int = 0):
        super().__init__(code, message, status=503, details="definite: the write was not applied")
        self.leader_id = leader_id


def _shutting_down() -> KalamError:
    return KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503,
                      details="indefinite: the write may or may not have been applied")


class ProposalFuture(asyncio.Future[Any]):
    """The answer to one proposal, (index, engine Outcome), plus what is known of it while it waits:
    where it was appended (so a timeout can name the write) and, when forwarded, its forward ctx."""

    raft_index: int | None = None
    forward_ctx: int | None = None


@dataclass(slots=True)
class _Proposal:
    term: int
    future: ProposalFuture


@dataclass(slots=True)
class _Forwarded:
    """A proposal sent to the leader that has not yet said where it appended it."""

    leader: int
    future: ProposalFuture


def _settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class RaftDriver:
    """One node's Raft: the core on its own thread, apply on another, answers on the caller's loop."""

    def __init__(self, *, node_id: int, raft_dir: Path, db: StateMachine, transport_secret: bytes,
                 rpc_listen: tuple[str, int], cluster_id: str, peers: dict[int, tuple[str, int]],
                 tick_ms: int, heartbeat_ticks: int, election_ticks: int, snapshot_every: int = 0,
                 bootstrap: bool = False, on_meta: Callable[[dict], None] | None = None,
                 maintenance: Callable[[], None] | None = None, maintenance_every_s: float = 0.05,
                 seed: int | None = None):
        self.node_id = node_id
        self.db = db
        self.raft_dir = Path(raft_dir)
        self.tick_s = tick_ms / 1000.0
        self.snapshot_every = snapshot_every
        self._bootstrap = bootstrap
        self._on_meta = on_meta  # runs on the Raft thread
        self._maintenance = maintenance  # runs on the Raft thread every maintenance_every_s
        self._maintenance_every_s = maintenance_every_s
        self._rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        unsafe_removed_votes = os.environ.get("KALAMDB_UNSAFE_REMOVED_VOTES") == "1"  # planted bug, chaos only
        if unsafe_removed_votes:
            log.critical("UNSAFE MODE: KALAMDB_UNSAFE_REMOVED_VOTES=1 -- removed voters still count toward "
                         "commits; never use this outside checker tests")
        self._raft_cfg = RaftConfig(node_id=node_id, election_ticks=election_ticks,
                                    heartbeat_ticks=heartbeat_ticks, unsafe_removed_votes=unsafe_removed_votes)
        self.transport = PeerTransport(node_id, rpc_listen, transport_secret, on_message=self._on_message,
                                       cluster_id=cluster_id, logger=logging.getLogger("kalamdb.raftio.transport"),
                                       rng=random.Random(self._rng.getrandbits(64)))
        self._initial_peers = dict(peers)
        self.snapshots = SnapshotFiles(self.raft_dir / "snapshots")
        self.failpoints = NodeFailpoints.from_env()  # disk faults (docs/faults.md), settable at run time
        self.applier = Applier(db, node_id=node_id, on_applied=self._on_applied, on_failure=self._fail,
                               before_apply=lambda: self.failpoints.hit("state.apply"))
        self._storage: LogStorage | None = None  # opened on the Raft thread by start()
        self.rpc_sock: socket.socket | None = None  # an inherited listening socket, when the parent bound the port
        self._core: RaftCore | None = None  # made on the Raft thread by start(), from the log it opened
        self.fatal: BaseException | None = None
        self._exit_on_failure = exit_on_storage_failure()
        self.started_at = time.time()
        self.bad_frames = 0
        self.stalls = 0  # ticks that fired more than 4 periods late
        self.max_tick_lateness_s = 0.0
        self._stall_log = LogThrottle(log, 10.0)
        self.fsyncs = 0  # log syncs: one per group of entries (group commit)
        self.persisted_entries = 0
        self.forwarded = 0  # proposals this node sent to a leader
        self.proposals_from_peers = 0  # proposals followers sent to this node as leader
        self.last_snapshot_index = 0
        self._stopping = False
        self._synced_term_vote = (0, 0)
        # Raft thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # made anew on the Raft thread when it starts (an Event binds to the loop that first waits on it)
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._forwarded: dict[int, _Forwarded] = {}  # ctx -> proposal sent to the leader, not yet placed
        # shared by the Raft thread (adds) and the apply thread (settles); index -> waiting proposals.
        # Usually one; more when this node proposed at an index as a deposed leader and a later
        # leader placed a forwarded write there.
        self._proposals: dict[int, list[_Proposal]] = {}
        self._plock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshotting = False
        self._snapshot_due = 0  # after a failed snapshot: not before this applied index
        # caller's loop
        self._main: asyncio.AbstractEventLoop | None = None
        self._leader_changed = asyncio.Event()  # made anew by start(), on the caller's loop
        self._reads: dict[bytes, asyncio.Future] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future]] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle (caller's loop)
    async def start(self) -> None:
        self._main = asyncio.get_running_loop()
        self._leader_changed = asyncio.Event()
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(started,), daemon=True,
                                        name=f"raft-{self.node_id}")
        self._thread.start()
        await asyncio.wrap_future(started)

    async def stop(self) -> None:
        self._stopping = True
        loop, stop = self._loop, self._stop_requested
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
        self._fail_all_proposals(_shutting_down())
        for f in self._reads.values():
            if not f.done():
                f.set_exception(KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503))
        await asyncio.to_thread(self.applier.stop, STOP_TIMEOUT_S)
        if self._storage is not None:
            await asyncio.to_thread(self._storage.close)

    def _thread_main(self, started: concurrent.futures.Future) -> None:
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._raft_main(started))
        finally:
            loop.close()

    async def _raft_main(self, started: concurrent.futures.Future) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        try:
            await self._open()
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            started.set_exception(exc)
            await self._close()
            return
        started.set_result(None)
        await self._stop_requested.wait()
        await self._close()

    async def _open(self) -> None:
        self._storage, state = self._open_storage()
        db = self.db
        if state.snapshot is not None and db.applied_index < state.snapshot.index:
            # Crash between recording a received snapshot and installing it: install it now.
            path = self.snapshots.path(state.snapshot.index)
            log.warning("installing snapshot %s left from before a restart", path.name)
            self.applier.restore(path)
        self.applier.applied_index = db.applied_index
        self.applied_index = db.applied_index
        self.last_snapshot_index = state.snapshot.index if state.snapshot else 0
        core = self._core = RaftCore(self._raft_cfg, state, self._rng, applied=self.applied_index)
        fresh = not state.entries and state.snapshot is None and state.hard_state.term == 0
        if self._bootstrap and fresh and db.applied_index == 0:
            log.info("node %d bootstraps a one-voter cluster", self.node_id)
            core.bootstrap(Membership(voters=frozenset({self.node_id})))
            core.campaign()  # alone in the cluster: no reason to wait for an election timeout
        for peer_id, addr in self._initial_peers.items():
            self.transport.set_peer(peer_id, addr)
        await self.transport.start(sock=self.rpc_sock)
        self.applier.start()
        self._tasks = [self._supervised(self._ready_loop(), "ready"), self._supervised(self._tick_loop(), "tick")]
        if self._maintenance is not None:
            self._tasks.append(self._supervised(self._maintenance_loop(), "maintenance"))
        self._wake.set()

    def _open_storage(self) -> tuple[LogStorage, PersistentState]:
        storage = LogStorage.open(self.raft_dir / "log", failpoints=self.failpoints)
        state = storage.load()
        self._synced_term_vote = (state.hard_state.term, state.hard_state.vote)
        return storage, state

    async def _close(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await t
        await self.transport.stop()

    def _supervised(self, coro: Any, name: str) -> asyncio.Task:
        """A Raft-thread loop whose unexpected end stops the node (never a node that answers health
        checks but no longer runs Raft)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"raft-{name}-{self.node_id}")

        def done(t: asyncio.Task) -> None:
            if t.cancelled() or self._stopping:
                return
            exc = t.exception() or RuntimeError(f"the Raft {name} loop ended unexpectedly")
            self._fail(exc)

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------------ state for callers (any thread)
    @property
    def core(self) -> RaftCore:
        """The Raft core; it exists once start() has opened the log (a caller before that is a bug)."""
        core = self._core
        if core is None:
            raise RuntimeError(f"node {self.node_id}: the Raft core is used before the driver started")
        return core

    @property
    def storage(self) -> LogStorage:
        """The Raft log, open once start() has run (a caller before that is a bug)."""
        storage = self._storage
        if storage is None:
            raise RuntimeError(f"node {self.node_id}: the Raft log is used before the driver started")
        return storage

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return self._core.leader_id if self._core is not None else 0

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    @applied_index.setter
    def applied_index(self, value: int) -> None:
        self.applier.applied_index = value

    def _check_alive(self) -> None:
        if self.fatal is not None:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node stopped serving after a failure: {self.fatal!r}",
                             status=503)
        if self._stopping:
            raise KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503)

    def _on_raft(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the Raft thread soon (from any thread)."""
        loop = self._loop
        if loop is None:
            raise KalamError("CLUSTER_UNAVAILABLE", "node is not started", status=503)
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the Raft loop is closed: the node is stopping
            raise _shutting_down() from None

    def _on_main(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the caller's loop soon (from the Raft or apply thread)."""
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
            self._caller_loop().call_soon_threadsafe(fn, *args)

    def _caller_loop(self) -> asyncio.AbstractEventLoop:
        """The loop start() ran on: proposals, reads and their futures live there."""
        main = self._main
        if main is None:
            raise KalamError("CLUSTER_UNAVAILABLE", "node is not started", status=503)
        return main

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) run on the Raft thread (cluster operations that touch the core); its result."""
        self._check_alive()
        cf: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                cf.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                cf.set_exception(exc)
            self._wake.set()

        self._on_raft(run)
        return await asyncio.wrap_future(cf)

    # ------------------------------------------------------------------ leader (caller's loop)
    async def wait_for_leader(self, timeout: float) -> int:
        """The known leader's id, waiting up to `timeout` seconds for one; 0 if none appeared."""
        return await self._wait_leader(lambda lid: lid != 0, timeout)

    async def wait_for_leader_change(self, old: int, timeout: float) -> int:
        """The leader id once it is neither `old` nor unknown; 0 at the deadline."""
        return await self._wait_leader(lambda lid: lid not in (0, old), timeout)

    async def _wait_leader(self, ok: Callable[[int], bool], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not ok(self.leader_id):
            left = deadline - time.monotonic()
            if left <= 0:
                return 0
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), left)
        return self.leader_id

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

    async def read_index(self, timeout: float) -> int:
        """A linearizable read point (ReadIndex): the commit index confirmed by a quorum."""
        self._check_alive()
        ctx = next(self._ids).to_bytes(8, "big") + self.node_id.to_bytes(2, "big")
        fut = self._caller_loop().create_future()
        self._reads[ctx] = fut
        try:
            self._on_raft(self._read_index_here, ctx)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._reads.pop(ctx, None)

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """True once the state machine applied `index` here, False at the deadline (no polling)."""
        if self.applied_index >= index:
            return True
        fut = self._caller_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._ids), fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return self.applied_index >= index
        finally:
            if not fut.done():
                fut.cancel()

    def _serve_reads(self, states: list[tuple[bytes, int]]) -> None:
        for ctx, index in states:
            fut = self._reads.get(ctx)
            if fut is not None and not fut.done():
                fut.set_result(index)

    def _read_failed(self, ctx: bytes, exc: BaseException) -> None:
        fut = self._reads.get(ctx)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    def _after_apply(self, applied: int, settled: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
        for fut, result, exc in settled:
            _settle(fut, result, exc)
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= applied:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)

    def _fail_all_proposals(self, err: BaseException) -> None:
        """(caller's loop) every waiting proposal gets `err`."""
        with self._plock:
            waiting = [p.future for ps in self._proposals.values() for p in ps]
            self._proposals.clear()
        waiting += [f.future for f in list(self._forwarded.values())]
        self._forwarded.clear()
        for fut in waiting:
            _settle(fut, None, err)

    # ------------------------------------------------------------------ proposals (Raft thread)
    def _propose_here(self, data: bytes, fut: ProposalFuture) -> None:
        if self.fatal is not None or self._stopping:
            self._on_main(_settle, fut, None, _shutting_down())
            return
        core = self.core
        try:
            index = core.propose(data)
        except (NotLeader, ProposalRejected) as exc:
            self._on_main(_settle, fut, None, exc)
            return
        self._track(index, core.term, fut)
        self._wake.set()

    def _forward_here(self, leader_id: int, ctx: int, data: bytes, fut: ProposalFuture) -> None:
        try:
            queued = self.fatal is None and self.transport.send(leader_id, fw.propose(ctx, data))
        except FrameTooLarge as exc:
            self._on_main(_settle, fut, None, KalamError(
                "PAYLOAD_TOO_LARGE", f"the write is too large to replicate: {exc}",
                details="definite: the write was not applied"))
            return
        if not queued:
            self._on_main(_settle, fut, None, ForwardRefused(
                "FORWARD_FAILED", f"node {self.node_id} cannot reach the leader (node {leader_id}) right now",
                leader_id))
            return
        self._forwarded[ctx] = _Forwarded(leader_id, fut)
        self.forwarded += 1

    def _read_index_here(self, ctx: bytes) -> None:
        try:
            self.core.read_index(ctx)
        except NotLeader as exc:
            self._on_main(self._read_failed, ctx, exc)
            return
        self._wake.set()

    def _track(self, index: int, term: int, fut: ProposalFuture) -> None:
        fut.raft_index = index
        with self._plock:
            waiting = self._proposals.get(index)
            if waiting is None:
                self._proposals[index] = [_Proposal(term, fut)]
            else:
                waiting.append(_Proposal(term, fut))

    def set_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """(Raft thread) add a peer or move it to a new address."""
        if node_id != self.node_id:
            self.transport.set_peer(node_id, addr)

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
            self._on_main(_settle, f.future, None, ForwardRefused(
                m.code, f"node {src} did not take the write: "
                + ("it is not the leader" if m.code == fw.NOT_LEADER else "it is not accepting writes now"),
                m.leader_id))
        elif m.index <= self.core.commit_index:
            # Cannot happen with in-order delivery (the answer precedes the entry); if it did, the
            # entry may already be applied here and its outcome gone.
            self._on_main(_settle, f.future, None, WriteOutcomeUnknown(
                f"write {m.index} was appended by node {src} but committed here before the answer arrived"))
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
        self.proposals_from_peers += 1
        # Queued before the Ready that carries the entry, so it reaches the follower first.
        self.transport.send(src, fw.accepted(m.ctx, index, core.term))
        self._wake.set()

    def _fail_unplaced_forwards(self, leader: int) -> None:
        """The leader changed while proposals sent to the old one were unanswered: the old leader
        may or may not have appended them, so their fate is unknown."""
        for ctx in [c for c, f in self._forwarded.items() if f.leader != leader]:
            f = self._forwarded.pop(ctx)
            self._on_main(_settle, f.future, None, WriteOutcomeUnknown(
                f"the leader (node {f.leader}) changed before it confirmed the write"))

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
                self.applier.submit(rd.committed)
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
        alone is written but not fsynced (as etcd's MustSync): commit is volatile in Raft, a restart
        relearns it from the leader, and the core lifts it to the engine's applied index. Skipping
        that fsync takes one whole disk flush off every write's path on the leader and followers."""
        st = self.storage
        if entries:
            st.append(entries)
            self.persisted_entries += len(entries)
        if hard_state is not None:
            st.set_hard_state(hard_state)
        if entries or hard_state is None or (hard_state.term, hard_state.vote) != self._synced_term_vote:
            st.sync()
            self.fsyncs += 1
            if hard_state is not None:
                self._synced_term_vote = (hard_state.term, hard_state.vote)

    def _send(self, messages: list[Message]) -> None:
        if not messages or self.fatal is not None:
            return
        by_dst: dict[int, list] = {}
        for m in messages:
            by_dst.setdefault(m.to, []).append(m.to_wire())
        for dst, wires in by_dst.items():
            if not self.transport.send_many(dst, wires) and self.core.is_leader:
                self.core.report_unreachable(dst)

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """Received snapshot: file durable, then meta durable, then the state machine replaced. The
        file jobs run on the apply thread, after every entry committed before the snapshot."""
        applier = self.applier
        path = await asyncio.wrap_future(applier.run(self.snapshots.publish, self.snapshots.staging, meta.index))
        self.storage.save_snapshot_meta(meta, compact=True)
        self.storage.sync()
        applied = await asyncio.wrap_future(applier.run(applier.restore, path))
        self.last_snapshot_index = meta.index
        self._fail_covered_proposals(meta.index)
        self._on_main(self._after_apply, applied, [])
        log.info("node %d installed snapshot at index %d (term %d)", self.node_id, meta.index, meta.term)

    def _fail_covered_proposals(self, index: int) -> None:
        """A snapshot replaced the state up to `index`: proposals waiting there will never see
        their entry applied one by one, so nobody can say whether they are in it."""
        with self._plock:
            covered = [(i, self._proposals.pop(i)) for i in [i for i in self._proposals if i <= index]]
        for i, waiting in covered:
            for p in waiting:
                self._on_main(_settle, p.future, None, WriteOutcomeUnknown(
                    f"write {i} was overtaken by a snapshot installed at index {index}"))

    # ------------------------------------------------------------------ the apply thread
    def _on_applied(self, batch: list[Entry], outcomes: list[Any]) -> None:
        settled: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        with self._plock:
            if self._proposals:
                for e, outcome in zip(batch, outcomes, strict=True):
                    waiting = self._proposals.pop(e.index, None)
                    if waiting is None:
                        continue
                    for p in waiting:
                        if p.term == e.term:
                            settled.append((p.future, (e.index, outcome), None))
                        else:
                            settled.append((p.future, None, definite_not_leader(
                                f"leadership changed before write {e.index} committed; it was not applied")))
        metas = [e for e in batch if e.kind == EntryKind.NORMAL and e.data.startswith(META_PREFIX)]
        if metas and self._on_meta is not None:
            self._on_raft(self._apply_metas, metas)
        self._on_main(self._after_apply, batch[-1].index, settled)
        self._maybe_snapshot()

    def _apply_metas(self, entries: list[Entry]) -> None:
        """(Raft thread) replicated cluster metadata, in log order: peers' addresses."""
        for e in entries:
            try:
                meta = msgpack.unpackb(e.data[1:], raw=False)
            except Exception:  # noqa: BLE001 - a bad metadata entry is skipped identically everywhere
                log.error("skipping undecodable cluster metadata entry %d", e.index)
                continue
            if isinstance(meta, dict) and self._on_meta is not None:
                try:
                    self._on_meta(meta)
                except Exception:
                    log.exception("cluster metadata entry %d could not be applied", e.index)

    # ------------------------------------------------------------------ failure
    def _fail(self, exc: BaseException) -> None:
        """(any thread) A failed fsync or apply, a safety violation or a dead loop: nothing on this
        node can be trusted any more. Exit (default), or refuse all work until restarted."""
        if self.fatal is not None:
            return
        self.fatal = exc
        kind = ("Raft safety violation" if isinstance(exc, RaftSafetyError)
                else "storage failure" if isinstance(exc, OSError) else "fatal error")
        if self._exit_on_failure:
            die(self.node_id, exc, kind)
        log.critical("node %d: %s, refusing all further work until restarted: %r", self.node_id, kind, exc)
        err = KalamError("CLUSTER_UNAVAILABLE", f"{kind} on node {self.node_id}: {exc}", status=503,
                         details="indefinite: the write may or may not have been applied")
        self._on_main(self._fail_all_proposals, err)

    # ------------------------------------------------------------------ snapshots and log purge
    def _claim_snapshot(self) -> bool:
        with self._snapshot_lock:
            if self._snapshotting:
                return False
            self._snapshotting = True
            return True

    def _maybe_snapshot(self) -> None:
        """(apply thread) Take a snapshot when the policy says so; the log is compacted after."""
        applied = self.applied_index
        if not (self.snapshot_every and applied - self.last_snapshot_index >= self.snapshot_every
                and applied >= self._snapshot_due):
            return
        if not self._claim_snapshot():
            return
        try:
            index = self._write_snapshot()
        except Exception:
            self._snapshotting = False
            log.exception("node %d: taking a snapshot failed; the log is kept and it is tried again after "
                          "%d more entries", self.node_id, self.snapshot_every)
            self._snapshot_due = self.applied_index + self.snapshot_every  # no retry storm
            return
        self._on_raft(self._record_snapshot, index, None)

    def _write_snapshot(self) -> int:
        """(apply thread) The state at its applied index, as a durable snapshot file."""
        self.failpoints.hit("snapshot.write")
        tmp = self.snapshots.dir / "taking.sqlite.part"
        tmp.unlink(missing_ok=True)
        index = self.db.snapshot_to(tmp)
        self.snapshots.publish(tmp, index)
        return index

    def _record_snapshot(self, index: int, fut: asyncio.Future | None) -> None:
        """(Raft thread) A snapshot file at `index` is durable: record it and compact the log."""
        try:
            core = self.core
            if core.snapshot is None or index > core.snapshot.index:
                meta = core.snapshot_meta_at(index)
                self.storage.save_snapshot_meta(meta, compact=True)
                self.storage.sync()
                core.compact(meta)
                self.last_snapshot_index = index
                log.info("node %d took a snapshot at index %d and compacted the log", self.node_id, index)
        except Exception as exc:  # noqa: BLE001 - the log storage failed: stop (fail-stop)
            self._fail(exc)
            if fut is not None:
                self._on_main(_settle, fut, None, exc)
            return
        finally:
            self._snapshotting = False
        if fut is not None:
            self._on_main(_settle, fut, index, None)

    async def take_snapshot(self) -> int:
        """(caller's loop) Snapshot the state at its applied index, compact the log; the index."""
        self._check_alive()
        if not self._claim_snapshot():
            raise KalamError("SQL_EXECUTION_ERROR", "a snapshot is already being taken")
        try:
            index = await asyncio.wrap_future(self.applier.run(self._write_snapshot))
        except BaseException:
            self._snapshotting = False
            raise
        fut = self._caller_loop().create_future()
        self._on_raft(self._record_snapshot, index, fut)
        return await fut


def meta_command(meta: dict) -> bytes:
    """A cluster metadata entry (peers' addresses): the driver's own, never a state-machine command."""
    return META_PREFIX + msgpack.packb(meta)


__all__ = [
    "META_PREFIX",
    "ForwardRefused",
    "NotLeader",
    "ProposalRejected",
    "RaftDriver",
    "SnapshotFiles",
    "WriteOutcomeUnknown",
    "definite_not_leader",
    "meta_command",
]
