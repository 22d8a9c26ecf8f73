"""Node processes the kit runs, and the process control a test uses on them.

`NodeProcess` is one `python -m kalamdb serve` process with its data dir, its log and the addresses
its launcher gave it (`kalamdb.testing.launchers`). `ProcessControl` is the object behind a kit
cluster's `processes` attribute: kill, stop, start, restart, pause, resume, revive, and the
per-node settings that take effect at the next start (clock, failpoints). A cluster the kit did not
start (`ExternalCluster`) has no such object: tests that need it carry `@pytest.mark.process_control`
and are skipped there.

Every start goes through `kalamdb.lifeline.spawn`, so nodes die with the test process.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from kalamdb import lifeline
from kalamdb.testing.nodes import ClusterError, NodeHandle
from kalamdb.testing.ops import NodeRef, Target

if TYPE_CHECKING:
    from kalamdb.testing.cluster import ClusterTestServer
    from kalamdb.testing.launchers import Launcher, Placement

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

_live: set[NodeProcess] = set()
_live_lock = threading.Lock()


class NodeProcess(NodeHandle):
    """One node of a kit cluster: a real process, its data dir, its log and its addresses."""

    data_dir: Path
    log_path: Path

    def __init__(self, index: int, node_id: int, root: Path, root_password: str, placement: Placement,
                 launcher: Launcher, on_spawn: Callable[[int], None], on_reap: Callable[[int], None]):
        super().__init__(index, node_id, root_password)
        self.data_dir = root / f"node{node_id}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"node{node_id}.log"
        self.placement = placement
        self.launcher = launcher
        self.start_env: dict[str, str] = {}  # variables for the next start (clock, failpoints)
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self._on_spawn, self._on_reap = on_spawn, on_reap

    # ---- identity -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where clients (and the kit's own checks) reach the node: through the client proxy in
        proxy mode, at the node's own IP in netns mode."""
        return self.launcher.client_url(self)

    @property
    def listen_url(self) -> str:
        return self.placement.api_url

    @property
    def rpc_addr(self) -> str:
        return self.placement.rpc_addr

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = "removed" if self.removed else "paused" if self.paused else (
            "running" if self.is_running() else "stopped")
        return f"<node {self.node_id} (index {self.index}) {self.url} {state}>"

    # ---- process ------------------------------------------------------------------------------
    def spawn(self, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
        if self.is_running():
            raise RuntimeError(f"node {self.node_id} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            log.write(f"---- kit: starting node {self.node_id} at {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            self.proc = lifeline.spawn_server(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env, pass_fds=pass_fds)
        self.paused = False
        self._on_spawn(self.proc.pid)
        with _live_lock:
            _live.add(self)

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Send `sig` (SIGCONT first when paused, so SIGTERM is handled) and reap the process."""
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
        self._on_reap(self.proc.pid)
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
            if self.proc is None:
                return None, None, None
            p = psutil.Process(self.proc.pid)
            times = p.cpu_times()
            percent = p.cpu_percent(interval=0.05) if not self.paused else 0.0
            return p.memory_info().rss / (1 << 20), percent, times.user + times.system
        return None, None, None


def answers(n: NodeHandle) -> bool:
    try:
        n.health(timeout=1.0)
        return True
    except OSError:
        return False


class ProcessControl:
    """Signals and restarts for a kit cluster's node processes. Every method takes a target (a node
    index or handle, a list of them, or a shape such as "leader", "minority", "all") and returns the
    nodes it acted on, in node order."""

    def __init__(self, cluster: ClusterTestServer):
        self._cluster = cluster

    def targets(self, target: Target) -> list[NodeProcess]:
        return self._cluster.select(target)

    def kill(self, target: Target) -> list[NodeProcess]:
        """SIGKILL (a crash: nothing of the node's shutdown code runs); every target is signalled
        before any is reaped, so "all" is a simultaneous crash."""
        picked = self.targets(target)
        for n in picked:
            n.send_signal(signal.SIGKILL)
        for n in picked:
            n.terminate(signal.SIGKILL)
        return picked

    def stop(self, target: Target) -> list[NodeProcess]:
        """SIGTERM and wait for each graceful exit (in-flight requests finish)."""
        picked = self.targets(target)
        for n in picked:
            if n.paused:
                n.resume()
            n.send_signal(signal.SIGTERM)
        for n in picked:
            n.terminate(signal.SIGTERM)
        return picked

    def start(self, target: Target, *, wait: bool = True, timeout: float = STARTUP_TIMEOUT_S) -> list[NodeProcess]:
        """Start stopped nodes again on their data dirs and addresses; with `wait`, until each answers."""
        picked = [n for n in self.targets(target) if not n.is_running()]
        for n in picked:
            self._cluster.launch(n)
        if wait:
            for n in picked:
                self.wait_answering(n, timeout)
        return picked

    def wait_answering(self, node: NodeRef, timeout: float = STARTUP_TIMEOUT_S) -> None:
        n = self._cluster.get_node(node)

        def check() -> tuple[bool, str]:
            if not n.is_running():
                code = n.proc.returncode if isinstance(n, NodeProcess) and n.proc is not None else None
                raise ClusterError(f"node {n.node_id} exited with code {code}:\n{n.log_tail(30)}")
            return answers(n), f"{n!r} not answering"

        self._cluster.wait_until(f"node {n.node_id} to answer", check, timeout)

    def restart(self, target: Target, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S
                ) -> list[NodeProcess]:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start again, one node after the other."""
        picked = self.targets(target)
        for n in picked:
            n.terminate(signal.SIGKILL if kill else signal.SIGTERM)
            self.start(n, timeout=timeout)
        return picked

    def restart_all(self, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """The whole cluster down at once (SIGTERM, or SIGKILL with kill=True), then up again; returns
        once every node is a voter and all agree on one leader."""
        (self.kill if kill else self.stop)("all")
        for n in self._cluster.nodes:
            self._cluster.launch(n)
        self._cluster.wait_for_voters({n.node_id for n in self._cluster.nodes}, timeout)

    def pause(self, target: Target) -> list[NodeProcess]:
        """SIGSTOP: the process is frozen (its sockets stay open, nothing answers)."""
        picked = self.targets(target)
        for n in picked:
            n.pause()
        return picked

    def resume(self, target: Target = "all") -> list[NodeProcess]:
        """SIGCONT to the paused nodes among the targets; returns those."""
        picked = [n for n in self.targets(target) if n.paused]
        for n in picked:
            n.resume()
        return picked

    def revive(self, timeout: float = STARTUP_TIMEOUT_S) -> list[NodeProcess]:
        """Every node running again: resume paused ones, start stopped ones (the shared cluster gets
        this between tests). Returns the nodes that were paused or stopped."""
        touched = self.resume("all")
        touched += self.start("all", timeout=timeout)
        return sorted(touched, key=lambda n: n.index)

    def wait_for_exit(self, node: NodeRef, timeout: float = 20.0) -> int:
        """Wait until a node's process ends by itself (a storage failure, a crash failpoint, an OOM
        kill); returns its exit status (negative: killed by that signal)."""
        n = self.targets(node)[0]
        if n.proc is None:
            raise ClusterError(f"{n!r} was never started")
        try:
            return n.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{n!r} still running after {timeout:.1f}s\n{n.log_tail(20)}") from None

    def crashed(self) -> list[NodeProcess]:
        """Nodes whose process ended by itself (not stopped by the kit)."""
        return [n for n in self._cluster.nodes if isinstance(n, NodeProcess) and n.proc is not None
                and n.proc.poll() is not None and n in _live]

    def restart_crashed(self, timeout: float = STARTUP_TIMEOUT_S) -> dict[int, int]:
        """Start again every node whose process ended by itself: {index: its exit status}."""
        out = {}
        for n in self.crashed():
            proc = n.proc
            assert proc is not None  # crashed() lists only nodes whose process ended
            out[n.index] = proc.returncode
            n.terminate(signal.SIGKILL)  # reaps it and forgets its client
            self.start(n, timeout=timeout)
        return out

    # ---- settings for the next start ----------------------------------------------------------
    def set_clock(self, node: NodeRef, offset_ms: float = 0.0, drift_ppm: float = 0.0) -> None:
        """The node's clock from its next (re)start: wall time + offset, running (1 + drift/1e6) fast."""
        from kalamdb.node.clock import DRIFT_ENV, OFFSET_ENV

        n = self.targets(node)[0]
        _stage(n, OFFSET_ENV, str(offset_ms) if offset_ms else None)
        _stage(n, DRIFT_ENV, str(drift_ppm) if drift_ppm else None)

    def failpoints_at_start(self, node: NodeRef, spec: str | None) -> None:
        """KALAMDB_FAILPOINTS for the node's next (re)start, e.g. "log.fsync=delay(20)"; None removes."""
        from kalamdb.node.failpoints import FAILPOINTS_ENV, NodeFailpoints

        if spec:
            NodeFailpoints.from_string(spec)  # a clear error now, not at the next start
        _stage(self.targets(node)[0], FAILPOINTS_ENV, spec)


def _stage(n: NodeProcess, name: str, value: str | None) -> None:
    if value is None:
        n.start_env.pop(name, None)
    else:
        n.start_env[name] = value


def kill_leftovers() -> None:
    """SIGKILL every node process this module started that still runs (at interpreter exit)."""
    with _live_lock:
        procs = list(_live)
    for n in procs:
        with contextlib.suppress(Exception):
            n.send_signal(signal.SIGCONT)
            n.terminate(signal.SIGKILL, timeout=5)
