"""The driver's shared state, its thread hand-offs, and what callers wait on (a leader, an applied
index, a ReadIndex read point).

RaftDriver (node/driver.py) is built in layers, one concern per module: this base holds the state
every layer shares, the rules for crossing threads (`_on_raft`, `_on_main`, `call`) and for failing
(`_fail`); node/proposing.py adds proposals and their forwarding, node/snapshotting.py snapshots,
node/raft_loops.py the Raft thread's loops, and node/driver.py the lifecycle and the apply thread's
callbacks. The transport and the applier call the full driver back through the two entry points
declared here (`_on_message`, `_on_applied`).
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
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kalamdb.errors import KalamError
from kalamdb.node.applier import Applier
from kalamdb.node.apply_router import ApplyRouter
from kalamdb.node.failpoints import NodeFailpoints, die, exit_on_storage_failure
from kalamdb.node.proposals import Forwarded, Settlement, WaitingProposals, settle, shutting_down
from kalamdb.node.snapshot_files import SnapshotFiles
from kalamdb.node.state_machine import StateMachine
from kalamdb.raft.core import NotLeader, RaftConfig, RaftCore, RaftSafetyError, Role
from kalamdb.raft.types import Entry, HardState
from kalamdb.raftio.storage import LogStorage
from kalamdb.raftio.transport import LogThrottle, PeerTransport

log = logging.getLogger("kalamdb.raft.driver")


class DriverBase(ABC):
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
        self.router = ApplyRouter(self.applier, light=self._light_batch, post=self._on_main)
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
        self._unwritten_commit: HardState | None = None  # a commit-only hard state not yet written (raft_loops)
        # Raft thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # made anew on the Raft thread when it starts (an Event binds to the loop that first waits on it)
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._forwarded: dict[int, Forwarded] = {}  # ctx -> proposal sent to the leader, not yet placed
        self._placements: dict[int, list[list]] = {}  # follower -> answers to its proposals, not yet sent
        self._proposals = WaitingProposals()  # by index, until applied here
        self._snapshot_lock = threading.Lock()
        self._snapshotting = False
        self._snapshot_due = 0  # after a failed snapshot: not before this applied index
        # caller's loop
        self._main: asyncio.AbstractEventLoop | None = None
        self._main_thread = 0  # the thread running `_main`
        self._leader_changed = asyncio.Event()  # made anew by start(), on the caller's loop
        self._reads: dict[bytes, asyncio.Future] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future]] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ entry points (the full driver)
    @abstractmethod
    def _on_message(self, src: int, payload: Any) -> None:
        """(Raft thread) A payload from a peer: a Raft message or a forwarded proposal's."""

    @abstractmethod
    def _on_applied(self, batch: list[Entry], outcomes: list[Any]) -> None:
        """(apply thread) A batch of committed entries was applied, with their outcomes."""

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
            raise shutting_down() from None

    def _on_main(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the caller's loop soon (from any thread, that loop's own included)."""
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
            loop = self._caller_loop()
            if threading.get_ident() == self._main_thread:
                loop.call_soon(fn, *args)  # no wake-up needed: we are on it
            else:
                loop.call_soon_threadsafe(fn, *args)

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

    def _light_batch(self, entries: list[Entry]) -> bool:
        """(caller's loop) May this committed batch be applied right on the caller's loop: the
        state machine calls its commands light, and no snapshot falls due with it (node/apply_router.py)."""
        if self._stopping:
            return False  # the state machine may be closing: what is left goes to the (stopped) apply thread
        if self._snapshot_due_at(entries[-1].index) or self.failpoints.armed("state.apply"):
            return False  # a snapshot, or an injected apply fault (a delay, an error), is the apply thread's
        return self.db.light_batch(self.applier.commands(entries))

    @abstractmethod
    def _snapshot_due_at(self, applied: int) -> bool:
        """Does the snapshot policy ask for one once `applied` is applied (node/snapshotting.py)?"""

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

    def _fail_all_proposals(self, err: BaseException) -> None:
        """(caller's loop) every waiting proposal gets `err`."""
        waiting = self._proposals.pop_all()
        waiting += [f.future for f in list(self._forwarded.values())]
        self._forwarded.clear()
        for fut in waiting:
            settle(fut, None, err)

    # ------------------------------------------------------------------ Raft thread
    def _read_index_here(self, ctx: bytes) -> None:
        try:
            self.core.read_index(ctx)
        except NotLeader as exc:
            self._on_main(self._read_failed, ctx, exc)
            return
        self._wake.set()

    def set_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """(Raft thread) add a peer or move it to a new address."""
        if node_id != self.node_id:
            self.transport.set_peer(node_id, addr)

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
