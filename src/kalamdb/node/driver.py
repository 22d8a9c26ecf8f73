"""Runs the sans-IO Raft core for real, on a thread of its own.

Each node runs three kinds of threads, each with one job (ARCHITECTURE.md decision 15):
- the **Raft thread** (its own event loop): ticks, the peer transport, the core and the log storage.
  It runs no SQL, so heartbeats, votes and acknowledgements never wait behind a query. It writes
  the log itself but leaves the fdatasync to the log's **sync thread** (raftio/log_sync.py) and
  keeps stepping and ticking meanwhile: a busy disk's 100+ ms fsync no longer freezes a leader's
  heartbeats. A leader sends its AppendEntries before its fsync, so its disk and the followers'
  work in parallel;
- the **apply thread** (node/applier.py): committed entries into the state machine, snapshots;
- the **caller's event loop** (the HTTP server): proposals and reads come from there, and their
  futures are settled there. Thread hand-offs are `call_soon_threadsafe` (one per batch where it
  matters, node/hops.py); nothing blocks a loop.

The driver is made of parts, each with its own state and told what it may use: node/hops.py
(crossing between the loops), node/health.py (fail-stop), node/proposing.py (proposals and their
forwarding), node/snapshotting.py (taking and installing snapshots), node/raft_loops.py (the Raft
thread's loops: persist, THEN send, then apply, as docs/design/raft.md says) and
node/apply_router.py (where a committed batch is applied). This module wires them, starts and stops
the threads, and keeps what callers wait on: a leader, an applied index, a ReadIndex read point.

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
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from kalamdb.errors import KalamError
from kalamdb.node.applier import META_PREFIX, Applier
from kalamdb.node.apply_router import ApplyRouter
from kalamdb.node.failpoints import NodeFailpoints, exit_on_storage_failure
from kalamdb.node.health import NodeHealth
from kalamdb.node.hops import ThreadHops
from kalamdb.node.proposals import ProposalFuture, Settlement, settle, shutting_down
from kalamdb.node.proposing import Proposer, meta_command
from kalamdb.node.raft_loops import RaftLoops
from kalamdb.node.snapshot_files import SnapshotFiles
from kalamdb.node.snapshotting import Snapshotter
from kalamdb.node.state_machine import StateMachine
from kalamdb.raft.core import NotLeader, RaftConfig, RaftCore, Role
from kalamdb.raft.types import Entry, EntryKind, Membership, PersistentState
from kalamdb.raftio.log_sync import LogSyncer
from kalamdb.raftio.storage import LogStorage
from kalamdb.raftio.transport import PeerTransport

log = logging.getLogger("kalamdb.raft.driver")

STOP_TIMEOUT_S = 30.0

T = TypeVar("T")


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
        self.started_at = time.time()
        self.rpc_sock: socket.socket | None = None  # an inherited listening socket, when the parent bound the port
        self._initial_peers = dict(peers)
        self._storage: LogStorage | None = None  # opened on the Raft thread by start()
        self._core: RaftCore | None = None  # made on the Raft thread by start(), from the log it opened
        self._loops: RaftLoops | None = None  # made on the Raft thread by start()
        self._syncer: LogSyncer | None = None  # the log's fsync thread, started with the log
        self._thread: threading.Thread | None = None
        # made anew on the Raft thread when it starts (an Event binds to the loop that first waits on it)
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.hops = ThreadHops()
        self.health = NodeHealth(node_id, exit_on_failure=exit_on_storage_failure(),
                                 on_fatal=lambda err: self.hops.to_caller(self.proposer.fail_all, err))
        self.failpoints = NodeFailpoints.from_env()  # disk faults (docs/faults.md), settable at run time
        self.transport = PeerTransport(node_id, rpc_listen, transport_secret, on_message=self._on_message,
                                       cluster_id=cluster_id, logger=logging.getLogger("kalamdb.raftio.transport"),
                                       rng=random.Random(self._rng.getrandbits(64)))
        self.applier = Applier(db, node_id=node_id, on_applied=self._on_applied, on_failure=self.health.fail,
                               before_apply=lambda: self.failpoints.hit("state.apply"))
        self.router = ApplyRouter(self.applier, light=self._light_batch, post=self.hops.to_caller)
        self.proposer = Proposer(node_id=node_id, hops=self.hops, health=self.health, transport=self.transport,
                                 core=lambda: self.core, wake=self._wake_ready_loop)
        self.snapshots = SnapshotFiles(self.raft_dir / "snapshots")
        self.snapshotter = Snapshotter(
            node_id=node_id, every=snapshot_every, db=db, files=self.snapshots, applier=self.applier,
            router=self.router, hops=self.hops, health=self.health, failpoints=self.failpoints,
            core=lambda: self.core, storage=lambda: self.storage, proposer=self.proposer,
            on_installed=lambda applied: self.hops.to_caller(self._after_apply, applied, []))
        # caller's loop
        self._leader_changed = asyncio.Event()  # made anew by start(), on the caller's loop
        self._reads: dict[bytes, asyncio.Future] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future]] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ state for callers (any thread)
    @property
    def core(self) -> RaftCore:
        """The Raft core; it exists once start() has opened the log (a caller before that is a bug)."""
        return self._started(self._core, "Raft core")

    @property
    def storage(self) -> LogStorage:
        """The Raft log, open once start() has run."""
        return self._started(self._storage, "Raft log")

    @property
    def loops(self) -> RaftLoops:
        """The Raft thread's loops and their counters, once start() has run."""
        return self._started(self._loops, "Raft loops")

    def _started(self, part: T | None, what: str) -> T:
        if part is None:
            raise RuntimeError(f"node {self.node_id}: the {what} is used before the driver started")
        return part

    @property
    def fatal(self) -> BaseException | None:
        """The failure that stopped this node's Raft for good, if any (node/health.py)."""
        return self.health.fatal

    @property
    def bad_frames(self) -> int:
        """Peer payloads refused as malformed or misaddressed."""
        return (self._loops.bad_frames if self._loops is not None else 0) + self.proposer.bad_frames

    @property
    def last_snapshot_index(self) -> int:
        return self.snapshotter.last_index

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

    # ------------------------------------------------------------------ lifecycle (caller's loop)
    async def start(self) -> None:
        self.hops.bind_caller()
        self._leader_changed = asyncio.Event()
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(started,), daemon=True,
                                        name=f"raft-{self.node_id}")
        self._thread.start()
        await asyncio.wrap_future(started)

    async def stop(self) -> None:
        self.health.stopping = True
        loop, stop = self.hops.raft_loop, self._stop_requested
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
        self.proposer.fail_all(shutting_down())
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
        self.hops.bind_raft()
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
        self._storage, state, synced_term_vote = self._open_storage()
        self._syncer = LogSyncer(f"raft-sync-{self.node_id}")
        db = self.db
        if state.snapshot is not None and db.applied_index < state.snapshot.index:
            # Crash between recording a received snapshot and installing it: install it now.
            path = self.snapshots.path(state.snapshot.index)
            log.warning("installing snapshot %s left from before a restart", path.name)
            self.applier.restore(path)
        self.applier.applied_index = db.applied_index
        self.snapshotter.last_index = state.snapshot.index if state.snapshot else 0
        core = self._core = RaftCore(self._raft_cfg, state, self._rng, applied=self.applied_index)
        fresh = not state.entries and state.snapshot is None and state.hard_state.term == 0
        if self._bootstrap and fresh and db.applied_index == 0:
            log.info("node %d bootstraps a one-voter cluster", self.node_id)
            core.bootstrap(Membership(voters=frozenset({self.node_id})))
            core.campaign()  # alone in the cluster: no reason to wait for an election timeout
        loops = self._loops = RaftLoops(
            node_id=self.node_id, core=core, storage=self._storage, syncer=self._syncer, transport=self.transport,
            wake=self._wake,
            health=self.health, failpoints=self.failpoints, proposer=self.proposer, snapshotter=self.snapshotter,
            snapshot_files=self.snapshots, router=self.router, synced_term_vote=synced_term_vote,
            tick_s=self.tick_s, read_states=lambda states: self.hops.to_caller(self._serve_reads, states),
            leader_changed=self._on_leader_change, maintenance=self._maintenance,
            maintenance_every_s=self._maintenance_every_s)
        for peer_id, addr in self._initial_peers.items():
            self.transport.set_peer(peer_id, addr)
        await self.transport.start(sock=self.rpc_sock)
        self.applier.start()
        self._tasks = [self._supervised(loops.ready_loop(), "ready"), self._supervised(loops.tick_loop(), "tick")]
        if self._maintenance is not None:
            self._tasks.append(self._supervised(loops.maintenance_loop(), "maintenance"))
        self._wake.set()

    def _open_storage(self) -> tuple[LogStorage, PersistentState, tuple[int, int]]:
        storage = LogStorage.open(self.raft_dir / "log", failpoints=self.failpoints)
        state = storage.load()
        return storage, state, (state.hard_state.term, state.hard_state.vote)

    async def _close(self) -> None:
        self.health.stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await t
        await self.transport.stop()
        if self._syncer is not None:
            self._syncer.close(STOP_TIMEOUT_S)  # a fsync still in flight ends before the log is closed
        if self._loops is not None:
            with contextlib.suppress(Exception):  # a clean stop keeps the commit it knew; a restart relearns it anyway
                self._loops.flush_commit()  # made durable by the storage's close

    def _supervised(self, coro: Any, name: str) -> asyncio.Task:
        """A Raft-thread loop whose unexpected end stops the node (never a node that answers health
        checks but no longer runs Raft)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"raft-{name}-{self.node_id}")

        def done(t: asyncio.Task) -> None:
            if t.cancelled() or self.health.stopping:
                return
            exc = t.exception() or RuntimeError(f"the Raft {name} loop ended unexpectedly")
            self.health.fail(exc)

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------------ proposals and snapshots (caller's loop)
    def propose(self, data: bytes) -> ProposalFuture:
        """Propose on this (leader) node (node/proposing.py)."""
        return self.proposer.propose(data)

    def propose_meta(self, meta: dict) -> ProposalFuture:
        return self.proposer.propose(meta_command(meta))

    def forward(self, leader_id: int, data: bytes) -> ProposalFuture:
        """Send a proposal to the leader over the peer transport (node/proposing.py)."""
        return self.proposer.forward(leader_id, data)

    def abandon(self, fut: ProposalFuture) -> None:
        self.proposer.abandon(fut)

    async def take_snapshot(self) -> int:
        """Snapshot the state at its applied index and compact the log; the index."""
        return await self.snapshotter.take()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) run on the Raft thread (cluster operations that touch the core); its result."""
        self.health.check_alive()
        cf: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                cf.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                cf.set_exception(exc)
            self._wake.set()

        self.hops.to_raft(run)
        return await asyncio.wrap_future(cf)

    def set_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """(Raft thread) add a peer or move it to a new address."""
        if node_id != self.node_id:
            self.transport.set_peer(node_id, addr)

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

    # ------------------------------------------------------------------ reads and applied waits (caller's loop)
    async def read_index(self, timeout: float) -> int:
        """A linearizable read point (ReadIndex): the commit index confirmed by a quorum."""
        self.health.check_alive()
        ctx = next(self._ids).to_bytes(8, "big") + self.node_id.to_bytes(2, "big")
        fut = self.hops.caller_loop().create_future()
        self._reads[ctx] = fut
        try:
            self.hops.to_raft(self._read_index_here, ctx)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._reads.pop(ctx, None)

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """True once the state machine applied `index` here, False at the deadline (no polling)."""
        if self.applied_index >= index:
            return True
        fut = self.hops.caller_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._ids), fut))
        if self.applied_index >= index:
            # Applied between the check above and the push: the apply thread may have seen no
            # waiter and skipped telling this loop (see `_on_applied`), so don't wait for it.
            fut.cancel()
            return True
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

    def _after_apply(self, applied: int, settled: list[Settlement]) -> None:
        for fut, result, exc in settled:
            settle(fut, result, exc)
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= applied:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)

    def _light_batch(self, entries: list[Entry]) -> bool:
        """(caller's loop) May this committed batch be applied right on the caller's loop: the
        state machine calls its commands light, and no snapshot falls due with it (node/apply_router.py)."""
        if self.health.stopping:
            return False  # the state machine may be closing: what is left goes to the (stopped) apply thread
        if self.snapshotter.due_at(entries[-1].index) or self.failpoints.armed("state.apply"):
            return False  # a snapshot, or an injected apply fault (a delay, an error), is the apply thread's
        return self.db.light_batch(self.applier.commands(entries))

    # ------------------------------------------------------------------ the Raft thread
    def _on_message(self, src: int, payload: Any) -> None:
        """(Raft thread) A payload from a peer, for the loops once they exist."""
        loops = self._loops
        if loops is not None:
            loops.on_message(src, payload)

    def _read_index_here(self, ctx: bytes) -> None:
        try:
            self.core.read_index(ctx)
        except NotLeader as exc:
            self.hops.to_caller(self._read_failed, ctx, exc)
            return
        self._wake.set()

    def _wake_ready_loop(self) -> None:
        self._wake.set()

    def _on_leader_change(self, leader: int) -> None:
        self.hops.to_caller(self._leader_changed.set)
        self.proposer.leader_changed(leader)

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

    # ------------------------------------------------------------------ the apply side
    def _on_applied(self, batch: list[Entry], outcomes: list[Any]) -> None:
        """(the thread that applied the batch) Settle the proposals it decides, hand cluster
        metadata to the Raft thread, and take a snapshot if the policy asks for one."""
        settled = self.proposer.applied(batch, outcomes)
        metas = [e for e in batch if e.kind == EntryKind.NORMAL and e.data.startswith(META_PREFIX)]
        if metas and self._on_meta is not None:
            self.hops.to_raft(self._apply_metas, metas)
        if settled or self._applied_waiters:
            # Wake the caller's loop only when someone there waits: on a follower most batches
            # settle nothing. A waiter registered meanwhile re-checks the applied index after it is
            # queued (`wait_applied`), and the index is updated before this check, so none is lost.
            self.hops.to_caller(self._after_apply, batch[-1].index, settled)
        self.snapshotter.maybe_take(self.applied_index)
