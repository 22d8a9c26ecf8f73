"""Real N-node kalamdb clusters for tests: each node is a `python -m kalamdb serve` process.

Ports are chosen without races: the kit binds each node's API and Raft sockets itself (port 0, so
the kernel picks free ports), hands the listening sockets to the child process by file descriptor,
and only then closes its own copies. A restarted node binds the same ports again, as a real server
does with its configured ports.

Replication is waited for, never slept for: every write answer carries its Raft index, and
`wait_for_replication` long-polls each node's `/v1/api/cluster/wait` until it applied that index.
"""

from __future__ import annotations

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

from kalamdb.client import Client, Response
from kalamdb.testing.consistency import ConsistencyReport, DigestReport, compare_results
from kalamdb.testing.progress import progress

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TEST_HEARTBEAT_MS = 50
TEST_ELECTION_MS = (150, 300)

_live: set[ClusterNodeProcess] = set()
_live_lock = threading.Lock()


class ClusterError(AssertionError):
    """A cluster did not reach the state a test needs; the message says which nodes and why."""


def _bind(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(2048)
    s.set_inheritable(True)
    return s


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


class ClusterNodeProcess:
    """One node of a test cluster: a real process, its data dir, its log and its fixed ports."""

    def __init__(self, index: int, node_id: int, root: Path, *, cluster: ClusterTestServer):
        self.index = index
        self.node_id = node_id
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
        self._client: Client | None = None
        self._client_lock = threading.Lock()

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
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True,
                                         pass_fds=(self._api_sock.fileno(), self._rpc_sock.fileno()))
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
        return self.proc.returncode

    def pause(self) -> None:
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

    # ---- HTTP ---------------------------------------------------------------------------------
    def client(self, timeout: float = 15.0) -> Client:
        return Client(self.client_url, user="root", password=self.cluster.root_password, timeout=timeout)

    @property
    def client_url(self) -> str:
        """Where clients reach this node (a fault-injection proxy may stand in between)."""
        return self.cluster.client_url_for(self)

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
        if consistency is not None:
            extra["consistency"] = consistency
        with self._client_lock:
            if self._client is None:
                self._client = self.client()
            return self._client.sql(text, params, namespace_id, **extra)

    def health(self, timeout: float = 5.0) -> dict:
        return self._request("GET", "/v1/api/cluster/health", timeout=timeout)

    def applied_index(self) -> int:
        return int(self.health()["last_applied"])

    def is_leader(self) -> bool:
        return bool(self.health().get("is_leader"))

    def wait_applied(self, index: int, timeout: float) -> int:
        """Long-poll until this node applied `index`; returns the node's applied index."""
        resp = self._request("GET", f"/v1/api/cluster/wait?index={index}&timeout_ms={int(timeout * 1000)}",
                             timeout=timeout + 5)
        return int(resp.get("applied_index", -1))

    def digest(self) -> dict:
        return self._request("GET", "/v1/api/cluster/digest", timeout=30)

    def stats(self) -> NodeStats:
        rss = cpu = None
        running = self.is_running()
        if running:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(self.proc.pid)
                rss = p.memory_info().rss / (1 << 20)
                cpu = p.cpu_percent(interval=0.05)
        h: dict = {}
        if running and not self.paused:
            with contextlib.suppress(OSError):
                h = self.health(timeout=2.0)
        me = next((n for n in h.get("nodes", []) if n.get("is_self")), {})
        return NodeStats(self.node_id, running, rss, cpu, h.get("current_term"), h.get("commit_index"),
                         h.get("last_applied"), me.get("role"), me.get("replication_lag"))


