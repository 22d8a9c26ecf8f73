"""Real N-node kalamdb clusters for tests: each node is a `python -m kalamdb serve` process.

Ports are chosen without races: the kit binds each node's API and Raft sockets itself (port 0, so
the kernel picks free ports), hands the listening sockets to the child process by file descriptor,
and only then closes its own copies. A restarted node binds the same ports again, as a real server
does with its configured ports.

Replication is waited for, never slept for: every write answer carries its Raft index, and
`wait_for_replication` long-polls each node's `/v1/api/cluster/wait` until it applied that index.

`ClusterOps` holds everything that only needs HTTP (SQL on nodes, leader discovery, replication
barriers, consistency checks), so the same helpers drive clusters the kit started
(`ClusterTestServer`) and clusters it did not (`kalamdb.testing.external.ExternalCluster`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil

from kalamdb import lifeline
from kalamdb.client import Client, Response
from kalamdb.testing.consistency import ConsistencyReport, DigestReport, compare_results
from kalamdb.testing.progress import progress
from kalamdb.testing.runs import RunRecord, sweep_stale

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TEST_HEARTBEAT_MS = 50
TEST_ELECTION_MS = (150, 300)
MAX_WAIT_S = 60.0  # the server's longest /cluster/wait long poll

_live: set[ClusterNodeProcess] = set()
_live_lock = threading.Lock()


class ClusterError(AssertionError):
    """A cluster did not reach the state a test needs; the message says which nodes and why."""


class ProcessControlUnavailable(RuntimeError):
    """The kit cannot start, stop or signal this cluster's processes (an external cluster)."""


def _bind(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(2048)
    s.set_inheritable(True)
    return s


def default_seed() -> int:
    """KALAMDB_SEED if set (to replay a failure), else a fresh seed that failure reports print."""
    env = os.environ.get("KALAMDB_SEED")
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"KALAMDB_SEED must be an integer, got {env!r}") from None
    return random.SystemRandom().randrange(1 << 32)


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
    pid: int | None = None
    data_dir: Path | None = None
    log_path: Path | None = None

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

    def is_running(self) -> bool:
        raise NotImplementedError

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

    def health(self, timeout: float = 5.0) -> dict:
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
        me = next((n for n in h.get("nodes", []) if n.get("is_self")), {})
        if rss is None and me.get("memory_usage_mb") is not None:
            rss = float(me["memory_usage_mb"])
        lag = None
        if h.get("commit_index") is not None and h.get("last_applied") is not None:
            lag = max(0, int(h["commit_index"]) - int(h["last_applied"]))
        return NodeStats(self.node_id, running, rss, cpu, h.get("current_term"), h.get("commit_index"),
                         h.get("last_applied"), me.get("role"), lag, cpu_s)

    async def health_async(self) -> dict:
        return await asyncio.to_thread(self.health)


