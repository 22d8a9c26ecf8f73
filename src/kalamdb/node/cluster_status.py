"""What this node reports about the cluster: the rows of system.cluster and system.cluster_groups,
the body of /v1/api/cluster/health and the Raft counters of /metrics.

This node knows its own Raft state, and as leader its followers' progress; the gaps (another
node's memory, CPU, applied index) are filled from the other nodes' reports (node/cluster_view.py),
which this status owns and serves to them.
"""

from __future__ import annotations

import time
from typing import Any

from kalamdb.engine.localviews import CpuMeter, rss_bytes, uptime_human
from kalamdb.node.cluster_membership import CATCH_UP_SLACK, AddressBook
from kalamdb.node.cluster_view import AGE_COLUMN, ClusterView
from kalamdb.node.config import ClusterConfig
from kalamdb.node.driver import RaftDriver
from kalamdb.raft.core import Role

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


class ClusterStatus:
    """This node's view of the cluster, as rows, health and counters."""

    def __init__(self, cfg: ClusterConfig, driver: RaftDriver, book: AddressBook, started_at: float):
        self.cfg = cfg
        self.driver = driver
        self.book = book
        self.node_id = cfg.node_id
        self.started_at = started_at
        self._cpu = CpuMeter()
        self.view = ClusterView(  # other nodes' reports fill this node's gaps in system.cluster
            node_id=cfg.node_id, cluster_id=cfg.cluster_id, secret=cfg.secret,
            columns=[c for c, _ in CLUSTER_COLUMNS[:-1]], own_rows=self.own_rows,
            peers=lambda: {nid: p.api_addr for nid, p in self.book.peers.items()
                           if nid in self.driver.core.membership.members},
            term=lambda: self.driver.core.term, is_leader=lambda: self.driver.is_leader)

    def stats(self) -> dict[str, int | float]:
        """Commit and replication counters for /metrics (entries per fsync = persisted / fsyncs)."""
        d = self.driver
        core, loops, proposer = d.core, d.loops, d.proposer
        t = d.transport.stats
        return {
            "commit_batches_total": d.applier.batches, "commit_commands_total": d.applier.entries,
            "apply_inline_batches_total": d.router.inline_batches,
            "apply_thread_batches_total": d.router.handed_batches,
            "apply_coalesced_batches_total": d.router.coalesced_batches,
            "raft_fsyncs_total": loops.fsyncs, "raft_persisted_entries_total": loops.persisted_entries,
            "raft_early_messages_total": loops.early_messages,
            "raft_forwarded_proposals_total": proposer.forwarded, "raft_peer_proposals_total": proposer.from_peers,
            "raft_bad_frames_total": d.bad_frames, "raft_thread_stalls_total": loops.stalls,
            "raft_thread_max_lateness_seconds": round(loops.max_tick_lateness_s, 4), "raft_term": core.term, "raft_commit_index": core.commit_index,
            "raft_last_log_index": core.last_index, "raft_is_leader": int(d.is_leader),
            "raft_frames_sent_total": t["frames_sent"], "raft_frames_received_total": t["frames_received"],
            "raft_refused_connections_total": t["refused_total"], "raft_dropped_frames_total": t["dropped_total"],
        }

    def status_of(self, nid: int, progress: dict) -> str:
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

    def cluster_rows(self) -> list[tuple]:
        return self.view.merge(self.own_rows())

    def own_rows(self) -> list[tuple]:
        """system.cluster as this node alone knows it (without the age column)."""
        d = self.driver
        core = d.core
        m = core.membership
        progress = core.progress if d.is_leader else {}
        ids = sorted(m.members | {self.node_id})
        mem = rss_bytes() / (1 << 20)
        cpu = self._cpu.percent()
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
                self.cfg.cluster_id, nid, role, self.status_of(nid, progress),
                peer.rpc_addr if peer else None, peer.api_addr if peer else None, me, nid == d.leader_id,
                core.term, d.applied_index if me else None, core.last_index if d.is_leader else None,
                d.last_snapshot_index if me else None, lag,
                round(mem, 2) if me else None, cpu if me else None,
                int(time.time() - self.started_at) if me else None,
            ))
        return rows

    def group_rows(self) -> list[tuple]:
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
        for row in self.cluster_rows():
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