@dataclass
class ClusterTestServer:
    """A running N-node cluster of real processes, with the helpers cluster tests need."""

    size: int = 3
    root: Path | None = None
    heartbeat_ms: int = TEST_HEARTBEAT_MS
    election_ms: tuple[int, int] = TEST_ELECTION_MS
    snapshot_policy: str = "LogsSinceLast(20000)"
    log_level: str = "info"
    leader_wait_ms: int = 2000
    write_timeout_ms: int = 3000
    root_password: str = "kit-root-pw"
    keep: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    verbose: bool = False
    cluster_id: str = field(default_factory=lambda: f"kit-{uuid.uuid4().hex[:8]}")
    secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    jwt_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    nodes: list[ClusterNodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._owns_root = self.root is None
        self.root = Path(self.root or tempfile.mkdtemp(prefix="kalamdb-cluster-"))
        self._rng = random.Random()
        self._ns_counter = 0
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kit")

    # ---- starting -----------------------------------------------------------------------------
    def peers_for(self, node: ClusterNodeProcess) -> str:
        """KALAMDB_CLUSTER_PEERS for `node` (a fault-injection layer routes each link via a proxy)."""
        return self._peers()

    def client_url_for(self, node: ClusterNodeProcess) -> str:
        return node.url

    def _peers(self) -> str:
        return ";".join(f"{n.node_id}@{n.rpc_addr}@{n.url}" for n in self.nodes)

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> ClusterTestServer:
        progress(f"🚀 Starting {self.size}-node cluster…", self.verbose)
        t0 = time.monotonic()
        self.nodes = [ClusterNodeProcess(i, i + 1, self.root, cluster=self) for i in range(self.size)]
        for n in self.nodes:
            progress(f"📍 Starting node {n.node_id} of {self.size}…", self.verbose)
            n.spawn(self.peers_for(n))
        try:
            self.wait_for_voters({n.node_id for n in self.nodes}, timeout=timeout)
        except BaseException:
            self.shutdown()
            raise
        self.start_seconds = time.monotonic() - t0
        progress(f"✅ {self.size}-node cluster started in {self.start_seconds:.2f}s "
                 f"(leader: node {self.leader().node_id})", self.verbose)
        return self

    def _health_all(self, nodes: Iterable[ClusterNodeProcess] | None = None) -> dict[int, dict | Exception]:
        nodes = list(nodes if nodes is not None else self.running_nodes())

        def one(n: ClusterNodeProcess) -> dict | Exception:
            try:
                return n.health(timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - reported per node
                return exc

        return dict(zip([n.node_id for n in nodes], self._pool.map(one, nodes), strict=True))

    def _until(self, what: str, check: Callable[[], tuple[bool, str]], timeout: float) -> None:
        """Re-check `check` until it holds; on timeout raise with its last explanation and log tails."""
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

    def wait_for_voters(self, voters: set[int], timeout: float = STARTUP_TIMEOUT_S) -> None:
        def check() -> tuple[bool, str]:
            hs = self._health_all()
            bad = {nid: h for nid, h in hs.items() if isinstance(h, Exception)}
            if bad:
                return False, f"nodes not answering: {sorted(bad)}"
            leaders = {h.get("leader_id") for h in hs.values()}
            if len(leaders) != 1 or None in leaders:
                return False, f"nodes disagree on the leader: { {k: h.get('leader_id') for k, h in hs.items()} }"
            want = sorted(voters)
            views = {nid: h.get("voters") for nid, h in hs.items()}
            if any(v != want for v in views.values()):
                return False, f"voters seen by each node: {views}, want {want}"
            return True, ""

        self._until(f"voters {sorted(voters)} and one agreed leader", check, timeout)

    # ---- nodes --------------------------------------------------------------------------------
    def get_node(self, i: int) -> ClusterNodeProcess:
        if not 0 <= i < len(self.nodes):
            raise IndexError(f"node index {i} out of range: the cluster has {len(self.nodes)} nodes (0-based)")
        return self.nodes[i]

    def running_nodes(self) -> list[ClusterNodeProcess]:
        return [n for n in self.nodes if n.is_running() and not n.paused]

    def wait_for_leader(self, timeout: float = 10.0, among: Iterable[ClusterNodeProcess] | None = None
                        ) -> ClusterNodeProcess:
        """The one leader that every running (unpaused) node agrees on, and that says it leads."""
        found: list[ClusterNodeProcess] = []
        group = list(among) if among is not None else None

        def check() -> tuple[bool, str]:
            nodes = group if group is not None else self.running_nodes()
            hs = self._health_all(nodes)
            views = {nid: (h.get("leader_id") if isinstance(h, dict) else f"error: {h}") for nid, h in hs.items()}
            ids = set(views.values())
            if len(ids) != 1:
                return False, f"leader seen by each node: {views}"
            (lid,) = ids
            if not isinstance(lid, int):
                return False, f"no leader known: {views}"
            leader = self.node_by_id(lid)
            if leader is None or leader.node_id not in hs or not hs[lid].get("is_leader"):
                return False, f"node {lid} is named leader but does not say it leads: {views}"
            found[:] = [leader]
            return True, ""

        self._until("one agreed leader", check, timeout)
        return found[0]

    def node_by_id(self, node_id: int) -> ClusterNodeProcess | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def leader(self, timeout: float = 10.0) -> ClusterNodeProcess:
        return self.wait_for_leader(timeout)

    def followers(self, timeout: float = 10.0) -> list[ClusterNodeProcess]:
        lead = self.leader(timeout)
        return [n for n in self.nodes if n is not lead]

    # ---- SQL ------------------------------------------------------------------------------------
    def execute_sql_on(self, i: int, sql: str, params: list | None = None, namespace_id: str | None = None,
                       **extra: Any) -> Response:
        return self.get_node(i).sql(sql, params, namespace_id, **extra)

    def execute_sql_on_random(self, sql: str, params: list | None = None, namespace_id: str | None = None,
                              **extra: Any) -> Response:
        node = self._rng.choice(self.running_nodes())
        return node.sql(sql, params, namespace_id, **extra)

    def execute_sql_on_leader(self, sql: str, params: list | None = None, namespace_id: str | None = None,
                              **extra: Any) -> Response:
        return self.leader().sql(sql, params, namespace_id, **extra)

    def execute_sql_on_all(self, sql: str, params: list | None = None, namespace_id: str | None = None,
                           **extra: Any) -> list[Response]:
        """One response per node, in node order (stopped nodes answer an error response)."""
        def one(n: ClusterNodeProcess) -> Response:
            if not n.is_running() or n.paused:
                r = Response({"status": "error", "error": {"code": "NODE_DOWN", "message": f"{n!r} is not running"}})
                return r
            return n.sql(sql, params, namespace_id, **extra)

        return list(self._pool.map(one, self.nodes))

    # ---- replication ----------------------------------------------------------------------------
    def wait_for_replication(self, index: int | None = None, timeout: float = 10.0,
                             nodes: Iterable[ClusterNodeProcess] | None = None) -> int:
        """Return once every running node applied `index` (default: the leader's commit index now).
        Raises naming each lagging node and how far behind it is."""
        targets = list(nodes) if nodes is not None else [n for n in self.nodes if n.is_running()]
        if index is None:
            index = int(self.leader(timeout).health()["commit_index"])
        progress("⏳ Waiting for replication…", self.verbose)
        deadline = time.monotonic() + timeout

        def one(n: ClusterNodeProcess) -> int | Exception:
            try:
                return n.wait_applied(index, max(0.01, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - reported per node
                return exc

        got = dict(zip([n.node_id for n in targets], self._pool.map(one, targets), strict=True))
        lagging = {nid: a for nid, a in got.items() if isinstance(a, Exception) or a < index}
        if lagging:
            parts = [f"node {nid}: {'error ' + repr(a) if isinstance(a, Exception) else f'applied {a}, behind by {index - a}'}"
                     for nid, a in sorted(lagging.items())]
            raise ClusterError(f"replication of index {index} not complete after {timeout:.1f}s: " + "; ".join(parts))
        progress("✅ Replicated to all nodes", self.verbose)
        return index

    def verify_data_consistency(self, query: str, params: list | None = None, namespace_id: str | None = None,
                                timeout: float = 10.0) -> ConsistencyReport:
        """Replication barrier, then `query` with local consistency on every running node; compare."""
        index = self.wait_for_replication(timeout=timeout)
        running = [n for n in self.nodes if n.is_running() and not n.paused]
        answers = list(self._pool.map(
            lambda n: n.sql(query, params, namespace_id, consistency="local", min_applied_index=index), running))
        return compare_results(query, index, {n.node_id: a for n, a in zip(running, answers, strict=True)})

    def verify_state_digest(self, timeout: float = 10.0) -> DigestReport:
        """Digests of every running node taken at the same applied index (after a barrier)."""
        deadline = time.monotonic() + timeout
        while True:
            index = self.wait_for_replication(timeout=max(0.1, deadline - time.monotonic()))
            running = [n for n in self.nodes if n.is_running() and not n.paused]
            digests = {n.node_id: n.digest() for n in running}
            indexes = {d["applied_index"] for d in digests.values()}
            if len(indexes) == 1 or time.monotonic() >= deadline:
                return DigestReport(index, digests)
            # a write landed between the barrier and the digests: take them again

    # ---- faults and lifecycle ------------------------------------------------------------------
    def kill(self, i: int) -> None:
        self.get_node(i).terminate(signal.SIGKILL)

    def stop(self, i: int) -> None:
        self.get_node(i).terminate(signal.SIGTERM)

    def start_node(self, i: int, wait: bool = True, timeout: float = STARTUP_TIMEOUT_S) -> None:
        n = self.get_node(i)
        n.spawn(self.peers_for(n))
        if wait:
            self._until(f"node {n.node_id} to answer", lambda: (_answers(n), f"{n!r} not answering"), timeout)

    # `start(i)` as in the API; `start()` with no index starts the whole cluster.
    def restart(self, i: int, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S) -> None:
        n = self.get_node(i)
        n.terminate(signal.SIGKILL if kill else signal.SIGTERM)
        self.start_node(i, timeout=timeout)

    def pause(self, i: int) -> None:
        self.get_node(i).pause()

    def resume(self, i: int) -> None:
        self.get_node(i).resume()

    def kill_all(self) -> None:
        for n in self.nodes:
            n.send_signal(signal.SIGKILL)
        for n in self.nodes:
            n.terminate(signal.SIGKILL)

    def restart_all(self, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S) -> None:
        if kill:
            self.kill_all()
        else:
            for n in self.nodes:
                n.terminate(signal.SIGTERM)
        for n in self.nodes:
            n.spawn(self.peers_for(n))
        self.wait_for_leader(timeout)

    def add_node(self, timeout: float = STARTUP_TIMEOUT_S) -> ClusterNodeProcess:
        """Start a new node and join it with CLUSTER JOIN (learner, catch up, voter)."""
        leader = self.leader()  # before the new node runs: it knows no leader until it joins
        nid = max(n.node_id for n in self.nodes) + 1
        n = ClusterNodeProcess(len(self.nodes), nid, self.root, cluster=self)
        self.nodes.append(n)
        n.spawn(self.peers_for(n))
        resp = leader.sql(f"CLUSTER JOIN {nid} '{n.rpc_addr}' '{n.url}'")
        if not resp.ok:
            raise ClusterError(f"CLUSTER JOIN {nid} failed: {resp.error}\n{n.log_tail()}")
        self.wait_for_voters({m.node_id for m in self.nodes if m.is_running()} , timeout)
        return n

    def remove_node(self, i: int, timeout: float = STARTUP_TIMEOUT_S) -> None:
        n = self.get_node(i)
        resp = self.execute_sql_on_leader(f"CLUSTER LEAVE {n.node_id}")
        if not resp.ok:
            raise ClusterError(f"CLUSTER LEAVE {n.node_id} failed: {resp.error}")
        n.terminate(signal.SIGTERM)
        self.nodes.remove(n)
        for j, m in enumerate(self.nodes):
            m.index = j
        self.wait_for_voters({m.node_id for m in self.nodes if m.is_running()}, timeout)

    def node_stats(self, i: int) -> NodeStats:
        return self.get_node(i).stats()

    def unique_namespace(self, prefix: str = "ns") -> str:
        self._ns_counter += 1
        return f"{prefix}_{os.getpid()}_{self._ns_counter}_{uuid.uuid4().hex[:6]}"

    def shutdown(self) -> None:
        for n in self.nodes:
            n.send_signal(signal.SIGCONT)
            n.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.terminate(signal.SIGTERM, timeout=10)
        self._pool.shutdown(wait=False)
        if self._owns_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _answers(n: ClusterNodeProcess) -> bool:
    try:
        n.health(timeout=1.0)
        return True
    except OSError:
        return False


def start_cluster_server(nodes: int = 3, *, timeout: float = STARTUP_TIMEOUT_S, **options: Any
                         ) -> ClusterTestServer:
    """Start `nodes` real processes, form the cluster, and return once all are voters and agree
    on one leader. Options: the ClusterTestServer fields (heartbeat_ms, election_ms, log_level, ...)."""
    return ClusterTestServer(size=nodes, **options).start(timeout=timeout)


_global: ClusterTestServer | None = None
_global_lock = threading.Lock()


def get_cluster_server() -> ClusterTestServer:
    """A lazily started, process-wide 3-node cluster shared by tests; shut down at exit."""
    global _global
    with _global_lock:
        if _global is None:
            log_level = os.environ.get("KALAMDB_LOG", "warn")
            _global = start_cluster_server(3, log_level=log_level)
        return _global


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