class ClusterNodeProcess(NodeHandle):
    """One node of a test cluster: a real process, its data dir, its log and its fixed ports."""

    def __init__(self, index: int, node_id: int, root: Path, *, cluster: ClusterTestServer):
        super().__init__(index, node_id, cluster.root_password)
        self.cluster = cluster
        self.data_dir = root / f"node{node_id}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"node{node_id}.log"
        self._api_sock: socket.socket | None = _bind()
        self._rpc_sock: socket.socket | None = _bind()
        self.api_port = self._api_sock.getsockname()[1]
        self.rpc_port = self._rpc_sock.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.paused = False

    # ---- identity -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.is_running() else "stopped")
        return f"<node {self.node_id} (index {self.index}) {self.url} {state}>"

    # ---- process control --------------------------------------------------------------------
    def spawn(self, peers: str) -> None:
        if self.is_running():
            raise RuntimeError(f"node {self.node_id} is already running (pid {self.pid})")
        if self._api_sock is None:
            self._api_sock = _bind(self.api_port)
            self._rpc_sock = _bind(self.rpc_port)
        c = self.cluster
        env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
        env.update({
            "KALAMDB_NODE_ID": str(self.node_id),
            "KALAMDB_CLUSTER_ID": c.cluster_id,
            "KALAMDB_CLUSTER_RPC_ADDR": self.rpc_addr,
            "KALAMDB_CLUSTER_API_ADDR": self.url,
            "KALAMDB_CLUSTER_PEERS": peers,
            "KALAMDB_CLUSTER_SECRET": c.secret,
            "KALAMDB_CLUSTER_HEARTBEAT_INTERVAL_MS": str(c.heartbeat_ms),
            "KALAMDB_CLUSTER_ELECTION_TIMEOUT_MS": f"{c.election_ms[0]},{c.election_ms[1]}",
            "KALAMDB_CLUSTER_SNAPSHOT_POLICY": c.snapshot_policy,
            "KALAMDB_CLUSTER_LEADER_WAIT_MS": str(c.leader_wait_ms),
            "KALAMDB_CLUSTER_WRITE_TIMEOUT_MS": str(c.write_timeout_ms),
            "KALAMDB_ROOT_PASSWORD": c.root_password,
            "KALAMDB_JWT_SECRET": c.jwt_secret,
            "KALAMDB_LOG": c.log_level,
        })
        env.update(c.extra_env)
        cmd = [sys.executable, "-m", "kalamdb", "serve", "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--port", str(self.api_port),
               "--listen-fd", str(self._api_sock.fileno()), "--rpc-fd", str(self._rpc_sock.fileno())]
        with open(self.log_path, "ab") as log:
            log.write(f"---- kit: starting node {self.node_id} at {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            self.proc = lifeline.spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True,
                                       pass_fds=(self._api_sock.fileno(), self._rpc_sock.fileno()))
        c.run_record.add_process(self.proc.pid)
        # The child owns the listening sockets now.
        self._api_sock.close()
        self._rpc_sock.close()
        self._api_sock = self._rpc_sock = None
        self.paused = False
        with _live_lock:
            _live.add(self)

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        self.drop_client()
        if self.proc is None:
            return None
        if self.paused and sig != signal.SIGKILL:
            self.send_signal(signal.SIGCONT)
        self.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.paused = False
        with _live_lock:
            _live.discard(self)
        self.cluster.run_record.forget_process(self.proc.pid)
        return self.proc.returncode

    def pause(self) -> None:
        if not self.is_running():
            raise ClusterError(f"cannot pause {self!r}: it is not running")
        self.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _process_stats(self) -> tuple[float | None, float | None, float | None]:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(self.proc.pid)
            times = p.cpu_times()
            percent = p.cpu_percent(interval=0.05) if not self.paused else 0.0
            return p.memory_info().rss / (1 << 20), percent, times.user + times.system
        return None, None, None


def agreed_leader(healths: dict[int, dict | Exception]) -> tuple[int | None, str]:
    """Decide from every node's health answer which node leads, or say why nobody safely does.

    A leader is returned only when exactly one node claims leadership, every answering node names
    it, no answering node is in a newer term, and the nodes that confirm it are a majority of its
    voters: a stale leader cut off from the others (or one of two claimants in different terms)
    is never returned."""
    answers = {nid: h for nid, h in healths.items() if isinstance(h, dict)}
    silent = sorted(nid for nid, h in healths.items() if not isinstance(h, dict))
    if not answers:
        return None, f"no node answers (silent: {silent})"
    claimants = {nid: h.get("current_term") for nid, h in answers.items() if h.get("is_leader")}
    if len(claimants) > 1:
        return None, f"{len(claimants)} nodes claim leadership: " + ", ".join(
            f"node {nid} in term {term}" for nid, term in sorted(claimants.items()))
    views = {nid: h.get("leader_id") for nid, h in answers.items()}
    if len(set(views.values())) != 1:
        return None, f"nodes disagree on the leader (node: leader it names): {views}"
    lid = next(iter(views.values()))
    if lid is None:
        return None, f"no node knows a leader (answering: {sorted(answers)}, silent: {silent})"
    if lid not in answers:
        return None, f"node {lid} is named leader but does not answer (silent: {silent})"
    if lid not in claimants:
        return None, f"node {lid} is named leader but does not say it leads"
    term = int(answers[lid].get("current_term") or 0)
    newer = {nid: h.get("current_term") for nid, h in answers.items() if int(h.get("current_term") or 0) > term}
    if newer:
        return None, f"node {lid} leads term {term} but nodes are in newer terms: {newer}"
    voters = list(answers[lid].get("voters") or [])
    confirming = sorted(nid for nid in answers if nid in voters)
    if voters and len(confirming) * 2 <= len(voters):
        return None, (f"only nodes {confirming} confirm node {lid} as leader (term {term}); a majority of "
                      f"voters {voters} must (silent: {silent})")
    return lid, ""


