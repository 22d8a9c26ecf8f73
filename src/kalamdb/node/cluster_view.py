"""What a node knows about the other nodes of its cluster, and how old that knowledge is.

Only the leader knows each node's replication status and lag (from its Raft progress), and only a
node itself knows its memory, CPU, uptime and applied index. So `system.cluster` read on one node
would leave most of the other rows empty ("unknown", NULL). Instead every node keeps the latest
*report* of each peer, where a report is the peer's own rows of `system.cluster` (for the leader,
that includes every node's status and lag). Reading `system.cluster` then fills each empty cell
from the best report there is: status, lag and the leader's last log index from the leader's
report (the highest term's), a node's own figures from that node's report. The `info_age_ms`
column says how old the oldest value so filled is; 0 when the row is all this node's own live
knowledge, NULL when a value was needed and no report had it.

Reports travel over HTTP, not through the Raft core (which stays pure, and whose heartbeats need
not grow): each node asks every peer's API address for its report once a second on
`GET /v1/api/cluster/node-report`. The request proves it comes from a cluster member with a token
derived from the shared cluster secret (HMAC-SHA256 over the cluster id and the asking node's id:
the secret itself never travels, and the token is worth nothing for Raft or JWTs). Ages are taken
with this process's monotonic clock when a report arrives, so they stay right when node clocks
disagree. A report is size-bounded and type-checked before it is used; a peer that is down or
slow only makes its knowledge older.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp
import orjson

log = logging.getLogger("kalamdb.node.cluster_view")

NODE_REPORT_PATH = "/v1/api/cluster/node-report"
AUTH_HEADER = "X-KalamDB-Cluster-Member"
AGE_COLUMN = ("info_age_ms", "BIGINT")
REFRESH_S = 1.0
FETCH_TIMEOUT_S = 1.0
MAX_REPORT_BYTES = 256 * 1024
MAX_REPORT_ROWS = 64

# Cells only the leader knows (from Raft progress), and cells only the node itself knows.
LEADER_FIELDS = ("status", "replication_lag", "leader_last_log_index")
OWN_FIELDS = ("last_applied_log", "snapshot_index", "memory_usage_mb", "cpu_usage_percent", "uptime_seconds")
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "status": str, "replication_lag": int, "leader_last_log_index": int, "last_applied_log": int,
    "snapshot_index": int, "memory_usage_mb": (int, float), "cpu_usage_percent": (int, float),
    "uptime_seconds": int,
}


class BadReport(ValueError):
    """A peer's answer is not a well-formed report of the node asked."""


def member_token(secret: str, cluster_id: str, node_id: int) -> str:
    """The header value by which node `node_id` proves it holds the cluster secret."""
    mac = hmac.new(secret.encode(), f"kalamdb-cluster-view/v1/{cluster_id}/{node_id}".encode(), hashlib.sha256)
    return f"{node_id}:{mac.hexdigest()}"


@dataclass(frozen=True)
class Report:
    """One peer's own view: its rows as {column: value}, whether it led, in which term, and when
    (this process's monotonic clock) the report arrived."""

    node_id: int
    term: int
    is_leader: bool
    rows: dict[int, dict[str, Any]]
    received_at: float


