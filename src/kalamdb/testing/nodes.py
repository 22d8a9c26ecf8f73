"""A node as the kit sees it over HTTP: SQL, health, the replication watch, the state digest.

`NodeHandle` needs only a URL, so the same handle type serves nodes the kit runs (`NodeProcess`,
which adds the process) and nodes of a cluster it did not start (`ExternalNode`). Nodes are
identified two ways, and the kit keeps them apart: `index` is the 0-based position in the cluster's
`nodes` list (upstream's `get_node(i)`), `node_id` is the node's Raft id (1-based, never reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kalamdb.client import Client, Response

MAX_WAIT_S = 60.0  # the server's longest /cluster/wait long poll


class ClusterError(AssertionError):
    """A cluster did not reach the state a test needs; the message says which nodes and why."""


@dataclass
class NodeStats:
    node_id: int
    running: bool
    rss_mb: float | None
    cpu_percent: float | None
    term: int | None
    commit_index: int | None
    applied_index: int | None
    role: str | None
    replication_lag: int | None = None
    cpu_seconds: float | None = None


class NodeHandle:
    """What a test can do with one node over HTTP: SQL, health, the replication watch, the digest.

    `last_applied_seen` remembers the newest applied index this node reported, so a timeout can
    say how far behind a node that stopped answering was."""

    index: int
    node_id: int
    paused: bool = False
    data_dir: Path | None = None
    log_path: Path | None = None
    removed: bool = False  # left the cluster (CLUSTER LEAVE): no longer in the cluster's `nodes`

    def __init__(self, index: int, node_id: int, root_password: str):
        self.index = index
        self.node_id = node_id
        self.root_password = root_password
        self.last_applied_seen: int | None = None
        self._client: Client | None = None
        self._client_lock = threading.Lock()

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The node's process id, when the kit runs the process."""
        return None

    @property
    def listen_url(self) -> str:
        """Where the node itself listens (the same as `url` unless clients go through a proxy)."""
        return self.url

    def is_running(self) -> bool:
        raise NotImplementedError

    def is_up(self) -> bool:
        """Running and not paused: the node can answer."""
        return self.is_running() and not self.paused

    def log_tail(self, lines: int = 30) -> str:
        return "(no log available for this node)"

    def _seen(self, applied: Any) -> None:
        if isinstance(applied, int) and (self.last_applied_seen is None or applied > self.last_applied_seen):
            self.last_applied_seen = applied

    # ---- HTTP ---------------------------------------------------------------------------------
    def client(self, timeout: float = 15.0) -> Client:
        """A new root Client of this node (one per thread: clients are not thread-safe)."""
        return Client(self.url, user="root", password=self.root_password, timeout=timeout)

    def drop_client(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float | None = None) -> Response:
        if timeout is not None:  # long polls get a connection of their own
            with self.client(timeout=timeout) as c:
                return c._request(method, path, body, c._creds.header())
        with self._client_lock:
            if self._client is None:
                self._client = self.client()
            return self._client._request(method, path, body, self._client._creds.header())

    def sql(self, text: str, params: list | None = None, namespace_id: str | None = None,
            consistency: str | None = None, **extra: Any) -> Response:
        """Run SQL as root on this node; the answer also says which node gave it (`.node_id`)."""
        if consistency is not None:
            extra["consistency"] = consistency
        with self._client_lock:
            if self._client is None:
                self._client = self.client()
            resp = self._client.sql(text, params, namespace_id, **extra)
        resp.node_id = self.node_id
        return resp

    async def sql_async(self, text: str, params: list | None = None, namespace_id: str | None = None,
                        consistency: str | None = None, **extra: Any) -> Response:
        return await asyncio.to_thread(self.sql, text, params, namespace_id, consistency, **extra)

    def health(self, timeout: float = 5.0) -> Response:
        h = self._request("GET", "/v1/api/cluster/health", timeout=timeout)
        self._seen(h.get("last_applied"))
        return h

    def applied_index(self) -> int:
        return int(self.health()["last_applied"])

    def is_leader(self) -> bool:
        return bool(self.health().get("is_leader"))

    def wait_applied(self, index: int, timeout: float) -> int:
        """Long-poll until this node applied `index` (or the deadline); returns its applied index."""
        timeout = min(max(timeout, 0.0), MAX_WAIT_S)
        resp = self._request("GET", f"/v1/api/cluster/wait?index={index}&timeout_ms={int(timeout * 1000)}",
                             timeout=timeout + 0.5)
        applied = int(resp.get("applied_index", -1))
        self._seen(applied)
        return applied

    def digest(self) -> dict:
        d = self._request("GET", "/v1/api/cluster/digest", timeout=30)
        if "digest" not in d:
            raise ClusterError(f"node {self.node_id} gave no state digest: {dict(d)}")
        return d

    def _process_stats(self) -> tuple[float | None, float | None, float | None]:
        return None, None, None

    def stats(self) -> NodeStats:
        """RSS and CPU of the process (when the kit runs it), and the node's own Raft view."""
        running = self.is_running()
        rss, cpu, cpu_s = self._process_stats() if running else (None, None, None)
        h: dict = {}
        if running and not self.paused:
            with contextlib.suppress(OSError):
                h = self.health(timeout=2.0)
        me: dict[str, Any] = next((n for n in h.get("nodes", []) if n.get("is_self")), {})
        if rss is None and me.get("memory_usage_mb") is not None:
            rss = float(me["memory_usage_mb"])
        lag = None
        if h.get("commit_index") is not None and h.get("last_applied") is not None:
            lag = max(0, int(h["commit_index"]) - int(h["last_applied"]))
        return NodeStats(self.node_id, running, rss, cpu, h.get("current_term"), h.get("commit_index"),
                         h.get("last_applied"), me.get("role"), lag, cpu_s)

    async def health_async(self) -> dict:
        return await asyncio.to_thread(self.health)

