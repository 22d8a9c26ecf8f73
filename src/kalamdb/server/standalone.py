"""The single-node `Node`: writes go through a group-committing writer thread, reads run locally.

The HTTP layer talks only to the `Node` interface (node/api.py), so a Raft-backed node can replace
this one without touching the request handling.
Group commit: every command waiting when the writer becomes free is applied in ONE `apply_batch`
call (one SQLite transaction, one fsync), so throughput grows with concurrency while each
acknowledgement still means "durable on disk".
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kalamdb.engine.localviews import process_cpu_percent, rss_bytes, uptime_human
from kalamdb.errors import KalamError
from kalamdb.node import cluster_results
from kalamdb.node.apply_times import ApplyTimes
from kalamdb.node.expiry import expire_streams_forever
from kalamdb.node.snapshot_files import SnapshotFiles

if TYPE_CHECKING:
    from kalamdb.engine import ClusterOp, Database, Outcome, Prepared, Principal

log = logging.getLogger("kalamdb.node")

MAX_BATCH = 1024


class Committer:
    """Batches concurrently submitted commands into single `apply_batch` calls on one writer thread."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH):
        self._db = db
        self._max_batch = max_batch
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kalamdb-writer")
        self._busy = False
        self._closed = False
        self._next_index = db.applied_index + 1
        self._idle: asyncio.Event | None = None
        self._applied_waiters: list[tuple[int, asyncio.Future]] = []
        self.times = ApplyTimes(db.applied_index)  # when each batch was applied
        self.batches = 0
        self.commands = 0

    @property
    def last_index(self) -> int:
        """Index of the last command handed to the writer."""
        return self._next_index - 1

    def submit(self, command: bytes) -> asyncio.Future[tuple[int, Outcome]]:
        if self._closed:
            raise KalamError("CLUSTER_UNAVAILABLE", "Server is shutting down", status=503)
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((command, fut))
        if not self._busy:
            self._dispatch()
        return fut

    def _dispatch(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        first = self._next_index
        self._next_index += len(batch)
        items = [(first + i, cmd) for i, (cmd, _) in enumerate(batch)]
        self._busy = True
        if self._idle is not None:
            self._idle.clear()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._writer, self._db.apply_batch, items)
        work.add_done_callback(lambda done: self._finish(done, batch, first))

    def _finish(self, done: asyncio.Future, batch: list, first: int) -> None:
        self.batches += 1
        self.commands += len(batch)
        exc = done.exception()
        if exc is not None:
            # The batch's fate on disk is unknown: a failure here is a storage fault. Fail the
            # requests (none was acknowledged) and resynchronise indexes with what is durable.
            log.error("apply_batch failed for indexes %d..%d: %r", first, first + len(batch) - 1, exc)
            err = KalamError("INTERNAL_ERROR", f"Write failed in the storage layer: {exc}")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            try:
                self._next_index = self._db.applied_index + 1
            except Exception:  # keep answering even if storage is broken
                log.exception("cannot read applied index after a failed batch")
        else:
            self.times.record(first + len(batch) - 1)
            for i, ((_, fut), outcome) in enumerate(zip(batch, done.result(), strict=True)):
                if not fut.done():
                    fut.set_result((first + i, outcome))
        self._busy = False
        if self._applied_waiters:
            applied = first + len(batch) - 1
            still = []
            for index, waiter in self._applied_waiters:
                if index <= applied or exc is not None:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    still.append((index, waiter))
            self._applied_waiters = still
        if self._pending:
            self._dispatch()
        elif self._idle is not None:
            self._idle.set()

    async def wait_applied(self, index: int) -> None:
        """Return once every command up to `index` (already handed to the writer) is applied."""
        if index <= self._db.applied_index or index > self.last_index:
            return
        fut = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await fut

    async def drain(self) -> None:
        """Refuse new commands and wait until every accepted one is applied."""
        self._closed = True
        while self._busy or self._pending:
            if self._idle is None:
                self._idle = asyncio.Event()
            if not self._busy and self._pending:
                self._dispatch()
            await self._idle.wait()
        self._writer.shutdown(wait=True)