class ClusterOps:
    """Helpers that need only HTTP: SQL on nodes, the leader, replication barriers, comparisons.

    Subclasses provide `nodes` (node handles in index order), `verbose`, `seed`, and call
    `_init_ops()`; process control (kill, stop, start, ...) is theirs to offer or to refuse."""

    nodes: list[NodeHandle]
    verbose: bool
    seed: int

    def _init_ops(self) -> None:
        self._rng = random.Random(self.seed)
        self._ns_counter = 0
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kit")

    # ---- nodes ----------------------------------------------------------------------------------
    def get_node(self, i: int) -> NodeHandle:
        """Node by 0-based index, as upstream's `get_node(i)`."""
        if not isinstance(i, int) or not 0 <= i < len(self.nodes):
            raise IndexError(f"node index {i!r} out of range: the cluster has {len(self.nodes)} nodes (0-based)")
        return self.nodes[i]

    def node_by_id(self, node_id: int) -> NodeHandle | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def running_nodes(self) -> list[NodeHandle]:
        """Nodes whose process runs and is not paused: the ones that can answer."""
        return [n for n in self.nodes if n.is_running() and not n.paused]

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

    def wait_for_leader(self, timeout: float = 10.0, among: Iterable[NodeHandle] | None = None) -> NodeHandle:
        """The one leader the answering nodes agree on (see `agreed_leader` for what is required);
        raises ClusterError saying why when there is none within `timeout`."""
        found: list[NodeHandle] = []
        group = list(among) if among is not None else None

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

    def leader(self, timeout: float = 10.0) -> NodeHandle:
        return self.wait_for_leader(timeout)

    def followers(self, timeout: float = 10.0) -> list[NodeHandle]:
        """The running, unpaused nodes other than the agreed leader (in node order)."""
        lead = self.leader(timeout)
        return [n for n in self.running_nodes() if n is not lead]

    # ---- SQL ------------------------------------------------------------------------------------
    def execute_sql_on(self, i: int, sql: str, params: list | None = None, namespace_id: str | None = None,
                       **extra: Any) -> Response:
        return self.get_node(i).sql(sql, params, namespace_id, **extra)

    def random_node(self) -> NodeHandle:
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
            if not n.is_running() or n.paused:
                r = Response({"status": "error", "error": {"code": "NODE_DOWN", "message": f"{n!r} is not running"}})
                r.node_id = n.node_id
                return r
            return n.sql(sql, params, namespace_id, **extra)

        return list(self._pool.map(one, self.nodes))

    # ---- replication ----------------------------------------------------------------------------
    def wait_for_replication(self, index: int | None = None, timeout: float = 10.0,
                             nodes: Iterable[NodeHandle] | None = None) -> int:
        """Return once every running node (paused ones included) applied `index` (default: the
        leader's commit index now). Raises naming each lagging node and how far behind it is."""
        deadline = time.monotonic() + timeout
        targets = list(nodes) if nodes is not None else [n for n in self.nodes if n.is_running()]
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
    def node_stats(self, i: int) -> NodeStats:
        """RSS, CPU, term, commit and applied index of node i; the replication lag is the leader's
        view of it when a leader is known (else the node's own commit - applied)."""
        node = self.get_node(i)
        st = node.stats()
        for h in self._health_all().values():
            if isinstance(h, dict) and h.get("is_leader"):
                entry = next((e for e in h.get("nodes", []) if e.get("node_id") == node.node_id), None)
                if entry is not None and entry.get("replication_lag") is not None:
                    st.replication_lag = int(entry["replication_lag"])
        return st

    def unique_namespace(self, prefix: str = "ns") -> str:
        """A namespace name no other test (or test process) uses."""
        self._ns_counter += 1
        return f"{prefix}_{os.getpid()}_{self._ns_counter}_{uuid.uuid4().hex[:6]}"

    def describe(self, log_lines: int = 25) -> str:
        """Each node's state and log tail, the seed and where the artifacts are: for failure reports."""
        lines = [f"cluster seed {self.seed} (replay with KALAMDB_SEED={self.seed})"]
        root = getattr(self, "root", None)
        if root is not None:
            lines.append(f"artifacts (data dirs, node logs): {root}")
        for n in self.nodes:
            lines.append(f"--- {n!r} pid {n.pid} log {n.log_path} ---")
            lines.append(n.log_tail(log_lines))
        return "\n".join(lines)

    def step(self, message: str) -> None:
        """A progress line for a test step (📝), shown with `pytest -s` only."""
        progress(f"📝 {message}", self.verbose)

    # ---- async twins ------------------------------------------------------------------------------
    async def execute_sql_on_async(self, i: int, sql: str, *args: Any, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.execute_sql_on, i, sql, *args, **kwargs)

    async def execute_sql_on_random_async(self, sql: str, *args: Any, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.execute_sql_on_random, sql, *args, **kwargs)

    async def execute_sql_on_leader_async(self, sql: str, *args: Any, **kwargs: Any) -> Response:
        return await asyncio.to_thread(self.execute_sql_on_leader, sql, *args, **kwargs)

    async def execute_sql_on_all_async(self, sql: str, *args: Any, **kwargs: Any) -> list[Response]:
        return await asyncio.to_thread(self.execute_sql_on_all, sql, *args, **kwargs)

    async def leader_async(self, timeout: float = 10.0) -> NodeHandle:
        return await asyncio.to_thread(self.leader, timeout)

    async def wait_for_replication_async(self, index: int | None = None, timeout: float = 10.0) -> int:
        return await asyncio.to_thread(self.wait_for_replication, index, timeout)

    async def verify_data_consistency_async(self, query: str, *args: Any, **kwargs: Any) -> ConsistencyReport:
        return await asyncio.to_thread(self.verify_data_consistency, query, *args, **kwargs)

    async def verify_state_digest_async(self, timeout: float = 10.0) -> DigestReport:
        return await asyncio.to_thread(self.verify_state_digest, timeout)