class ClusterView:
    """The reports of the peers, refreshed in the background, merged into `system.cluster` rows.

    `own_rows` gives this node's own rows (tuples in `columns` order), `peers` the API address of
    every other member; `term` and `is_leader` describe this node now."""

    def __init__(self, *, node_id: int, cluster_id: str, secret: str, columns: Sequence[str],
                 own_rows: Callable[[], list[tuple]], peers: Callable[[], dict[int, str]],
                 term: Callable[[], int], is_leader: Callable[[], bool], refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic):
        self.node_id = node_id
        self.columns = list(columns)
        self._own_rows = own_rows
        self._peers = peers
        self._term = term
        self._is_leader = is_leader
        self._refresh_s = refresh_s
        self._clock = clock
        self._cluster_id = cluster_id
        self._secret = secret
        self._token = member_token(secret, cluster_id, node_id)
        self.reports: dict[int, Report] = {}  # replaced whole, never mutated: safe to read from a thread

    # ------------------------------------------------------------------ serving this node's report
    def own_report(self) -> dict:
        return {"node_id": self.node_id, "term": self._term(), "is_leader": self._is_leader(),
                "rows": [dict(zip(self.columns, row, strict=True)) for row in self._own_rows()]}

    def is_member(self, header: str | None) -> bool:
        """True when `header` is a member token for some node id (constant-time comparison)."""
        if not header or len(header) > 128:
            return False
        nid, _, _ = header.partition(":")
        if not nid.isdigit() or len(nid) > 9:
            return False
        return hmac.compare_digest(header.encode(), member_token(self._secret, self._cluster_id, int(nid)).encode())

    # ------------------------------------------------------------------ fetching the peers' reports
    async def run(self) -> None:
        """Refresh every peer's report forever (cancelled when the node stops)."""

        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, headers={AUTH_HEADER: self._token}) as session:
            while True:
                started = time.monotonic()
                peers = {nid: url for nid, url in self._peers().items() if nid != self.node_id}
                await asyncio.gather(*(self._fetch(session, nid, url) for nid, url in peers.items()))
                self.reports = {nid: r for nid, r in self.reports.items() if nid in peers}
                # the refresh period (a slow peer does not stretch it for the others), not a wait
                # for a condition
                await asyncio.sleep(max(0.0, self._refresh_s - (time.monotonic() - started)))

    async def _fetch(self, session: Any, nid: int, url: str) -> None:

        try:
            async with session.get(url.rstrip("/") + NODE_REPORT_PATH) as resp:
                body = await resp.content.read(MAX_REPORT_BYTES + 1)
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}: {body[:200]!r}")
            if len(body) > MAX_REPORT_BYTES:
                raise ValueError(f"report larger than {MAX_REPORT_BYTES} bytes")
            report = self.parse(nid, orjson.loads(body))
        except (OSError, TimeoutError, ValueError, aiohttp.ClientError) as exc:
            log.debug("no report from node %d at %s: %s", nid, url, exc)
            return
        self.reports = {**self.reports, nid: report}

    def parse(self, nid: int, data: Any) -> Report:
        """A peer's answer as a Report; BadReport when it is not a well-formed report of `nid`."""
        if not isinstance(data, dict) or data.get("node_id") != nid:
            raise BadReport(f"not a report of node {nid}")
        term, is_leader, rows = data.get("term"), data.get("is_leader"), data.get("rows")
        if not isinstance(term, int) or not isinstance(is_leader, bool) or not isinstance(rows, list):
            raise BadReport("malformed report")
        by_id: dict[int, dict[str, Any]] = {}
        for row in rows[:MAX_REPORT_ROWS]:
            if not isinstance(row, dict) or not isinstance(row.get("node_id"), int):
                raise BadReport("malformed report row")
            by_id[row["node_id"]] = {c: v for c, t in FIELD_TYPES.items()
                                     if isinstance(v := row.get(c), t) and not isinstance(v, bool)}
        return Report(nid, term, is_leader, by_id, self._clock())

    # ------------------------------------------------------------------ merging
    def merge(self, rows: list[tuple]) -> list[tuple]:
        """This node's own rows with their empty cells filled from the reports, and the age column."""
        reports = self.reports
        now = self._clock()
        leaders = [r for r in reports.values() if r.is_leader]
        leader = max(leaders, key=lambda r: (r.term, r.received_at)) if leaders else None
        i_lead = self._is_leader()
        col = {name: i for i, name in enumerate(self.columns)}
        merged = []
        for row in rows:
            cells = list(row)
            nid = cells[col["node_id"]]
            me = nid == self.node_id
            wanted: list[tuple[Report | None, tuple[str, ...]]] = []
            if not i_lead:  # a node's own status is its own live knowledge; its lag is the leader's
                wanted.append((leader, tuple(f for f in LEADER_FIELDS if not (me and f == "status"))))
            if not me:
                wanted.append((reports.get(nid), OWN_FIELDS))
            ages: list[float] = []
            missing = False
            for report, fields in wanted:
                known = report.rows.get(nid) if report is not None else None
                filled = False
                for field in fields:
                    value = cells[col[field]]
                    if value is not None and not (field == "status" and value == "unknown"):
                        continue  # known here, live
                    if known is not None and known.get(field) is not None:
                        cells[col[field]] = known[field]
                        filled = True
                    else:
                        missing = True
                if filled and report is not None:  # always so: only a report's row fills a cell
                    ages.append(now - report.received_at)
            age = int(max(ages) * 1000) if ages else (None if missing else 0)
            merged.append((*cells, age))
        return merged


@runtime_checkable
class HasClusterView(Protocol):
    """A node that serves and merges cluster reports (a cluster node; a single node has none)."""

    cluster_view: ClusterView
