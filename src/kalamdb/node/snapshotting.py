"""Snapshots: taking one (by policy every `every` applied entries, or on request) and compacting
the log after it, and installing one received from the leader.

A snapshot file is written on the apply thread (ordered with the entries around it, see
node/applier.py), then recorded in the log's metadata and the log compacted on the Raft thread. A
received snapshot is made durable (file, then metadata) before the state machine is replaced, and
the proposals it overtook end indefinite. The files themselves are node/snapshot_files.py's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from kalamdb.errors import KalamError
from kalamdb.node.applier import Applier
from kalamdb.node.apply_router import ApplyRouter
from kalamdb.node.failpoints import NodeFailpoints
from kalamdb.node.health import NodeHealth
from kalamdb.node.hops import ThreadHops
from kalamdb.node.proposals import settle
from kalamdb.node.proposing import Proposer
from kalamdb.node.snapshot_files import SnapshotFiles
from kalamdb.node.state_machine import StateMachine
from kalamdb.raft.core import RaftCore
from kalamdb.raft.types import SnapshotMeta
from kalamdb.raftio.storage import LogStorage

log = logging.getLogger("kalamdb.raft.driver")


class Snapshotter:
    """Taking, recording and installing snapshots; one snapshot is taken at a time."""

    def __init__(self, *, node_id: int, every: int, db: StateMachine, files: SnapshotFiles, applier: Applier,
                 router: ApplyRouter, hops: ThreadHops, health: NodeHealth, failpoints: NodeFailpoints,
                 core: Callable[[], RaftCore], storage: Callable[[], LogStorage], proposer: Proposer,
                 on_installed: Callable[[int], None]):
        """`core()`, `storage()`: the Raft core and log (Raft thread, once started);
        `on_installed(applied)` (Raft thread): the state machine was replaced up to `applied`."""
        self.node_id = node_id
        self.every = every
        self._db = db
        self.files = files
        self._applier = applier
        self._router = router
        self._hops = hops
        self._health = health
        self._failpoints = failpoints
        self._core = core
        self._storage = storage
        self._proposer = proposer
        self._on_installed = on_installed
        self.last_index = 0  # the newest snapshot recorded in the log
        self._lock = threading.Lock()
        self._taking = False
        self._due_after = 0  # after a failed snapshot: not before this applied index

    # ------------------------------------------------------------------ received snapshots (Raft thread)
    async def install(self, meta: SnapshotMeta) -> None:
        """Received snapshot: file durable, then meta durable, then the state machine replaced. The
        file jobs run on the apply thread, after every entry committed before the snapshot."""
        path = await asyncio.wrap_future(self._router.run(self.files.publish, self.files.staging, meta.index))
        storage = self._storage()
        storage.save_snapshot_meta(meta, compact=True)
        storage.sync()
        applied = await asyncio.wrap_future(self._router.run(self._applier.restore, path))
        self.last_index = meta.index
        self._proposer.covered_by_snapshot(meta.index)
        self._on_installed(applied)
        log.info("node %d installed snapshot at index %d (term %d)", self.node_id, meta.index, meta.term)

    # ------------------------------------------------------------------ taking one
    def due_at(self, applied: int) -> bool:
        """Does the policy ask for a snapshot once `applied` is applied?"""
        return bool(self.every and applied - self.last_index >= self.every and applied >= self._due_after)

    def maybe_take(self, applied: int) -> None:
        """(apply thread) Take a snapshot when the policy says so; the log is compacted after.
        A batch applied on the caller's loop never gets here with one due (the driver's light check)."""
        if not self.due_at(applied) or not self._claim():
            return
        try:
            index = self._write()
        except Exception:
            self._taking = False
            log.exception("node %d: taking a snapshot failed; the log is kept and it is tried again after "
                          "%d more entries", self.node_id, self.every)
            self._due_after = applied + self.every  # no retry storm
            return
        self._hops.to_raft(self._record, index, None)

    async def take(self) -> int:
        """(caller's loop) Snapshot the state at its applied index, compact the log; the index."""
        self._health.check_alive()
        if not self._claim():
            raise KalamError("SQL_EXECUTION_ERROR", "a snapshot is already being taken")
        try:
            index = await asyncio.wrap_future(self._router.run(self._write))
        except BaseException:
            self._taking = False
            raise
        fut = self._hops.caller_loop().create_future()
        self._hops.to_raft(self._record, index, fut)
        return await fut

    def _claim(self) -> bool:
        with self._lock:
            if self._taking:
                return False
            self._taking = True
            return True

    def _write(self) -> int:
        """(apply thread) The state at its applied index, as a durable snapshot file."""
        self._failpoints.hit("snapshot.write")
        tmp = self.files.dir / "taking.sqlite.part"
        tmp.unlink(missing_ok=True)
        index = self._db.snapshot_to(tmp)
        self.files.publish(tmp, index)
        return index

    def _record(self, index: int, fut: asyncio.Future | None) -> None:
        """(Raft thread) A snapshot file at `index` is durable: record it and compact the log."""
        try:
            core, storage = self._core(), self._storage()
            if core.snapshot is None or index > core.snapshot.index:
                meta = core.snapshot_meta_at(index)
                storage.save_snapshot_meta(meta, compact=True)
                storage.sync()
                core.compact(meta)
                self.last_index = index
                log.info("node %d took a snapshot at index %d and compacted the log", self.node_id, index)
        except Exception as exc:  # noqa: BLE001 - the log storage failed: stop (fail-stop)
            self._health.fail(exc)
            if fut is not None:
                self._hops.to_caller(settle, fut, None, exc)
            return
        finally:
            self._taking = False
        if fut is not None:
            self._hops.to_caller(settle, fut, index, None)
