"""A Raft-backed `Node`: the same interface as the single-node server, every write replicated.

Writes: proposed on the leader and answered once committed and applied; a follower sends the
command to the leader inside the peer transport and answers from its own apply. Reads: ReadIndex
by default (linearizable), or this node's own applied state with `consistency: local`.
This module holds the Node interface, writes and reads; the rest has a module of its own:
membership and the address book (node/cluster_membership.py), the CLUSTER statements
(node/cluster_statements.py), and what the node reports about the cluster (node/cluster_status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from kalamdb.errors import KalamError
from kalamdb.node.cluster_membership import RECONCILE_EVERY_S, AddressBook, Reconciler, apply_meta
from kalamdb.node.cluster_statements import ClusterStatements
from kalamdb.node.cluster_status import CLUSTER_COLUMNS, GROUP_COLUMNS, ClusterStatus
from kalamdb.node.config import ClusterConfig, Peer
from kalamdb.node.driver import RaftDriver
from kalamdb.node.expiry import expire_streams_forever
from kalamdb.node.failpoints import NodeFailpoints
from kalamdb.node.proposals import ForwardRefused, ProposalTimedOut, WriteOutcomeUnknown, await_within
from kalamdb.raft.core import NotLeader, ProposalRejected
from kalamdb.sql import statements as st

if TYPE_CHECKING:
    from kalamdb.engine import ClusterOp, Database, Outcome, Prepared, Principal

log = logging.getLogger("kalamdb.node")


class ClusterNode:
    def __init__(self, cfg: ClusterConfig, db: Database, data_dir: Path, *, expiry_interval_s: float = 1.0):
        self.cfg = cfg
        self.db = db
        self.node_id = cfg.node_id
        self.started_at = time.time()
        self._expiry_interval_s = expiry_interval_s
        raft_dir = Path(data_dir) / "raft"
        raft_dir.mkdir(parents=True, exist_ok=True)
        own = Peer(cfg.node_id, cfg.rpc_addr, cfg.api_addr)
        self.book = AddressBook(raft_dir / "peers.json", own, list(cfg.peers))
        self.driver = RaftDriver(
            node_id=cfg.node_id, raft_dir=raft_dir, db=db, transport_secret=cfg.secret.encode(),
            rpc_listen=cfg.rpc_hostport, cluster_id=cfg.cluster_id,
            peers={p.node_id: p.rpc_hostport for p in self.book.peers.values() if p.node_id != cfg.node_id},
            tick_ms=cfg.tick_ms, heartbeat_ticks=cfg.heartbeat_ticks, election_ticks=cfg.election_ticks,
            snapshot_every=cfg.snapshot_every, bootstrap=cfg.node_id == 1, on_meta=self._on_meta,
            maintenance=self._reconcile, maintenance_every_s=RECONCILE_EVERY_S)
        self._reconciler = Reconciler(self.book, self.driver)
        self._tasks: list[asyncio.Task] = []
        # Deliberately unsafe (for proving the chaos checkers bite): serve data reads from local
        # state without ReadIndex, so a partitioned or lagging follower returns stale values.
        self.unsafe_local_reads = os.environ.get("KALAMDB_UNSAFE_LOCAL_READS") == "1"
        self.status = ClusterStatus(cfg, self.driver, self.book, self.started_at)
        self.statements = ClusterStatements(cfg, self.driver, self.book)
        self.cluster_view = self.status.view  # other nodes' reports fill this node's gaps in system.cluster
        db.register_system_table("cluster", CLUSTER_COLUMNS, self.status.cluster_rows)
        db.register_system_table("cluster_groups", GROUP_COLUMNS, self.status.group_rows)

    # ------------------------------------------------------------------ Node interface
    @property
    def applied_index(self) -> int:
        return self.driver.applied_index

    def applied_at(self, index: int) -> float | None:
        return self.driver.applier.times.applied_at(index)

    @property
    def is_leader(self) -> bool:
        return self.driver.is_leader

    @property
    def failpoints(self) -> NodeFailpoints:
        return self.driver.failpoints

    def stats(self) -> dict[str, int | float]:
        """Commit and replication counters for /metrics (entries per fsync = persisted / fsyncs)."""
        return self.status.stats()

    async def start(self) -> None:
        if self.unsafe_local_reads:
            log.critical("UNSAFE MODE: KALAMDB_UNSAFE_LOCAL_READS=1 -- data reads skip ReadIndex and may be "
                         "stale; never use this outside checker tests")
        await self.driver.start()
        self._tasks = [asyncio.create_task(expire_streams_forever(
                           self.db, self.submit, self._expiry_interval_s, lambda: self.driver.is_leader),
                           name="stream-expiry"),
                       asyncio.create_task(self.cluster_view.run(), name="cluster-view")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await t
        await self.driver.stop()

    def leader_api(self) -> str | None:
        return self.statements.leader_api()

    # ------------------------------------------------------------------ writes and reads
    async def submit(self, command: bytes) -> tuple[int, Outcome]:
        """Replicate a command and return (index, engine Outcome) once this node applied it.
        On the leader it is proposed directly; on a follower it travels to the leader inside the
        peer transport (node/forwarding.py), and the answer comes from this node's own apply. A
        refusal is definite (nothing was appended), so it is retried with the next leader while
        the leader wait lasts."""
        driver = self.driver
        wait_s = self.cfg.leader_wait_ms / 1000
        deadline = time.monotonic() + wait_s
        leader = driver.leader_id or await driver.wait_for_leader(wait_s)
        refusal: ForwardRefused | None = None
        while True:
            if not leader:
                raise KalamError("LEADER_NOT_AVAILABLE",
                                 f"no leader elected within {self.cfg.leader_wait_ms} ms (is a majority of the "
                                 "cluster reachable?)", status=503, details="definite: the write was not applied")
            try:
                if leader == self.node_id:
                    fut = driver.propose(command)
                else:
                    fut = driver.forward(leader, command)
                return await await_within(fut, self.cfg.write_timeout_ms / 1000)
            except NotLeader:
                pass  # lost leadership between the check and the proposal: find the new leader
            except ProposalRejected as exc:
                raise KalamError("LEADER_NOT_AVAILABLE", f"leader is not accepting writes now: {exc}", status=503,
                                 details="definite: the write was not applied") from None
            except ForwardRefused as exc:
                if exc.code == "FORWARD_FAILED" or time.monotonic() >= deadline:
                    raise
                refusal = exc
                if exc.leader_id and exc.leader_id != leader:
                    leader = exc.leader_id
                    continue
            except ProposalTimedOut:
                driver.abandon(fut)
                where = fut.raft_index
                what = f"write {where} was proposed" if where else "the write was sent to the leader"
                raise WriteOutcomeUnknown(
                    f"{what} but not committed within {self.cfg.write_timeout_ms} ms (no quorum reachable?)"
                ) from None
            left = deadline - time.monotonic()
            leader = await driver.wait_for_leader_change(leader, left) if left > 0 else 0
            if not leader and refusal is not None:
                raise refusal

    async def read_barrier(self, prepared: Prepared, *, consistency: str | None = None,
                           min_applied_index: int | None = None) -> None:
        """Return once this node's applied state may serve the read at the asked consistency:
        after min_applied_index, and (default) after a ReadIndex round for data-table reads."""
        if consistency not in (None, "linearizable", "local"):
            raise KalamError("INVALID_INPUT", f"Unknown consistency '{consistency}' (use linearizable or local)")
        wait_s = self.cfg.leader_wait_ms / 1000
        if min_applied_index is not None and not await self.driver.wait_applied(min_applied_index, wait_s):
            raise KalamError("CLUSTER_UNAVAILABLE",
                             f"node {self.node_id} has applied {self.driver.applied_index}, not "
                             f"{min_applied_index}, after {self.cfg.leader_wait_ms} ms", status=503)
        if consistency != "local" and _reads_data(prepared) and not self.unsafe_local_reads:
            index = await self._read_index(wait_s)
            if not await self.driver.wait_applied(index, wait_s):
                raise KalamError("CLUSTER_UNAVAILABLE",
                                 f"node {self.node_id} could not apply up to read index {index} in time",
                                 status=503)

    async def _read_index(self, wait_s: float) -> int:
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not self.driver.leader_id:
                await self.driver.wait_for_leader(left)
                continue
            try:
                return await self.driver.read_index(min(left, max(0.2, self.cfg.election_timeout_ms[1] / 1000)))
            except NotLeader:
                await self.driver.wait_for_leader(left)
            except TimeoutError:
                continue  # lost with a leader change: ask again
        raise KalamError("LEADER_NOT_AVAILABLE", "no leader confirmed a linearizable read point in time "
                         "(use consistency 'local' to read this node's own state)", status=503)

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        return await self.driver.wait_applied(index, timeout_s)

    # ------------------------------------------------------------------ CLUSTER statements, status
    async def cluster(self, op: ClusterOp, principal: Principal) -> list[dict]:
        return await self.statements.run(op, principal)

    def health(self) -> dict[str, Any]:
        return self.status.health()

    def digest(self) -> dict:
        """The state digest together with the applied index it belongs to."""
        return {"applied_index": self.db.applied_index, "digest": self.db.digest(), "node_id": self.node_id}

    # ------------------------------------------------------------------ the driver's callbacks (Raft thread)
    def _on_meta(self, meta: dict) -> None:
        """A replicated metadata entry was applied (same order on every node)."""
        apply_meta(self.book, self.driver, meta)

    def _reconcile(self) -> None:
        """The leader's maintenance step: move the membership toward the address book."""
        self._reconciler.step()


def _reads_data(prepared: Prepared) -> bool:
    """Only data-table reads need ReadIndex. SHOW/DESCRIBE and queries that touch only `system.*`
    tables are answered from this node's own state (as upstream does). A table name without the
    `system` schema (a data table, or a CTE name) counts as data: the safe side."""
    for s in prepared.statements:
        if s.reads_data:
            return True  # e.g. CONSUME: topic messages are data
        if not isinstance(s, st.Query):
            continue  # SHOW, DESCRIBE, USE: catalog reads
        if s.ast is None:
            return True
        if any((t.db or "").lower() != "system" for t in s.ast.find_all(exp.Table)):
            return True
    return False
