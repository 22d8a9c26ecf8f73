"""A Raft-backed `Node`: the same interface as the single-node server, every write replicated.

Writes: proposed on the leader and answered once committed and applied; a follower answers
NOT_LEADER with the leader's API address so the HTTP layer forwards the request. Reads: ReadIndex
by default (linearizable), or this node's own applied state with `consistency: local`.
Formation (OpenRaft style): node 1 bootstraps alone; the leader adds every known peer as a learner
and promotes it to voter once it has caught up. `CLUSTER JOIN` adds a peer at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from sqlglot import exp

from kalamdb.engine.localviews import uptime_human
from kalamdb.errors import KalamError
from kalamdb.node import cluster_results
from kalamdb.node.cluster_view import AGE_COLUMN, ClusterView
from kalamdb.node.config import ClusterConfig, Peer, split_hostport
from kalamdb.node.driver import RaftDriver
from kalamdb.node.expiry import expire_streams_forever
from kalamdb.node.failpoints import NodeFailpoints
from kalamdb.node.proposals import ForwardRefused, WriteOutcomeUnknown, definite_not_leader
from kalamdb.node.proposing import meta_command
from kalamdb.raft.core import NotLeader, ProposalRejected, Role
from kalamdb.sql import statements as st

if TYPE_CHECKING:
    from kalamdb.engine import ClusterOp, Database, Outcome, Prepared, Principal

log = logging.getLogger("kalamdb.node")

RECONCILE_EVERY_S = 0.05
CATCH_UP_SLACK = 16  # a learner within this many entries of the commit index is promoted
ROLE_NAMES = {Role.LEADER: "leader", Role.FOLLOWER: "follower", Role.CANDIDATE: "candidate",
              Role.PRE_CANDIDATE: "candidate"}

CLUSTER_COLUMNS = [
    ("cluster_id", "TEXT"), ("node_id", "BIGINT"), ("role", "TEXT"), ("status", "TEXT"),
    ("rpc_addr", "TEXT"), ("api_addr", "TEXT"), ("is_self", "BOOLEAN"), ("is_leader", "BOOLEAN"),
    ("current_term", "BIGINT"), ("last_applied_log", "BIGINT"), ("leader_last_log_index", "BIGINT"),
    ("snapshot_index", "BIGINT"), ("replication_lag", "BIGINT"), ("memory_usage_mb", "DOUBLE"),
    ("cpu_usage_percent", "DOUBLE"), ("uptime_seconds", "BIGINT"), AGE_COLUMN,
]
GROUP_COLUMNS = [
    ("group_id", "TEXT"), ("node_id", "BIGINT"), ("current_term", "BIGINT"), ("vote", "BIGINT"),
    ("last_log_index", "BIGINT"), ("last_applied", "BIGINT"), ("committed", "BIGINT"), ("state", "TEXT"),
    ("current_leader", "BIGINT"), ("first_log_index", "BIGINT"), ("snapshot_index", "BIGINT"),
    ("voters", "TEXT"), ("learners", "TEXT"),
]


class AddressBook:
    """Node id -> (rpc, api) addresses: from configuration, then from replicated metadata entries,
    kept in a node-local file so a restarted node remembers peers that joined at run time."""

    def __init__(self, path: Path, own: Peer, configured: list[Peer]):
        self.path = path
        self.peers: dict[int, Peer] = {own.node_id: own}
        self.removed: set[int] = set()
        self.configured = {p.node_id for p in configured} | {own.node_id}
        for p in configured:
            self.peers[p.node_id] = p
        try:
            saved = json.loads(path.read_text())
            for nid, rpc, api in saved.get("peers", []):
                self.peers.setdefault(int(nid), Peer(int(nid), rpc, api))
            self.removed = {int(x) for x in saved.get("removed", [])}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"peers": [[p.node_id, p.rpc_addr, p.api_addr] for p in self.peers.values()],
                                   "removed": sorted(self.removed)}))
        os.replace(tmp, self.path)

    def wanted(self) -> set[int]:
        return set(self.peers) - self.removed


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
        self._tasks: list[asyncio.Task] = []
        # Deliberately unsafe (for proving the chaos checkers bite): serve data reads from local
        # state without ReadIndex, so a partitioned or lagging follower returns stale values.
        self.unsafe_local_reads = os.environ.get("KALAMDB_UNSAFE_LOCAL_READS") == "1"
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self._published_book: tuple | None = None
        self.cluster_view = ClusterView(  # other nodes' reports fill this node's gaps in system.cluster
            node_id=cfg.node_id, cluster_id=cfg.cluster_id, secret=cfg.secret,
            columns=[c for c, _ in CLUSTER_COLUMNS[:-1]], own_rows=self._own_cluster_rows,
            peers=lambda: {nid: p.api_addr for nid, p in self.book.peers.items()
                           if nid in self.driver.core.membership.members},
            term=lambda: self.driver.core.term, is_leader=lambda: self.driver.is_leader)
        db.register_system_table("cluster", CLUSTER_COLUMNS, self._cluster_rows)
        db.register_system_table("cluster_groups", GROUP_COLUMNS, self._group_rows)

    # ------------------------------------------------------------------ Node interface
    @property
    def applied_index(self) -> int:
        return self.driver.applied_index

    @property
    def is_leader(self) -> bool:
        return self.driver.is_leader

    @property
    def failpoints(self) -> NodeFailpoints:
        return self.driver.failpoints

    def stats(self) -> dict[str, int | float]:
        """Commit and replication counters for /metrics (entries per fsync = persisted / fsyncs)."""
        d = self.driver
        core = d.core
        t = d.transport.stats
        return {
            "commit_batches_total": d.applier.batches, "commit_commands_total": d.applier.entries,
            "raft_fsyncs_total": d.fsyncs, "raft_persisted_entries_total": d.persisted_entries,
            "raft_forwarded_proposals_total": d.forwarded, "raft_peer_proposals_total": d.proposals_from_peers,
            "raft_bad_frames_total": d.bad_frames, "raft_thread_stalls_total": d.stalls,
            "raft_thread_max_lateness_seconds": round(d.max_tick_lateness_s, 4), "raft_term": core.term, "raft_commit_index": core.commit_index,
            "raft_last_log_index": core.last_index, "raft_is_leader": int(d.is_leader),
            "raft_frames_sent_total": t["frames_sent"], "raft_frames_received_total": t["frames_received"],
            "raft_refused_connections_total": t["refused_total"], "raft_dropped_frames_total": t["dropped_total"],
        }

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
        peer = self.book.peers.get(self.driver.leader_id)
        return peer.api_addr if peer else None

    async def _leader_or_raise(self) -> None:
        """Return if this node leads; else raise NOT_LEADER (forwardable) or LEADER_NOT_AVAILABLE."""
        driver = self.driver
        if driver.is_leader:
            return
        leader = driver.leader_id or await driver.wait_for_leader(self.cfg.leader_wait_ms / 1000)
        if leader == self.node_id and driver.is_leader:
            return
        if leader:
            raise definite_not_leader(f"node {self.node_id} is not the leader; the leader is node {leader}",
                                      self.leader_api())
        raise KalamError("LEADER_NOT_AVAILABLE",
                         f"no leader elected within {self.cfg.leader_wait_ms} ms (is a majority of the "
                         "cluster reachable?)", status=503, details="definite: the write was not applied")

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
                return await asyncio.wait_for(asyncio.shield(fut), self.cfg.write_timeout_ms / 1000)
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
            except TimeoutError:
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

    # ------------------------------------------------------------------ CLUSTER statements
    async def cluster(self, op: ClusterOp, principal: Principal) -> list[dict]:
        if principal.role not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", f"CLUSTER {op.op.upper()} requires role dba or system")
        name = op.op
        d = self.driver
        if name in ("list", "status"):
            raise KalamError("INVALID_SQL", f"CLUSTER {name.upper()} is not supported; "
                             "query the system.cluster table instead: SELECT * FROM system.cluster")
        if name == "snapshot":
            index = await d.take_snapshot()
            return [cluster_results.group_action("snapshot", snapshot_index=index, snapshots_dir=d.snapshots.dir)]
        if name == "rebalance":
            # Upstream spreads the leaders of its data groups over the nodes; kalamdb has one group,
            # whose leader stays where it is (CLUSTER TRANSFER LEADER moves it).
            return [cluster_results.group_action("rebalance")]
        if name == "clear":
            return [cluster_results.clear(d.snapshots.clear_old())]
        if name == "purge":
            upto = op.upto if op.upto is not None else d.applied_index
            covered = d.last_snapshot_index
            if covered < min(upto, d.applied_index):
                covered = await d.take_snapshot()
            return [_msg(f"Log purged up to index {min(upto, covered)} on node {self.node_id}")]
        if name == "trigger_election":
            await d.call(d.core.campaign)
            return [_msg(f"Election triggered on node {self.node_id}")]
        if name == "stepdown":
            await self._leader_or_raise()
            await d.call(d.core.step_down)
            return [_msg(f"Node {self.node_id} stepped down")]
        if name == "transfer_leader":
            await self._leader_or_raise()
            target = op.node_id
            if target not in d.core.membership.voters:
                raise KalamError("INVALID_PARAMETER", f"node {target} is not a voter of this cluster")
            await d.call(d.core.transfer_leadership, target)
            ok = await self._wait(lambda: d.leader_id == target, self.cfg.election_timeout_ms[1] * 4 / 1000)
            if not ok:
                raise KalamError("CLUSTER_UNAVAILABLE", f"leadership did not move to node {target} in time",
                                 status=503)
            return [_msg(f"Leadership transferred to node {target}")]
        if name == "join":
            return [await self._join(op)]
        if name == "leave":
            return [await self._leave(op.node_id)]
        raise KalamError("INVALID_SQL", f"unsupported CLUSTER operation {name}")

    async def _join(self, op: ClusterOp) -> dict:
        await self._leader_or_raise()
        nid = op.node_id
        if nid is None or not 1 <= nid <= 1023:
            raise KalamError("INVALID_PARAMETER", "CLUSTER JOIN needs a node id between 1 and 1023")
        rpc_addr, api_addr = op.rpc_addr, op.api_addr
        if rpc_addr is None or api_addr is None:  # the parser asks for both
            raise KalamError("INVALID_PARAMETER", "CLUSTER JOIN needs the node's rpc and api addresses")
        split_hostport(rpc_addr, "rpc_addr")
        api = api_addr if "://" in api_addr else f"http://{api_addr}"
        peer = Peer(nid, rpc_addr, api)
        self.book.removed.discard(nid)
        await self._propose_meta({"op": "peer", "id": nid, "rpc": peer.rpc_addr, "api": peer.api_addr},
                                 f"CLUSTER JOIN {nid}")
        ok = await self._wait(lambda: nid in self.driver.core.membership.voters, 30.0)
        if not ok:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node {nid} joined as a learner but did not catch up "
                             "within 30 s; it will be promoted when it does", status=503,
                             details="indefinite: the node is a member and will become a voter once caught up")
        return _msg(f"Node {nid} joined the cluster as a voter")

    async def _leave(self, nid: int | None) -> dict:
        await self._leader_or_raise()
        m = self.driver.core.membership
        if nid not in m.members:
            raise KalamError("INVALID_PARAMETER", f"node {nid} is not a member of this cluster")
        await self._propose_meta({"op": "remove", "id": nid}, f"CLUSTER LEAVE {nid}")
        ok = await self._wait(lambda: nid not in self.driver.core.membership.members
                              or not self.driver.is_leader, 30.0)
        if not ok:
            raise KalamError("CLUSTER_UNAVAILABLE", f"node {nid} could not be removed in time", status=503,
                             details="indefinite: the removal was recorded and may still take effect")
        return _msg(f"Node {nid} removed from the cluster")

    async def _propose_meta(self, meta: dict, what: str) -> None:
        """Replicate a membership entry. A refusal is definite (nothing was appended); no commit
        within the write timeout is not: the entry may still commit and take effect (indefinite,
        like a write's timeout, never an internal error)."""
        try:
            fut = self.driver.propose_meta(meta)
            await asyncio.wait_for(asyncio.shield(fut), self.cfg.write_timeout_ms / 1000)
        except (NotLeader, ProposalRejected) as exc:
            raise definite_not_leader(f"cannot change membership now: {exc}", self.leader_api()) from None
        except TimeoutError:
            raise WriteOutcomeUnknown(
                f"{what} was proposed but not committed within {self.cfg.write_timeout_ms} ms (no quorum "
                "reachable?); it may still take effect: check system.cluster") from None

    def _on_meta(self, meta: dict) -> None:
        """A replicated metadata entry was applied (same order on every node)."""
        op = meta.get("op")
        if op == "peer":
            peer = Peer(int(meta["id"]), str(meta["rpc"]), str(meta["api"]))
            self.book.removed.discard(peer.node_id)
            # This node's own configuration wins: it may route a peer through a proxy or another
            # interface than the address the peer announced.
            if peer.node_id not in self.book.configured:
                self.book.peers[peer.node_id] = peer
                self.driver.set_peer(peer.node_id, peer.rpc_hostport)
        elif op == "remove":
            self.book.removed.add(int(meta["id"]))
        elif op == "peers":
            for nid, rpc, api in meta.get("peers", []):
                if int(nid) not in self.book.peers:
                    peer = Peer(int(nid), rpc, api)
                    self.book.peers[peer.node_id] = peer
                    self.driver.set_peer(peer.node_id, peer.rpc_hostport)
        self.book.save()

    async def _wait(self, pred, timeout: float) -> bool:
        """Wait for a predicate on Raft state; it changes only when the Raft loop runs, so this
        re-checks once per tick (a condition with a deadline, never a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.driver.tick_s)
        return True

    # ------------------------------------------------------------------ membership reconciliation
    def _reconcile(self) -> None:
        """(Raft thread, every RECONCILE_EVERY_S on the leader) move the membership one step toward
        the address book: remove, add as learner, promote a caught-up learner, publish addresses."""
        d = self.driver
        core = d.core
        m = core.membership
        if m.is_joint or core.commit_index < core.last_index - 1000:
            return
        wanted = self.book.wanted()
        for nid in sorted(m.members - wanted):
            if nid in m.voters:
                core.change_membership(set(m.voters) - {nid})
            else:
                core.remove_learner(nid)
            return
        for nid in sorted(wanted - m.members):
            core.add_learner(nid)
            return
        progress = core.progress
        for nid in sorted(m.learners & wanted):
            pr = progress.get(nid)
            # caught up, and alive: promoting a learner that never answered would cost the quorum
            if pr is not None and pr.recent_active and pr.match > 0 and pr.match >= core.commit_index - CATCH_UP_SLACK:
                log.info("promoting node %d to voter (match %d, commit %d)", nid, pr.match, core.commit_index)
                core.change_membership(set(m.voters) | {nid})
                return
        book = tuple(sorted((p.node_id, p.rpc_addr, p.api_addr) for p in self.book.peers.values()))
        if book != self._published_book:
            self._published_book = book
            core.propose(meta_command({"op": "peers", "peers": [list(b) for b in book]}))

    # ------------------------------------------------------------------ observability
    def _status_of(self, nid: int, progress: dict) -> str:
        d = self.driver
        if nid == self.node_id:
            if d.fatal is not None:
                return "offline"
            return "active" if d.leader_id else "unknown"
        if d.is_leader:
            pr = progress.get(nid)
            if pr is None:
                return "joining"
            if not pr.recent_active:
                return "offline"
            return "catching_up" if d.core.commit_index - pr.match > CATCH_UP_SLACK else "active"
        return "unknown"

    def _cluster_rows(self) -> list[tuple]:
        return self.cluster_view.merge(self._own_cluster_rows())

    def _own_cluster_rows(self) -> list[tuple]:
        """system.cluster as this node alone knows it (without the age column)."""
        d = self.driver
        core = d.core
        m = core.membership
        progress = core.progress if d.is_leader else {}
        ids = sorted(m.members | {self.node_id})
        mem = self._proc.memory_info().rss / (1 << 20)
        cpu = self._proc.cpu_percent(None)
        rows = []
        for nid in ids:
            peer = self.book.peers.get(nid)
            me = nid == self.node_id
            if nid in m.learners:
                role = "learner"
            elif me:
                role = ROLE_NAMES.get(core.role, "follower")
            elif nid == d.leader_id:
                role = "leader"
            elif nid in m.voters or nid in m.voters_outgoing:
                role = "follower"
            else:
                role = "learner"
            pr = progress.get(nid)
            match = core.last_index if (me and d.is_leader) else (pr.match if pr else None)
            lag = (core.last_index - match) if (d.is_leader and match is not None) else None
            rows.append((
                self.cfg.cluster_id, nid, role, self._status_of(nid, progress),
                peer.rpc_addr if peer else None, peer.api_addr if peer else None, me, nid == d.leader_id,
                core.term, d.applied_index if me else None, core.last_index if d.is_leader else None,
                d.last_snapshot_index if me else None, lag,
                round(mem, 2) if me else None, cpu if me else None,
                int(time.time() - self.started_at) if me else None,
            ))
        return rows

    def _group_rows(self) -> list[tuple]:
        d = self.driver
        core = d.core
        m = core.membership
        return [("meta", self.node_id, core.term, core.vote or None, core.last_index, d.applied_index,
                 core.commit_index, ROLE_NAMES.get(core.role, "follower"), d.leader_id or None,
                 core.first_index, d.last_snapshot_index, ",".join(map(str, sorted(m.voters))),
                 ",".join(map(str, sorted(m.learners))))]

    def health(self) -> dict[str, Any]:
        d = self.driver
        core = d.core
        active = d.fatal is None
        status = "unhealthy" if not active else ("healthy" if d.leader_id else "degraded")
        nodes = []
        for row in self._cluster_rows():
            rec = dict(zip([c for c, _ in CLUSTER_COLUMNS], row, strict=True))
            up = rec.get("uptime_seconds")
            rec["uptime_human"] = uptime_human(up) if isinstance(up, int) else None
            nodes.append(rec)
        return {
            "status": status, "is_cluster_mode": True, "cluster_id": self.cfg.cluster_id,
            "node_id": self.node_id, "is_leader": d.is_leader, "leader_id": d.leader_id or None,
            "current_term": core.term, "last_applied": d.applied_index, "commit_index": core.commit_index,
            "last_log_index": core.last_index, "snapshot_index": d.last_snapshot_index,
            "voters": sorted(core.membership.voters), "learners": sorted(core.membership.learners),
            "nodes": nodes, **({"fatal": f"{type(d.fatal).__name__}: {d.fatal}"} if d.fatal is not None else {}),
        }

    def digest(self) -> dict:
        """The state digest together with the applied index it belongs to."""
        return {"applied_index": self.db.applied_index, "digest": self.db.digest(), "node_id": self.node_id}


def _msg(message: str) -> dict:
    return {"row_count": 0, "message": message}


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
