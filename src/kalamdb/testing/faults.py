"""A real cluster that tests can break on purpose: network, process, disk, CPU, memory and clock.

`FaultyCluster` is a `ClusterTestServer` whose every directed peer link a->b runs through a proxy of
a `NetworkController`: the Raft RPC link (framed, so loss drops whole messages) and the HTTP link a
follower uses to forward a request to the leader (unframed). Each node is started with a peers string
naming the proxies as its peers' addresses (a node's configured addresses win over replicated ones),
and clients reach each node through a client proxy too, so `isolate_client(i)` can cut them off.

Nodes are addressed by their 0-based index, as everywhere in the kit. Process faults take a target:
an index, a list of indexes, or "leader", "follower", "random"/"one", "minority", "majority", "all".
Random choices come from one seed (`seed`, printed by the fixtures) and replay with it.

See docs/faults.md, section "Fault injection", for what each fault does and the chosen semantics.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from kalamdb.node.clock import DRIFT_ENV, OFFSET_ENV
from kalamdb.node.failpoints import FAILPOINTS_ENV, STORAGE_FAILURE_EXIT_CODE, NodeFailpoints
from kalamdb.raft.wal import CRASH_EXIT_CODE
from kalamdb.testing import pressure
from kalamdb.testing.cluster import STARTUP_TIMEOUT_S, ClusterError, ClusterNodeProcess, ClusterTestServer
from kalamdb.testing.netproxy import CLIENT, LinkStats, NetworkController

FAILPOINTS_PATH = "/v1/api/admin/failpoints"
Target = int | str | Iterable[int]

__all__ = [
    "CRASH_EXIT_CODE",
    "STORAGE_FAILURE_EXIT_CODE",
    "FaultyCluster",
    "start_faulty_cluster",
]


@dataclass
class PressureRecord:
    """One CPU/memory pressure applied to a node, and the mechanism the machine allowed."""

    kind: str  # "cpu" | "memory" | "hogs"
    index: int | None
    mechanism: str
    handle: pressure.PressureHandle


class _ProxiedNode(ClusterNodeProcess):
    """A kit node whose clients and peers go through the cluster's fault proxies.

    `url` is where clients reach the node (its client proxy); `real_url` is where it listens. `spawn`
    ignores the kit's shared peers string and gives this node its own, naming a proxy per link."""

    @property
    def real_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def url(self) -> str:
        return self.cluster.client_url_for(self)

    @property
    def client_url(self) -> str:
        return self.url

    def spawn(self, peers: str) -> None:
        c = self.cluster
        own_peers = c.peers_for(self)
        saved = c.extra_env
        c.extra_env = {**saved, "KALAMDB_CLUSTER_API_ADDR": self.real_url, **c.node_env.get(self.index, {})}
        try:
            super().spawn(own_peers)
        finally:
            c.extra_env = saved


class _NodeList(list):
    """The cluster's node list: every node added to it becomes a `_ProxiedNode` before it starts."""

    def __init__(self, cluster: FaultyCluster, items: Iterable[ClusterNodeProcess] = ()):
        super().__init__()
        self._cluster = cluster
        for n in items:
            self.append(n)

    def append(self, n: ClusterNodeProcess) -> None:
        if type(n) is ClusterNodeProcess:
            n.__class__ = _ProxiedNode
        super().append(n)


