"""Snapshots: taking one (by policy every `snapshot_every` applied entries, or on request) and
compacting the log after it, and installing one received from the leader.

A snapshot file is written on the apply thread (ordered with the entries around it, see
node/applier.py), then recorded in the log's metadata and the log compacted on the Raft thread. A
received snapshot is made durable (file, then metadata) before the state machine is replaced, and
the proposals it overtook end indefinite. The files themselves are node/snapshot_files.py's.
"""

from __future__ import annotations

import asyncio
import logging

from kalamdb.errors import KalamError
from kalamdb.node.driver_base import DriverBase
from kalamdb.node.proposals import WriteOutcomeUnknown, settle
from kalamdb.raft.types import SnapshotMeta

log = logging.getLogger("kalamdb.raft.driver")


class SnapshottingDriver(DriverBase):
    """Taking, recording and installing snapshots."""

    # ------------------------------------------------------------------ received snapshots (Raft thread)
    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """Received snapshot: file durable, then meta durable, then the state machine replaced. The
        file jobs run on the apply thread, after every entry committed before the snapshot."""
        applier, router = self.applier, self.router
        path = await asyncio.wrap_future(router.run(self.snapshots.publish, self.snapshots.staging, meta.index))
        self.storage.save_snapshot_meta(meta, compact=True)
        self.storage.sync()
        applied = await asyncio.wrap_future(router.run(applier.restore, path))
        self.last_snapshot_index = meta.index
        self._fail_covered_proposals(meta.index)
        self._on_main(self._after_apply, applied, [])
        log.info("node %d installed snapshot at index %d (term %d)", self.node_id, meta.index, meta.term)

    def _fail_covered_proposals(self, index: int) -> None:
        """A snapshot replaced the state up to `index`: proposals waiting there will never see
        their entry applied one by one, so nobody can say whether they are in it."""
        for i, waiting in self._proposals.pop_through(index):
            for p in waiting:
                self._on_main(settle, p.future, None, WriteOutcomeUnknown(
                    f"write {i} was overtaken by a snapshot installed at index {index}"))

    # ------------------------------------------------------------------ snapshots and log purge
    def _claim_snapshot(self) -> bool:
        with self._snapshot_lock:
            if self._snapshotting:
                return False
            self._snapshotting = True
            return True

    def _snapshot_due_at(self, applied: int) -> bool:
        """Does the policy ask for a snapshot once `applied` is applied?"""
        return bool(self.snapshot_every and applied - self.last_snapshot_index >= self.snapshot_every
                    and applied >= self._snapshot_due)

    def _maybe_snapshot(self) -> None:
        """(apply thread) Take a snapshot when the policy says so; the log is compacted after.
        A batch applied on the caller's loop never gets here with one due (`_light_batch`)."""
        if not self._snapshot_due_at(self.applied_index):
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
                self._on_main(settle, fut, None, exc)
            return
        finally:
            self._snapshotting = False
        if fut is not None:
            self._on_main(settle, fut, index, None)

    async def take_snapshot(self) -> int:
        """(caller's loop) Snapshot the state at its applied index, compact the log; the index."""
        self._check_alive()
        if not self._claim_snapshot():
            raise KalamError("SQL_EXECUTION_ERROR", "a snapshot is already being taken")
        try:
            index = await asyncio.wrap_future(self.router.run(self._write_snapshot))
        except BaseException:
            self._snapshotting = False
            raise
        fut = self._caller_loop().create_future()
        self._on_raft(self._record_snapshot, index, fut)
        return await fut
