"""What a test can do with any cluster over HTTP: SQL on nodes, the leader, replication barriers,
replica comparisons, run-time failpoints and stats.

`ClusterOps` is shared by clusters the kit started (`ClusterTestServer`, which adds process
control, network faults and pressure) and clusters it did not (`ExternalCluster`, which has none
of those). Everywhere a node is asked for, an index (0-based position in `nodes`) or a node handle
is accepted (`NodeRef`); a target (`Target`) is a node ref, a list of them, or one of the shapes
"leader", "follower", "random"/"one", "minority", "majority", "all" -- random choices come from
the cluster's seeded RNG, so `KALAMDB_SEED` replays them.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from kalamdb.client import Response
from kalamdb.testing.consistency import ConsistencyReport, DigestReport, compare_results
from kalamdb.testing.leader import agreed_leader
from kalamdb.testing.nodes import ClusterError, NodeHandle, NodeStats
from kalamdb.testing.progress import progress
from kalamdb.testing.seeds import replay_hint

if TYPE_CHECKING:
    from kalamdb.live.client import LiveSubscription

NodeRef = int | NodeHandle
N = TypeVar("N", bound=NodeHandle)  # the kind of node handle a cluster holds
Target = NodeRef | str | Iterable[NodeRef]
SHAPES = ("leader", "follower", "random", "one", "minority", "majority", "all")
FAILPOINTS_PATH = "/v1/api/admin/failpoints"


class ClusterOps(Generic[N]):
    """HTTP-only helpers over `nodes` (handles in index order). Users of this base provide `nodes`,
    `verbose` and `seed`, call `_init_ops()` and say what `shutdown` does."""

    nodes: list[N]
    verbose: bool
    seed: int
    root: Any = None

    def _init_ops(self) -> None:
        self._rng = random.Random(self.seed)
        self._ns_counter = 0
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kit")
        self.failpoints = Failpoints(self)

    # ---- nodes ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        raise NotImplementedError

    def keep_after_shutdown(self) -> None:
        """Keep what explains a failure (data dirs, logs) past `shutdown`; a cluster the kit did
        not start has nothing of ours to keep."""

    def get_node(self, ref: NodeRef) -> N:
        """A node by 0-based index (upstream's `get_node(i)`), or the handle itself (checked to be
        one of this cluster's nodes)."""
        if isinstance(ref, NodeHandle):
            for n in self.nodes:
                if n == ref:
                    return n
            raise ClusterError(f"{ref!r} is not a node of this cluster (removed, or another cluster's)")
        if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < len(self.nodes):
            raise IndexError(f"node index {ref!r} out of range: the cluster has {len(self.nodes)} nodes (0-based)")
        return self.nodes[ref]

    def node_by_id(self, node_id: int) -> N | None:
        """The node with this Raft id (1-based), or None."""
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def running_nodes(self) -> list[N]:
        """Nodes whose process runs and is not paused: the ones that can answer."""
        return [n for n in self.nodes if n.is_up()]

    def select(self, target: Target) -> list[N]:
        """Resolve a target to nodes (node order; random choices from the seeded RNG)."""
        if isinstance(target, int | NodeHandle):
            return [self.get_node(target)]
        if not isinstance(target, str):
            picked = {id(n): n for n in (self.get_node(t) for t in target)}
            return sorted(picked.values(), key=lambda n: n.index)
        n = len(self.nodes)
        up = [m for m in self.nodes if m.is_running()]
        if target == "all":
            return list(self.nodes)
        if target in ("one", "random"):
            return [self._rng.choice(up)]
        if target == "leader":
            return [self.leader()]
        if target == "follower":
            lead = self.leader()
            return [self._rng.choice([m for m in up if m is not lead])]
        if target == "minority":
            return sorted(self._rng.sample(self.nodes, (n - 1) // 2), key=lambda m: m.index)
        if target == "majority":
            return sorted(self._rng.sample(self.nodes, n // 2 + 1), key=lambda m: m.index)
        raise ValueError(f"unknown target {target!r}: use a node index or handle, a list of them, or one of "
                         f"{', '.join(SHAPES)}")

    def _health_all(self, nodes: Iterable[NodeHandle] | None = None) -> dict[int, dict | Exception]:
        nodes = list(nodes if nodes is not None else self.running_nodes())

        def one(n: NodeHandle) -> dict | Exception:
            try:
                return n.health(timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - reported per node
                return exc

        return dict(zip([n.node_id for n in nodes], self._pool.map(one, nodes), strict=True))

    def wait_until(self, what: str, check: Callable[[], tuple[bool, str]], timeout: float = 10.0) -> None:
        """Re-check `check` (returning (holds, why-not)) until it holds: the way to wait for a state
        without sleeping a fixed time. On timeout raise ClusterError with `what`, the last why-not
        and every node's log tail."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            ok, why = check()
            if ok:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- node {n.node_id} log tail ---\n{n.log_tail(12)}" for n in self.nodes)
                raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}: {why}\n{tails}")
            time.sleep(delay)  # polling interval for other processes' state, bounded by the deadline
            delay = min(delay * 1.5, 0.1)

    def leader(self, timeout: float = 10.0, among: Iterable[NodeRef] | None = None) -> N:
        """Wait (up to `timeout`) for the one leader the answering nodes -- or the nodes `among` --
        agree on (see `agreed_leader` for what is required); raises ClusterError saying why there
        is none. Never a guess: a paused leader or a lone leader cut off from its majority is not
        returned."""
        found: list[N] = []
        group = [self.get_node(r) for r in among] if among is not None else None

        def check() -> tuple[bool, str]:
            nodes = [n for n in group if not n.paused] if group is not None else self.running_nodes()
            lid, why = agreed_leader(self._health_all(nodes))
            if lid is None:
                return False, why
            node = self.node_by_id(lid)
            if node is None:
                return False, f"node {lid} leads but is not a node of this cluster object"
            found[:] = [node]
            return True, ""

        self.wait_until("one agreed leader", check, timeout)
        return found[0]

    def followers(self, timeout: float = 10.0) -> list[N]:
        """The running, unpaused nodes other than the agreed leader (in node order)."""
        lead = self.leader(timeout)
        return [n for n in self.running_nodes() if n is not lead]

    # ---- SQL ------------------------------------------------------------------------------------
    def execute_sql_on(self, node: NodeRef, sql: str, params: list | None = None, namespace_id: str | None = None,
                       **extra: Any) -> Response:
        return self.get_node(node).sql(sql, params, namespace_id, **extra)

    def random_node(self) -> N:
        """A running node chosen with the cluster's seeded RNG (the seed is in failure reports)."""
        running = self.running_nodes()
        if not running:
            raise ClusterError(f"no running node to choose from: {self.nodes}")
        return self._rng.choice(running)

    def execute_sql_on_random(self, sql: str, params: list | None = None, namespace_id: str | None = None,
                              **extra: Any) -> Response:
        return self.random_node().sql(sql, params, namespace_id, **extra)

    def execute_sql_on_leader(self, sql: str, params: list | None = None, namespace_id: str | None = None,
                              **extra: Any) -> Response:
        return self.leader().sql(sql, params, namespace_id, **extra)

    def execute_sql_on_all(self, sql: str, params: list | None = None, namespace_id: str | None = None,
                           **extra: Any) -> list[Response]:
        """One response per node, in node order (stopped or paused nodes answer a NODE_DOWN error)."""
        def one(n: NodeHandle) -> Response:
            if not n.is_up():
                r = Response({"status": "error", "error": {"code": "NODE_DOWN", "message": f"{n!r} is not running"}})
                r.node_id = n.node_id
                return r
            return n.sql(sql, params, namespace_id, **extra)

        return list(self._pool.map(one, self.nodes))

    # ---- replication ----------------------------------------------------------------------------
    def wait_for_replication(self, index: int | None = None, timeout: float = 10.0,
                             nodes: Iterable[NodeRef] | None = None) -> int:
        """Return once every running node (paused ones included) applied `index` (default: the
        leader's commit index now). Raises naming each lagging node and how far behind it is."""
        deadline = time.monotonic() + timeout
        targets = [self.get_node(r) for r in nodes] if nodes is not None else [n for n in self.nodes if n.is_running()]
        if index is None:
            index = int(self.leader(timeout).health()["commit_index"])
        progress("⏳ Waiting for replication…", self.verbose)

        def one(n: NodeHandle) -> int | Exception:
            try:
                return n.wait_applied(index, max(0.01, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - reported per node
                return exc

        got = dict(zip([n.node_id for n in targets], self._pool.map(one, targets), strict=True))
        lagging = {nid: a for nid, a in got.items() if isinstance(a, Exception) or a < index}
        if lagging:
            raise ClusterError(self._lag_message(index, timeout, lagging))
        progress("✅ Replicated to all nodes", self.verbose)
        return index

    def _lag_message(self, index: int, timeout: float, lagging: dict[int, int | Exception]) -> str:
        leader_view: dict[int, Any] = {}
        for h in self._health_all([n for n in self.running_nodes() if n.node_id not in lagging]).values():
            if isinstance(h, dict) and h.get("is_leader"):
                leader_view = {e.get("node_id"): e.get("replication_lag") for e in h.get("nodes", [])}
        parts = []
        for nid, a in sorted(lagging.items()):
            node = self.node_by_id(nid)
            state = " (paused)" if node is not None and node.paused else ""
            if isinstance(a, Exception):
                seen = node.last_applied_seen if node is not None else None
                behind = f"behind by at least {index - seen}" if seen is not None else "lag unknown"
                text = (f"node {nid}{state}: no answer within {timeout:.1f}s ({type(a).__name__}); "
                        f"last applied index seen {seen}, {behind}")
            else:
                text = f"node {nid}{state}: applied {a}, behind by {index - a}"
            if leader_view.get(nid) is not None:
                text += f"; the leader reports replication lag {leader_view[nid]}"
            parts.append(text)
        return f"replication of index {index} not complete after {timeout:.1f}s: " + "; ".join(parts)

    def verify_data_consistency(self, query: str, params: list | None = None, namespace_id: str | None = None,
                                timeout: float = 10.0) -> ConsistencyReport:
        """Replication barrier, then `query` with local consistency on every running node; compare.
        The report is truthy when all agree and otherwise names each differing node and its rows."""
        index = self.wait_for_replication(timeout=timeout)
        running = self.running_nodes()
        answers = list(self._pool.map(
            lambda n: n.sql(query, params, namespace_id, consistency="local", min_applied_index=index), running))
        return compare_results(query, index, {n.node_id: a for n, a in zip(running, answers, strict=True)})

    def verify_state_digest(self, timeout: float = 10.0) -> DigestReport:
        """Digests of every running node taken at the same applied index (after a barrier)."""
        deadline = time.monotonic() + timeout
        while True:
            index = self.wait_for_replication(timeout=max(0.1, deadline - time.monotonic()))
            running = self.running_nodes()
            digests = dict(zip([n.node_id for n in running], self._pool.map(lambda n: n.digest(), running),
                               strict=True))
            indexes = {d["applied_index"] for d in digests.values()}
            if len(indexes) == 1 or time.monotonic() >= deadline:
                return DigestReport(index, digests)
            # a write landed between the barrier and the digests: take them again

    # ---- observation ----------------------------------------------------------------------------
    def node_stats(self, node: NodeRef) -> NodeStats:
        """RSS, CPU, term, commit and applied index of a node; the replication lag is the leader's
        view of it when a leader is known (else the node's own commit - applied)."""
        n = self.get_node(node)
        st = n.stats()
        for h in self._health_all().values():
            if isinstance(h, dict) and h.get("is_leader"):
                entry = next((e for e in h.get("nodes", []) if e.get("node_id") == n.node_id), None)
                if entry is not None and entry.get("replication_lag") is not None:
                    st.replication_lag = int(entry["replication_lag"])
        return st

    def unique_namespace(self, prefix: str = "ns") -> str:
        """A namespace name no other test (or test process) uses."""
        self._ns_counter += 1
        return f"{prefix}_{os.getpid()}_{self._ns_counter}_{uuid.uuid4().hex[:6]}"

    def describe(self, log_lines: int = 25) -> str:
        """Each node's state and log tail, the seed and where the artifacts are: for failure reports."""
        lines = [f"cluster seed {self.seed} ({replay_hint(self.seed)})"]
        if self.root is not None:
            lines.append(f"artifacts (data dirs, node logs): {self.root}")
        for n in self.nodes:
            lines.append(f"--- {n!r} pid {n.pid} log {n.log_path} ---")
            lines.append(n.log_tail(log_lines))
        return "\n".join(lines)

    def step(self, message: str) -> None:
        """A progress line for a test step (📝), shown with `pytest -s` only."""
        progress(f"📝 {message}", self.verbose)

    def subscribe(self, node: NodeRef, sql: str, **options: Any) -> LiveSubscription:
        """A live query on `node`: a `kalamdb.live.client.LiveSubscription` (use it with `async
        with` and iterate its events); see kalamdb.testing.live.subscribe for the options."""
        from kalamdb.testing.live import subscribe

        return subscribe(self, node, sql, **options)

    # ---- async twins ------------------------------------------------------------------------------
    async def execute_sql_on_async(self, node: NodeRef, sql: str, *args: Any, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.execute_sql_on, node, sql, *args, **kwargs)

    async def execute_sql_on_random_async(self, sql: str, *args: Any, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.execute_sql_on_random, sql, *args, **kwargs)

    async def execute_sql_on_leader_async(self, sql: str, *args: Any, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.execute_sql_on_leader, sql, *args, **kwargs)

    async def execute_sql_on_all_async(self, sql: str, *args: Any, **kwargs: Any) -> list[Response]:
        return await asyncio.to_thread(self.execute_sql_on_all, sql, *args, **kwargs)

    async def leader_async(self, timeout: float = 10.0) -> N:
        return await asyncio.to_thread(self.leader, timeout)

    async def wait_for_replication_async(self, index: int | None = None, timeout: float = 10.0) -> int:
        return await asyncio.to_thread(self.wait_for_replication, index, timeout)

    async def verify_data_consistency_async(self, query: str, *args: Any, **kwargs: Any) -> ConsistencyReport:
        return await asyncio.to_thread(self.verify_data_consistency, query, *args, **kwargs)

    async def verify_state_digest_async(self, timeout: float = 10.0) -> DigestReport:
        return await asyncio.to_thread(self.verify_state_digest, timeout)


class Failpoints:
    """Run-time failpoints of nodes (disk faults and friends), over the authenticated admin call:
    `set(target, {"log.fsync": "1*eio"})`; "off" removes one. Works on any cluster the kit can
    reach as root, external ones included."""

    def __init__(self, cluster: ClusterOps[Any]):
        self._cluster = cluster

    def _admin(self, node: NodeHandle, method: str, body: dict | None = None) -> dict:
        with node.client(timeout=10) as c:
            resp = c._request(method, FAILPOINTS_PATH, orjson.dumps(body) if body is not None else None,
                              c._creds.header())
        if not resp.ok and "failpoints" not in resp:
            raise ClusterError(f"failpoints on {node!r}: {resp.error}")
        return dict(resp)

    def set(self, target: Target, failpoints: dict[str, str], *, clear: bool = False) -> list[NodeHandle]:
        """Switch failpoints on (or "off") on each target node; `clear` first removes all others."""
        from kalamdb.node.failpoints import NodeFailpoints

        for name, spec in failpoints.items():
            NodeFailpoints().set(name, spec)  # a clear error here, before any node is touched
        picked = self._cluster.select(target)
        for n in picked:
            self._admin(n, "POST", {"failpoints": failpoints, "clear": clear})
        return picked

    def get(self, node: NodeRef) -> dict[str, str]:
        return self._admin(self._cluster.get_node(node), "GET")["failpoints"]

    def clear(self, target: Target = "all") -> list[NodeHandle]:
        """Every run-time failpoint off on the target nodes that answer (others are skipped)."""
        done = []
        for n in self._cluster.select(target):
            if n.is_up():
                try:
                    self._admin(n, "POST", {"clear": True})
                except (ClusterError, OSError):
                    continue
                done.append(n)
        return done