@dataclass
class FaultyCluster(ClusterTestServer):
    """A cluster of real processes with a controllable network between every pair of nodes.

    Subclassing only: the kit creates `ClusterNodeProcess` objects; assigning or appending them to
    `nodes` turns each into a `_ProxiedNode` (per-node peers string, client proxy URL, per-node env)
    before it is spawned, so every kit method (start, start_node, restart_all, add_node) wires nodes
    through the proxies."""

    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(1 << 31))
    proxy_clients: bool = True
    node_env: dict[int, dict[str, str]] = field(default_factory=dict)  # per node index, at (re)start

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "nodes" and not isinstance(value, _NodeList):
            value = _NodeList(self, value)
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._rng = random.Random(self.seed)
        # Two controllers because a controller holds one link per (src, dst): Raft RPC is framed
        # (loss = lost messages), HTTP forwarding and client traffic are byte streams.
        self.rpc_net = NetworkController(seed=self.seed)
        self.http_net = NetworkController(seed=self.seed + 1)
        self.pressures: list[PressureRecord] = []

    # ---- wiring: every link through a proxy -----------------------------------------------------
    def _ensure_links(self) -> None:
        for a in self.nodes:
            for b in self.nodes:
                if a is b:
                    continue
                key = (a.node_id, b.node_id)
                with contextlib.suppress(KeyError):
                    self.rpc_net.proxy_addr(*key)
                    continue
                self.rpc_net.add_link(*key, ("127.0.0.1", b.rpc_port), framed=True)
                self.http_net.add_link(*key, ("127.0.0.1", b.api_port), framed=False)
        if self.proxy_clients:
            for n in self.nodes:
                try:
                    self.http_net.proxy_addr(CLIENT, n.node_id)
                except KeyError:
                    self.http_net.add_client_link(n.node_id, ("127.0.0.1", n.api_port))

    def peers_for(self, node: ClusterNodeProcess) -> str:
        """KALAMDB_CLUSTER_PEERS for `node`: itself as it listens, every other node via a proxy."""
        self._ensure_links()
        parts = [f"{node.node_id}@{node.rpc_addr}@http://127.0.0.1:{node.api_port}"]
        for other in self.nodes:
            if other is node:
                continue
            rh, rp = self.rpc_net.proxy_addr(node.node_id, other.node_id)
            hh, hp = self.http_net.proxy_addr(node.node_id, other.node_id)
            parts.append(f"{other.node_id}@{rh}:{rp}@http://{hh}:{hp}")
        return ";".join(parts)

    def client_url_for(self, node: ClusterNodeProcess) -> str:
        """Where clients (and the kit's own checks) reach `node`: its client proxy."""
        if not self.proxy_clients:
            return f"http://127.0.0.1:{node.api_port}"
        try:
            host, port = self.http_net.proxy_addr(CLIENT, node.node_id)
        except KeyError:
            self._ensure_links()
            host, port = self.http_net.proxy_addr(CLIENT, node.node_id)
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        self.release_pressure()
        try:
            super().shutdown()
        finally:
            self.rpc_net.close()
            self.http_net.close()

    # ---- network faults (indexes in, node ids to the controllers) -------------------------------
    def _id(self, i: int) -> int:
        return self.get_node(i).node_id

    def _nets(self) -> tuple[NetworkController, NetworkController]:
        return self.rpc_net, self.http_net

    def _peer_directions(self) -> list[tuple[int, int]]:
        ids = [n.node_id for n in self.nodes]
        return [(a, b) for a in ids for b in ids if a != b]

    def partition(self, groups: list[list[int]]) -> None:
        """Nodes (by index) talk only within their group; every node in exactly one group."""
        id_groups = [[self._id(i) for i in g] for g in groups]
        for net in self._nets():
            net.partition(id_groups)

    def partition_grudge(self, grudge: dict[int, Iterable[int]]) -> None:
        """Any shape: receiver index -> sender indexes whose bytes it drops (one-way allowed)."""
        by_id = {self._id(dst): {self._id(s) for s in srcs} for dst, srcs in grudge.items()}
        for net in self._nets():
            net.partition_grudge(by_id)

    def isolate(self, i: int) -> None:
        for net in self._nets():
            net.isolate(self._id(i))

    def isolate_leader(self, timeout: float = 10.0) -> int:
        """Isolate the current leader from every peer; returns its index."""
        i = self.leader(timeout).index
        self.isolate(i)
        return i

    def _order(self) -> list[int]:
        return [n.node_id for n in self.nodes]

    def partition_halves(self) -> None:
        for net in self._nets():
            net.partition_halves(self._order())

    def partition_majorities_ring(self) -> None:
        for net in self._nets():
            net.partition_majorities_ring(self._order())

    def partition_bridge(self) -> None:
        for net in self._nets():
            net.partition_bridge(self._order())

    def cut(self, a: int, b: int) -> None:
        """One-way: bytes from node a no longer reach node b (requests and replies)."""
        for net in self._nets():
            net.cut(self._id(a), self._id(b))

    def uncut(self, a: int, b: int) -> None:
        for net in self._nets():
            net.uncut(self._id(a), self._id(b))

    def clog(self, a: int, b: int) -> None:
        """Hold a's bytes to b (TCP-like backpressure past 4 MiB) until unclog/heal."""
        for net in self._nets():
            net.clog(self._id(a), self._id(b))

    def unclog(self, a: int, b: int) -> None:
        for net in self._nets():
            net.unclog(self._id(a), self._id(b))

    def reset(self, a: int, b: int) -> int:
        """RST every open connection between a and b (both links, RPC and HTTP); returns how many."""
        return sum(net.reset(self._id(a), self._id(b)) for net in self._nets())

    def heal(self) -> None:
        """Remove every partition, cut and clog, client cuts included (delay/loss stay: clear_network);
        then the kit's own heal where it has one (resume paused nodes, start stopped ones)."""
        for net in self._nets():
            net.heal()
        kit_heal = getattr(super(), "heal", None)
        if kit_heal is not None:
            kit_heal()

    def clear_network(self) -> None:
        """A perfect network again: heal, and no delay, loss or bandwidth limit."""
        for net in self._nets():
            net.clear_all()

    def delay(self, ms: float, jitter_ms: float = 0.0) -> None:
        """Every peer link (Raft RPC and HTTP forwarding), both directions: ms +/- uniform jitter."""
        links = self._peer_directions()
        for net in self._nets():
            net.delay(ms, jitter_ms, links=links)

    def loss(self, p: float) -> None:
        """Drop each Raft message with probability p (the handshake excepted). HTTP forwarding is
        TCP, where loss shows up as delay and retransmission, so it is not dropped (use delay)."""
        self.rpc_net.loss(p, links=self._peer_directions())

    def bandwidth(self, kbps: float | None) -> None:
        """Limit every peer connection direction to kbps kilobits/s (None: unlimited)."""
        links = self._peer_directions()
        for net in self._nets():
            net.bandwidth(kbps, links=links)

    def isolate_client(self, i: int) -> None:
        """Clients (the kit's own requests to node i included) can no longer reach node i."""
        self._need_client_proxy()
        self.http_net.isolate_client(self._id(i))

    def unisolate_client(self, i: int) -> None:
        self._need_client_proxy()
        self.http_net.unisolate_client(self._id(i))

    def _need_client_proxy(self) -> None:
        if not self.proxy_clients:
            raise ClusterError("client faults need FaultyCluster(proxy_clients=True)")

    def reachability(self) -> dict[tuple[int, int], bool]:
        """(a, b) by index -> whether node a's Raft messages reach node b now."""
        index_of = {n.node_id: n.index for n in self.nodes}
        return {(index_of[a], index_of[b]): ok for (a, b), ok in self.rpc_net.reachability().items()}

    def net_stats(self) -> dict[str, dict[tuple, LinkStats]]:
        """Counters per direction: {"rpc": ..., "http": ...} keyed by (src id, dst id)."""
        return {"rpc": self.rpc_net.stats(), "http": self.http_net.stats()}

    def quorum_hubs(self) -> list[int]:
        """Indexes of running nodes with a two-way link to enough others to form a majority with
        them: the nodes that could lead now. Empty means Raft cannot make progress (e.g. the
        3-node majorities ring is a directed cycle in which no two nodes hear each other)."""
        reach = self.reachability()
        up = [n.index for n in self.nodes if n.is_running() and not n.paused]
        need = len(self.nodes) // 2  # others needed besides the node itself
        return [i for i in up if sum(1 for j in up if j != i and reach[(i, j)] and reach[(j, i)]) >= need]

    # ---- process faults --------------------------------------------------------------------------
    def targets(self, target: Target) -> list[int]:
        """Resolve a target to node indexes (random choices from the cluster's seeded RNG)."""
        n = len(self.nodes)
        if isinstance(target, int):
            self.get_node(target)
            return [target]
        if not isinstance(target, str):
            picked = sorted(set(target))
            for i in picked:
                self.get_node(i)
            return picked
        up = [m.index for m in self.nodes if m.is_running()]
        if target == "all":
            return list(range(n))
        if target in ("one", "random"):
            return [self._rng.choice(up)]
        if target == "leader":
            return [self.leader().index]
        if target == "follower":
            lead = self.leader().index
            return [self._rng.choice([i for i in up if i != lead])]
        if target == "minority":
            return sorted(self._rng.sample(range(n), (n - 1) // 2))
        if target == "majority":
            return sorted(self._rng.sample(range(n), n // 2 + 1))
        raise ValueError(f"unknown target {target!r}: use an index, a list of indexes, or one of "
                         "leader, follower, random, one, minority, majority, all")

    def kill_nodes(self, target: Target) -> list[int]:
        """kill -9 (SIGKILL to every target first, then reap): returns the indexes."""
        picked = self.targets(target)
        for i in picked:
            self.get_node(i).send_signal(signal.SIGKILL)
        for i in picked:
            self.get_node(i).terminate(signal.SIGKILL)
        return picked

    def stop_nodes(self, target: Target) -> list[int]:
        """SIGTERM: graceful stop (in-flight requests finish)."""
        picked = self.targets(target)
        for i in picked:
            self.get_node(i).send_signal(signal.SIGTERM)
        for i in picked:
            self.get_node(i).terminate(signal.SIGTERM)
        return picked

    def pause_nodes(self, target: Target) -> list[int]:
        """SIGSTOP: the process is frozen (its sockets stay open, nothing answers)."""
        picked = self.targets(target)
        for i in picked:
            self.pause(i)
        return picked

    def resume_nodes(self, target: Target = "all") -> list[int]:
        picked = [i for i in self.targets(target) if self.get_node(i).paused]
        for i in picked:
            self.resume(i)
        return picked

    def restart_nodes(self, target: Target, *, kill: bool = True, timeout: float = STARTUP_TIMEOUT_S) -> list[int]:
        """Stop (kill -9 by default) then start again, one after the other; returns the indexes."""
        picked = self.targets(target)
        (self.kill_nodes if kill else self.stop_nodes)(picked)
        for i in picked:
            self.start_node(i, timeout=timeout)
        return picked

    def wait_for_exit(self, i: int, timeout: float = 20.0) -> int:
        """Wait until node i's process ends by itself (a storage failure, a crash failpoint, an OOM
        kill); returns its exit status (negative: killed by that signal)."""
        n = self.get_node(i)
        if n.proc is None:
            raise ClusterError(f"{n!r} was never started")
        try:
            return n.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{n!r} still running after {timeout:.1f}s\n{n.log_tail(20)}") from None

    def restart_crashed(self, timeout: float = STARTUP_TIMEOUT_S) -> dict[int, int]:
        """Start again every node whose process ended by itself: {index: its exit status}."""
        crashed = {}
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None and not n.paused:
                crashed[n.index] = n.proc.returncode
                n.terminate(signal.SIGKILL)  # reaps it and forgets its client
                self.start_node(n.index, timeout=timeout)
        return crashed

    # ---- disk faults -------------------------------------------------------------------------------
    def _admin(self, i: int, method: str, body: dict | None = None) -> dict:
        n = self.get_node(i)
        with n.client(timeout=10) as c:
            resp = c._request(method, FAILPOINTS_PATH, orjson.dumps(body) if body is not None else None,
                              c._creds.header())
        if not resp.ok and "failpoints" not in resp:
            raise ClusterError(f"failpoints on {n!r}: {resp.error}")
        return dict(resp)

    def set_failpoints(self, target: Target, failpoints: dict[str, str], *, clear: bool = False) -> list[int]:
        """At run time, over the authenticated admin call: e.g. {"log.fsync": "1*eio"}; "off" removes."""
        for name, spec in failpoints.items():
            NodeFailpoints().set(name, spec)  # a clear error here, before any node is touched
        picked = self.targets(target)
        for i in picked:
            self._admin(i, "POST", {"failpoints": failpoints, "clear": clear})
        return picked

    def failpoints(self, i: int) -> dict[str, str]:
        return self._admin(i, "GET")["failpoints"]

    def failpoints_at_start(self, i: int, spec: str | None) -> None:
        """KALAMDB_FAILPOINTS for node i's next (re)start, e.g. "log.fsync=delay(20)"; None removes."""
        if spec:
            NodeFailpoints.from_string(spec)
        self._stage_env(i, FAILPOINTS_ENV, spec)

    # ---- clock -------------------------------------------------------------------------------------
    def set_clock(self, i: int, offset_ms: float = 0.0, drift_ppm: float = 0.0) -> None:
        """Node i's clock from its next (re)start: wall time + offset, running (1 + drift/1e6) fast."""
        self._stage_env(i, OFFSET_ENV, str(offset_ms) if offset_ms else None)
        self._stage_env(i, DRIFT_ENV, str(drift_ppm) if drift_ppm else None)

    def _stage_env(self, i: int, name: str, value: str | None) -> None:
        if self.nodes:
            self.get_node(i)  # an index out of range fails here, not at the next start
        env = self.node_env.setdefault(i, {})
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value

    # ---- CPU and memory pressure --------------------------------------------------------------------
    def cpu_starve(self, target: Target = "leader", fraction: float = 0.05, mechanism: str = "auto"
                   ) -> list[PressureRecord]:
        """Limit each target node to `fraction` of one CPU (cgroup quota, else SIGSTOP/SIGCONT duty)."""
        out = []
        for i in self.targets(target):
            h = pressure.cpu_limit(self.get_node(i).pid, fraction, mechanism=mechanism)
            out.append(PressureRecord("cpu", i, h.mechanism, h))
        self.pressures.extend(out)
        return out

    def memory_pressure(self, target: Target = "leader", limit_bytes: int = 256 << 20, mechanism: str = "auto"
                        ) -> list[PressureRecord]:
        """Cap each target node's memory (cgroup: the kernel OOM-kills it past the cap; else a
        machine-wide hog of that size)."""
        out = []
        for i in self.targets(target):
            h = pressure.memory_limit(self.get_node(i).pid, limit_bytes, mechanism=mechanism)
            out.append(PressureRecord("memory", i if h.mechanism == "cgroup" else None, h.mechanism, h))
        self.pressures.extend(out)
        return out

    def busy_hogs(self, n: int) -> PressureRecord:
        """n competing processes spinning on the shared CPUs."""
        rec = PressureRecord("hogs", None, "processes", pressure.busy_hogs(n))
        self.pressures.append(rec)
        return rec

    def release_pressure(self) -> None:
        for rec in self.pressures:
            rec.handle.release()
        self.pressures.clear()

    # ---- recovery ------------------------------------------------------------------------------------
    def recover(self, timeout: float = 30.0) -> int:
        """Undo every fault (network, pauses, pressure, run-time failpoints), restart nodes that died,
        and wait until every node applied the leader's commit index; returns that index."""
        self.clear_network()
        self.release_pressure()
        self.resume_nodes("all")
        for n in self.nodes:
            if not n.is_running():
                self.start_node(n.index, timeout=timeout)
        deadline = time.monotonic() + timeout
        self.wait_for_leader(timeout)
        for n in self.nodes:
            with contextlib.suppress(ClusterError, OSError):
                self._admin(n.index, "POST", {"clear": True})
        return self.wait_for_replication(timeout=max(1.0, deadline - time.monotonic()))


def start_faulty_cluster(nodes: int = 3, *, timeout: float = STARTUP_TIMEOUT_S, **options: Any) -> FaultyCluster:
    """Start `nodes` real processes wired through fault proxies; options as for FaultyCluster."""
    c = FaultyCluster(size=nodes, **options)
    try:
        return c.start(timeout=timeout)
    except BaseException:
        c.shutdown()
        raise
