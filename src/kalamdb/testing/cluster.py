"""Real N-node kalamdb clusters for tests: each node is a `python -m kalamdb serve` process.

A `ClusterTestServer` is composed, not subclassed: the HTTP helpers every cluster has
(`kalamdb.testing.ops.ClusterOps`), a launcher that places and starts nodes
(`kalamdb.testing.launchers`), process control (`c.processes`), CPU and memory pressure
(`c.pressure`), run-time failpoints (`c.failpoints`) and, with `faults=True`, network faults
(`c.net`) in proxy or netns mode. `start_cluster_server(3, faults=True)` is the one entry point.

Replication is waited for, never slept for: every write answer carries its Raft index, and
`wait_for_replication` long-polls each node's `/v1/api/cluster/wait` until it applied that index.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from kalamdb.testing.faults import Pressure
from kalamdb.testing.launchers import Launcher, LoopbackLauncher, ProxyLauncher
from kalamdb.testing.leader import agreed_leader
from kalamdb.testing.membership import MembershipChanges
from kalamdb.testing.network import ClusterNetwork
from kalamdb.testing.nodes import ClusterError, NodeHandle, NodeStats
from kalamdb.testing.ops import ClusterOps, NodeRef
from kalamdb.testing.process import STARTUP_TIMEOUT_S, NodeProcess, ProcessControl, answers, kill_leftovers
from kalamdb.testing.progress import progress
from kalamdb.testing.runs import RunRecord, sweep_stale
from kalamdb.testing.seeds import default_seed

TEST_HEARTBEAT_MS = 50
TEST_ELECTION_MS = (150, 300)
NETWORK_MODES = ("proxy", "netns")

__all__ = [
    "ClusterError", "ClusterTestServer", "NodeHandle", "NodeProcess", "NodeStats", "agreed_leader",
    "default_seed", "get_cluster_server", "shutdown_cluster_server", "start_cluster_server",
]


def _env_log_level() -> str:
    return os.environ.get("KALAMDB_LOG") or "info"


@dataclass(eq=False)
class ClusterTestServer(ClusterOps[NodeProcess]):
    """A running N-node cluster of real processes, with the helpers cluster tests need.

    `faults=True` wires network faults (`net`); `network` picks the mode: "proxy" (default, no
    privileges) or "netns" (root: each node in its own network namespace; falls back to "proxy"
    with a warning where namespaces are unavailable). `network_mode` says which one runs."""

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
    faults: bool = False
    network: str | None = None
    proxy_clients: bool = True
    cluster_id: str = field(default_factory=lambda: f"kit-{uuid.uuid4().hex[:8]}")
    secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    jwt_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    nodes: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"a cluster needs at least 1 node, got nodes={self.size!r}")
        if self.log_level not in ("error", "warn", "warning", "info", "debug"):
            raise ValueError(f"log_level must be error|warn|info|debug, got {self.log_level!r}")
        if self.network is not None and self.network not in NETWORK_MODES:
            raise ValueError(f"network must be one of {', '.join(NETWORK_MODES)}, got {self.network!r}")
        if self.network is not None:
            self.faults = True
        sweep_stale()  # nodes and network objects of kit runs whose process died
        self._owns_root = self.root is None
        self.root = self._root = Path(self.root or tempfile.mkdtemp(prefix="kalamdb-cluster-"))
        self._root.mkdir(parents=True, exist_ok=True)
        self.run_record = RunRecord(self.root, owns_root=self._owns_root)
        self.start_seconds: float | None = None
        self._last_id = 0  # node ids are never reused, not even after a node is removed
        self._init_ops()
        self.launcher: Launcher = self._make_launcher()
        self._net = ClusterNetwork(self, self.launcher.network) if self.launcher.network is not None else None
        self.processes = ProcessControl(self)
        self.pressure = Pressure(self)
        self.membership = MembershipChanges(self)

    def _make_launcher(self) -> Launcher:
        if not self.faults:
            return LoopbackLauncher()
        if (self.network or "proxy") == "netns":
            from kalamdb.testing import netns_cluster

            reason = netns_cluster.unavailable_reason()
            if reason is None:
                return netns_cluster.NetnsLauncher(self.run_record, self.seed, self.size)
            msg = f"network='netns' is not available here ({reason}); using the proxy mode instead"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            progress(f"⚠️  {msg}", True)
        return ProxyLauncher(self.seed, self.proxy_clients)

    @property
    def network_mode(self) -> str:
        """"loopback" (no network faults), "proxy" or "netns"."""
        return self.launcher.mode

    @property
    def net(self) -> ClusterNetwork:
        """Network faults (partitions, cuts, loss, ...): needs `faults=True`."""
        if self._net is None:
            raise ClusterError("network faults need a cluster started with faults=True, e.g. "
                               "start_cluster_server(3, faults=True) or @pytest.mark.cluster(faults=True)")
        return self._net

    # ---- nodes and their processes ----------------------------------------------------------------
    def _make_node(self, node_id: int) -> NodeProcess:
        self._last_id = max(self._last_id, node_id)
        return NodeProcess(len(self.nodes), node_id, self._root, self.root_password, self.launcher.place(node_id),
                           self.launcher, self.run_record.add_process, self.run_record.forget_process)

    def _env_for(self, node: NodeProcess) -> dict[str, str]:
        """A node's environment, built fresh for each start: nothing shared is mutated."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
        env.update({
            "KALAMDB_NODE_ID": str(node.node_id),
            "KALAMDB_CLUSTER_ID": self.cluster_id,
            "KALAMDB_CLUSTER_RPC_ADDR": node.rpc_addr,
            "KALAMDB_CLUSTER_API_ADDR": node.listen_url,
            "KALAMDB_CLUSTER_PEERS": self.launcher.peers_for(node, [n for n in self.nodes if not n.removed]),
            "KALAMDB_CLUSTER_SECRET": self.secret,
            "KALAMDB_CLUSTER_HEARTBEAT_INTERVAL_MS": str(self.heartbeat_ms),
            "KALAMDB_CLUSTER_ELECTION_TIMEOUT_MS": f"{self.election_ms[0]},{self.election_ms[1]}",
            "KALAMDB_CLUSTER_SNAPSHOT_POLICY": self.snapshot_policy,
            "KALAMDB_CLUSTER_LEADER_WAIT_MS": str(self.leader_wait_ms),
            "KALAMDB_CLUSTER_WRITE_TIMEOUT_MS": str(self.write_timeout_ms),
            "KALAMDB_ROOT_PASSWORD": self.root_password,
            "KALAMDB_JWT_SECRET": self.jwt_secret,
            "KALAMDB_LOG": self.log_level,
        })
        env.update(self.extra_env)
        env.update(node.start_env)
        return env

    def launch(self, node: NodeProcess) -> None:
        """Start the node's process (it must not be running) with its current settings."""
        serve = [sys.executable, "-m", "kalamdb", "serve", "--data-dir", str(node.data_dir),
                 "--host", node.placement.host, "--port", str(node.placement.api_port)]
        argv, fds = self.launcher.command(node, serve)
        node.spawn(argv, self._env_for(node), fds)
        self.launcher.started(node)

    # ---- starting ---------------------------------------------------------------------------------
    def start(self, *, timeout: float = STARTUP_TIMEOUT_S) -> ClusterTestServer:
        """Start every node and return once all are voters agreeing on one leader."""
        if self.nodes:
            raise RuntimeError("this cluster was started already; use c.processes.start(...) for nodes")
        progress(f"🚀 Starting {self.size}-node cluster ({self.network_mode})…", self.verbose)
        t0 = time.monotonic()
        try:
            for i in range(self.size):
                self.nodes.append(self._make_node(i + 1))
            for n in self.nodes:
                progress(f"📍 Starting node {n.node_id} of {self.size}…", self.verbose)
                self.launch(n)
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
        """Until every running node answers, names the same leader and sees exactly `voters` (ids)."""
        def check() -> tuple[bool, str]:
            dead = [(n, n.proc.returncode) for n in self.nodes if n.proc is not None and not n.is_running()
                    and n.node_id in voters and n.proc.returncode not in (None, -signal.SIGKILL, -signal.SIGTERM)]
            if dead:
                n, code = dead[0]
                raise ClusterError(f"node {n.node_id} exited with code {code}:\n{n.log_tail(30)}")
            hs = self._health_all()
            bad = {nid: h for nid, h in hs.items() if isinstance(h, Exception)}
            if bad:
                return False, f"nodes not answering: {sorted(bad)}"
            lid, why = agreed_leader(hs)
            if lid is None:
                return False, why
            want = sorted(voters)
            views = {nid: h.get("voters") for nid, h in hs.items() if not isinstance(h, Exception)}  # (none is)
            if any(v != want for v in views.values()):
                return False, f"voters seen by each node: {views}, want {want}"
            return True, ""

        self.wait_until(f"voters {sorted(voters)} and one agreed leader", check, timeout)

    # ---- membership -------------------------------------------------------------------------------
    def new_node(self, timeout: float = STARTUP_TIMEOUT_S) -> NodeProcess:
        """Start a node process that is not a member yet (it answers HTTP, knows no leader), under
        a node id never used in this cluster; `add_node` joins it, or a test drives CLUSTER JOIN."""
        nid = self._last_id + 1
        n = self._make_node(nid)
        self.nodes.append(n)
        try:
            self.launch(n)
            self.wait_until(f"new node {nid} to answer", lambda: (answers(n), f"{n!r} not answering"), timeout)
        except BaseException:
            n.terminate(signal.SIGKILL)
            self._drop(n)
            raise
        return n

    def add_node(self, timeout: float = STARTUP_TIMEOUT_S) -> NodeProcess:
        """Start a new node and join it with CLUSTER JOIN (learner, catch up, voter)."""
        leader = self.leader()  # before the new node runs: it knows no leader until it joins
        n = self.new_node(timeout)
        resp = leader.sql(f"CLUSTER JOIN {n.node_id} '{n.rpc_addr}' '{n.listen_url}'")
        if not resp.ok:
            raise ClusterError(f"CLUSTER JOIN {n.node_id} failed: {resp.error}\n{n.log_tail()}")
        self.wait_for_voters({m.node_id for m in self.nodes if m.is_running()}, timeout)
        progress(f"✅ node {n.node_id} joined as a voter", self.verbose)
        return n

    def remove_node(self, node: NodeRef, timeout: float = STARTUP_TIMEOUT_S) -> NodeProcess:
        """CLUSTER LEAVE the node, stop its process and drop it from `nodes` (the indexes of later
        nodes shift down by one). Returns the removed node (its `removed` flag set)."""
        n = self.get_node(node)
        resp = self.execute_sql_on_leader(f"CLUSTER LEAVE {n.node_id}")
        if not resp.ok:
            raise ClusterError(f"CLUSTER LEAVE {n.node_id} failed: {resp.error}")
        n.terminate(signal.SIGTERM)
        self._drop(n)
        self.wait_for_voters({m.node_id for m in self.nodes if m.is_running()}, timeout)
        return n

    def _drop(self, n: NodeProcess) -> None:
        self.nodes.remove(n)
        n.removed = True
        self.launcher.forget(n)
        for j, m in enumerate(self.nodes):
            m.index = j

    # ---- all faults at once -----------------------------------------------------------------------
    def recover(self, timeout: float = 30.0) -> int:
        """Undo every fault -- network (`net.clear`), pressure, pauses, stopped or crashed nodes,
        run-time failpoints -- and wait until every node applied the leader's commit index; returns
        that index. Settings staged for the next start (clock, failpoints at start) stay."""
        deadline = time.monotonic() + timeout
        if self._net is not None:
            self._net.clear()
        self.pressure.release()
        self.processes.resume("all")
        self.processes.restart_crashed(timeout=timeout)
        self.processes.start("all", timeout=timeout)
        self.leader(timeout)
        self.failpoints.clear("all")
        return self.wait_for_replication(timeout=max(1.0, deadline - time.monotonic()))

    def keep_after_shutdown(self) -> None:
        self.keep = True

    def shutdown(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after a grace period), remove proxies or namespaces,
        and the data root unless `keep`. Idempotent."""
        with contextlib.suppress(Exception):
            self.pressure.release()
        for n in self.nodes:
            n.send_signal(signal.SIGCONT)
            n.send_signal(signal.SIGTERM)
        for n in [*self.nodes, *self.membership.ghosts]:
            n.terminate(signal.SIGTERM, timeout=10)
        self._pool.shutdown(wait=False)
        self.launcher.close()
        if self._owns_root and not self.keep:
            shutil.rmtree(self._root, ignore_errors=True)
        self.run_record.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def start_cluster_server(nodes: int = 3, *, timeout: float = STARTUP_TIMEOUT_S, **options: Any
                         ) -> ClusterTestServer:
    """Start `nodes` real processes, form the cluster, and return once all are voters and agree
    on one leader. Options: the ClusterTestServer fields -- `faults=True` (network faults as `c.net`),
    `network="proxy"|"netns"`, heartbeat_ms, election_ms, log_level, root, keep, verbose, seed,
    extra_env, ..."""
    return ClusterTestServer(size=nodes, **options).start(timeout=timeout)


_global: ClusterOps[Any] | None = None
_global_lock = threading.Lock()


def get_cluster_server(verbose: bool = False) -> ClusterOps[Any]:
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
            _global.processes.revive()
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
    kill_leftovers()