def _env_log_level() -> str:
    return os.environ.get("KALAMDB_LOG") or "info"


@dataclass(eq=False)
class ClusterTestServer(ClusterOps):
    """A running N-node cluster of real processes, with the helpers cluster tests need."""

    size: int = 3
    root: Path | None = None
    heartbeat_ms: int = TEST_HEARTBEAT_MS
    election_ms: tuple[int, int] = TEST_ELECTION_MS
    snapshot_policy: str = "LogsSinceLast(20000)"
    log_level: str = field(default_factory=_env_log_level)
    leader_wait_ms: int = 2000
    write_timeout_ms: int = 3000
    root_password: str = "kit-root-pw"
    keep: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    verbose: bool = False
    seed: int = field(default_factory=default_seed)
    cluster_id: str = field(default_factory=lambda: f"kit-{uuid.uuid4().hex[:8]}")
    secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    jwt_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    nodes: list[ClusterNodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"a cluster needs at least 1 node, got nodes={self.size!r}")
        if self.log_level not in ("error", "warn", "warning", "info", "debug"):
            raise ValueError(f"log_level must be error|warn|info|debug, got {self.log_level!r}")
        sweep_stale()  # nodes and network objects of kit runs whose process died
        self._owns_root = self.root is None
        self.root = Path(self.root or tempfile.mkdtemp(prefix="kalamdb-cluster-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_record = RunRecord(self.root, owns_root=self._owns_root)
        self.start_seconds: float | None = None
        self._init_ops()

    # ---- starting -----------------------------------------------------------------------------
    def _peers(self) -> str:
        return ";".join(f"{n.node_id}@{n.rpc_addr}@{n.url}" for n in self.nodes)

    def start(self, i: int | None = None, *, timeout: float = STARTUP_TIMEOUT_S, wait: bool = True
              ) -> ClusterTestServer:
        """`start()` starts the whole cluster and returns once all nodes are voters agreeing on one
        leader; `start(i)` starts node i again (the issue's name for `start_node(i)`)."""
        if i is not None:
            self.start_node(i, wait=wait, timeout=timeout)
            return self
        if self.nodes:
            raise RuntimeError("this cluster was started already; use start(i) or restart_all()")
        progress(f"🚀 Starting {self.size}-node cluster…", self.verbose)
        t0 = time.monotonic()
        self.nodes = [ClusterNodeProcess(i, i + 1, self.root, cluster=self) for i in range(self.size)]
        peers = self._peers()
        for n in self.nodes:
            progress(f"📍 Starting node {n.node_id} of {self.size}…", self.verbose)
            n.spawn(peers)
        try:
            self.wait_for_voters({n.node_id for n in self.nodes}, timeout=timeout)
        except Exception as exc:
            self.keep = True
            self.shutdown()
            raise ClusterError(f"{self.size}-node cluster did not form: {exc}\n"
                               f"artifacts (data dirs, node logs) kept in {self.root}") from exc
        except BaseException:
            self.shutdown()
            raise
        self.start_seconds = time.monotonic() - t0
        progress(f"✅ {self.size}-node cluster started in {self.start_seconds:.2f}s "
                 f"(leader: node {self.leader().node_id})", self.verbose)
        return self

    def wait_for_voters(self, voters: set[int], timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Until every running node answers, names the same leader and sees exactly `voters`."""
        def check() -> tuple[bool, str]:
            dead = [n for n in self.nodes if n.proc is not None and not n.is_running()
                    and n.node_id in voters and n.proc.returncode not in (None, -signal.SIGKILL, -signal.SIGTERM)]
            if dead:
                n = dead[0]
                raise ClusterError(f"node {n.node_id} exited with code {n.proc.returncode}:\n{n.log_tail(30)}")
            hs = self._health_all()
            bad = {nid: h for nid, h in hs.items() if isinstance(h, Exception)}
            if bad:
                return False, f"nodes not answering: {sorted(bad)}"
            lid, why = agreed_leader(hs)
            if lid is None:
                return False, why
            want = sorted(voters)
            views = {nid: h.get("voters") for nid, h in hs.items()}
            if any(v != want for v in views.values()):
                return False, f"voters seen by each node: {views}, want {want}"
            return True, ""

        self.wait_until(f"voters {sorted(voters)} and one agreed leader", check, timeout)

    # ---- faults and lifecycle ------------------------------------------------------------------
    def kill(self, i: int) -> None:
        """SIGKILL node i (a crash: nothing of its shutdown code runs)."""
        self.get_node(i).terminate(signal.SIGKILL)

    def stop(self, i: int) -> None:
        """SIGTERM node i and wait for its graceful exit."""
        self.get_node(i).terminate(signal.SIGTERM)

    def start_node(self, i: int, wait: bool = True, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start node i again on its data dir and ports; with `wait`, until it answers."""
        n = self.get_node(i)
        n.spawn(self._peers())
        if wait:
            def answers() -> tuple[bool, str]:
                if not n.is_running():
                    raise ClusterError(f"node {n.node_id} exited with code {n.proc.returncode}:\n{n.log_tail(30)}")
                return _answers(n), f"{n!r} not answering"
            self.wait_until(f"node {n.node_id} to answer", answers, timeout)

    def restart(self, i: int, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start node i on the same data dir."""
        n = self.get_node(i)
        n.terminate(signal.SIGKILL if kill else signal.SIGTERM)
        self.start_node(i, timeout=timeout)

    def pause(self, i: int) -> None:
        """SIGSTOP node i: it stays connected but answers nothing (a hung process)."""
        self.get_node(i).pause()

    def resume(self, i: int) -> None:
        """SIGCONT node i."""
        self.get_node(i).resume()

    def kill_all(self) -> None:
        for n in self.nodes:
            n.send_signal(signal.SIGKILL)
        for n in self.nodes:
            n.terminate(signal.SIGKILL)

    def restart_all(self, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Stop every node (gracefully, or SIGKILL with kill=True), start them all, wait for a leader
        that all nodes agree on."""
        if kill:
            self.kill_all()
        else:
            for n in self.nodes:
                n.send_signal(signal.SIGCONT)
                n.send_signal(signal.SIGTERM)
            for n in self.nodes:
                n.terminate(signal.SIGTERM)
        peers = self._peers()
        for n in self.nodes:
            n.spawn(peers)
        self.wait_for_voters({n.node_id for n in self.nodes}, timeout)

    def new_node(self, timeout: float = STARTUP_TIMEOUT_S) -> ClusterNodeProcess:
        """Start a new node process that is not a member yet (it answers HTTP, knows no leader);
        `add_node` joins it, or a test drives CLUSTER JOIN itself."""
        nid = max(n.node_id for n in self.nodes) + 1
        n = ClusterNodeProcess(len(self.nodes), nid, self.root, cluster=self)
        self.nodes.append(n)
        n.spawn(self._peers())
        self.wait_until(f"new node {nid} to answer", lambda: (_answers(n), f"{n!r} not answering"), timeout)
        return n

    def add_node(self, timeout: float = STARTUP_TIMEOUT_S) -> ClusterNodeProcess:
        """Start a new node and join it with CLUSTER JOIN (learner, catch up, voter)."""
        leader = self.leader()  # before the new node runs: it knows no leader until it joins
        n = self.new_node(timeout)
        resp = leader.sql(f"CLUSTER JOIN {n.node_id} '{n.rpc_addr}' '{n.url}'")
        if not resp.ok:
            raise ClusterError(f"CLUSTER JOIN {n.node_id} failed: {resp.error}\n{n.log_tail()}")
        self.wait_for_voters({m.node_id for m in self.nodes if m.is_running()}, timeout)
        progress(f"✅ node {n.node_id} joined as a voter", self.verbose)
        return n

    def remove_node(self, i: int, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """CLUSTER LEAVE node i, stop its process and drop it from `nodes` (indexes shift down)."""
        n = self.get_node(i)
        resp = self.execute_sql_on_leader(f"CLUSTER LEAVE {n.node_id}")
        if not resp.ok:
            raise ClusterError(f"CLUSTER LEAVE {n.node_id} failed: {resp.error}")
        n.terminate(signal.SIGTERM)
        self.nodes.remove(n)
        for j, m in enumerate(self.nodes):
            m.index = j
        self.wait_for_voters({m.node_id for m in self.nodes if m.is_running()}, timeout)

    def heal(self) -> None:
        """Resume paused nodes and start stopped ones (the shared cluster does this between tests)."""
        for n in self.nodes:
            if n.paused:
                n.resume()
        for n in self.nodes:
            if not n.is_running():
                self.start_node(n.index)

    def shutdown(self) -> None:
        for n in self.nodes:
            n.send_signal(signal.SIGCONT)
            n.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.terminate(signal.SIGTERM, timeout=10)
        self._pool.shutdown(wait=False)
        if self._owns_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        self.run_record.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _answers(n: NodeHandle) -> bool:
    try:
        n.health(timeout=1.0)
        return True
    except OSError:
        return False


def start_cluster_server(nodes: int = 3, *, timeout: float = STARTUP_TIMEOUT_S, **options: Any
                         ) -> ClusterTestServer:
    """Start `nodes` real processes, form the cluster, and return once all are voters and agree
    on one leader. Options: the ClusterTestServer fields (heartbeat_ms, election_ms, log_level,
    root, keep, verbose, seed, extra_env, ...)."""
    return ClusterTestServer(size=nodes, **options).start(timeout=timeout)


_global: ClusterOps | None = None
_global_lock = threading.Lock()


def get_cluster_server(verbose: bool = False) -> ClusterOps:
    """A lazily started, process-wide 3-node cluster shared by tests; shut down at exit.

    With KALAMDB_CLUSTER_URLS set, the already running cluster at those URLs instead (see
    `kalamdb.testing.external`). Nodes a test left stopped or paused are brought back first."""
    global _global
    with _global_lock:
        if _global is None:
            urls = os.environ.get("KALAMDB_CLUSTER_URLS", "").strip()
            if urls:
                from kalamdb.testing.external import connect_external_cluster

                _global = connect_external_cluster(urls, verbose=verbose)
            else:
                log_level = os.environ.get("KALAMDB_LOG") or "warn"
                _global = start_cluster_server(3, log_level=log_level, verbose=verbose)
        elif isinstance(_global, ClusterTestServer):
            _global.heal()
        _global.verbose = verbose
        return _global


def shutdown_cluster_server() -> None:
    """Stop the shared cluster now (the next get_cluster_server() starts a new one)."""
    global _global
    with _global_lock:
        c, _global = _global, None
    if c is not None:
        c.shutdown()


@atexit.register
def _cleanup() -> None:
    if _global is not None:
        with contextlib.suppress(Exception):
            _global.shutdown()
    with _live_lock:
        procs = list(_live)
    for n in procs:
        with contextlib.suppress(Exception):
            n.send_signal(signal.SIGCONT)
            n.terminate(signal.SIGKILL, timeout=5)
