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

The Ready contract (docs/design/raft.md) is followed literally: persist, THEN send, then apply
(node/raft_loops.py). The driver is one class built in layers, one concern per module:
node/driver_base.py (shared state, thread hand-offs, waits, failure), node/proposing.py (proposals
and their forwarding), node/snapshotting.py (taking and installing snapshots), node/raft_loops.py
(the Raft thread's loops) and this module (starting, stopping, the apply thread's reports).

Fail-stop: a storage or apply failure, a `RaftSafetyError` or any unexpected exception in one of the
loops ends the process (exit status 87, reason logged CRITICAL), or with
`KALAMDB_ON_STORAGE_FAILURE=refuse` leaves it refusing every request with the reason in its health.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import Any

import msgpack

from kalamdb.errors import KalamError
from kalamdb.node.applier import META_PREFIX
from kalamdb.node.proposals import shutting_down
from kalamdb.node.raft_loops import RaftLoops
from kalamdb.raft.core import RaftCore
from kalamdb.raft.types import Entry, EntryKind, Membership, PersistentState
from kalamdb.raftio.storage import LogStorage

log = logging.getLogger("kalamdb.raft.driver")

STOP_TIMEOUT_S = 30.0


class RaftDriver(RaftLoops):
    """One node's Raft: the core on its own thread, apply on another, answers on the caller's loop.
    Built in layers (node/driver_base.py); this one starts and stops the threads and takes the
    apply thread's reports."""

    # ------------------------------------------------------------------ lifecycle (caller's loop)
    async def start(self) -> None:
        self._main = asyncio.get_running_loop()
        self._main_thread = threading.get_ident()
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
        self._fail_all_proposals(shutting_down())
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
        pending, self._unwritten_commit = self._unwritten_commit, None
        if pending is not None and self._storage is not None and self.fatal is None:
            with contextlib.suppress(Exception):  # a clean stop keeps the commit it knew; a restart relearns it anyway
                self._storage.set_hard_state(pending)  # made durable by the storage's close

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

    # ------------------------------------------------------------------ the apply thread
    def _on_applied(self, batch: list[Entry], outcomes: list[Any]) -> None:
        settled = self._proposals.applied(batch, outcomes)
        metas = [e for e in batch if e.kind == EntryKind.NORMAL and e.data.startswith(META_PREFIX)]
        if metas and self._on_meta is not None:
            self._on_raft(self._apply_metas, metas)
        if settled or self._applied_waiters:
            # Wake the caller's loop only when someone there waits: on a follower most batches
            # settle nothing. A waiter registered meanwhile re-checks the applied index after it is
            # queued (`wait_applied`), and the index is updated before this check, so none is lost.
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