class StandaloneNode:
    """A single node: its own log index sequence, durable through the engine's fsynced SQLite."""

    def __init__(self, db: Database, *, node_id: int = 1, expiry_interval_s: float = 1.0):
        self.db = db
        self.node_id = node_id
        self._committer = Committer(db)
        self._expiry_interval_s = expiry_interval_s
        self._expiry_task: asyncio.Task | None = None
        self.started_at = time.time()

    @property
    def applied_index(self) -> int:
        return self.db.applied_index

    def applied_at(self, index: int) -> float | None:
        return self._committer.times.applied_at(index)

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def failpoints(self) -> None:
        """A single node has no Raft log storage, hence no disk failpoints."""
        return None

    def health(self) -> dict[str, Any]:
        """Always its own leader."""
        up = int(time.time() - self.started_at)
        me = {"node_id": self.node_id, "role": "leader", "status": "active", "is_self": True, "is_leader": True,
              "current_term": 0, "last_applied_log": self.applied_index,
              "memory_usage_mb": round(rss_bytes() / (1 << 20), 2),
              "cpu_usage_percent": process_cpu_percent(), "uptime_seconds": up, "uptime_human": uptime_human(up)}
        return {"status": "healthy", "is_cluster_mode": False, "cluster_id": None, "node_id": self.node_id,
                "is_leader": True, "leader_id": self.node_id, "current_term": 0,
                "last_applied": self.applied_index, "commit_index": self.applied_index,
                "voters": [self.node_id], "learners": [], "nodes": [me]}

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        """Every command handed to the writer is applied soon; one beyond the log never will be."""
        if index > self._committer.last_index:
            return self.applied_index >= index
        try:
            await asyncio.wait_for(self._committer.wait_applied(index), timeout_s)
        except TimeoutError:
            pass
        return self.applied_index >= index

    def stats(self) -> dict[str, int | float]:
        """Group-commit counters for /metrics (commands per fsync = commands / batches)."""
        return {"commit_batches_total": self._committer.batches,
                "commit_commands_total": self._committer.commands,
                "commit_queue_depth": len(self._committer._pending)}

    async def start(self) -> None:
        self._expiry_task = asyncio.create_task(
            expire_streams_forever(self.db, self.submit, self._expiry_interval_s), name="stream-expiry")

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            try:
                await self._expiry_task
            except asyncio.CancelledError:
                pass
        await self._committer.drain()

    async def submit(self, command: bytes) -> tuple[int, Outcome]:
        return await self._committer.submit(command)

    async def read_barrier(self, prepared: Prepared, *, consistency: str | None = None,
                           min_applied_index: int | None = None) -> None:
        if consistency not in (None, "linearizable", "local", "leader"):
            raise KalamError("INVALID_INPUT", f"Unknown consistency '{consistency}' (linearizable, local)")
        if min_applied_index is not None and min_applied_index > self._committer.last_index:
            raise KalamError(
                "INVALID_INPUT",
                f"min_applied_index {min_applied_index} is beyond this node's log "
                f"(last index {self._committer.last_index})")
        if min_applied_index is not None:
            await self._committer.wait_applied(min_applied_index)
        # Every acknowledged write is already applied here, so local state is linearizable.
        # A write still in the writer is not acknowledged yet: reading without it is allowed.

    async def cluster(self, op: ClusterOp, principal: Principal) -> list[dict]:
        """A single node answers the statements that make sense for a one-node group, as upstream's
        single server does (it runs a one-node Raft group); membership and leadership ones need a
        cluster."""
        name = op.op
        if name in ("snapshot", "rebalance", "clear") and principal.role not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", f"CLUSTER {name.upper()} requires role dba or system")
        if name == "snapshot":
            # No Raft log to compact: every acknowledged write is already in the fsynced database
            # file, which is this node's snapshot at its applied index.
            return [cluster_results.group_action("snapshot", snapshot_index=self.applied_index)]
        if name == "rebalance":
            return [cluster_results.group_action("rebalance")]  # one node leads its one group
        if name == "clear":
            snapshots = self.db.data_dir / "raft" / "snapshots"  # where a cluster node keeps them
            if snapshots.is_dir():  # left from when this data directory served a cluster node
                return [cluster_results.clear(SnapshotFiles(snapshots).clear_old())]
            return [cluster_results.clear(cluster_results.ClearReport(str(snapshots), exists=False))]
        if name in ("list", "status"):
            raise KalamError("INVALID_SQL", f"CLUSTER {name.upper()} is not supported; "
                             "query the system.cluster table instead: SELECT * FROM system.cluster")
        raise KalamError(
            "INVALID_SQL", f"CLUSTER {name.upper().replace('_', ' ')} needs cluster mode; this server runs a "
            "single node (start it with a [cluster] section)")
