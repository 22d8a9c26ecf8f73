"""One chaos run: start a real cluster behind fault-injection proxies, run workload clients and the
nemesis together, heal, wait for recovery, read the final state on every node, run every checker
and write the run folder (history.jsonl, node logs, config.json with the seed, schedule.json,
results.json, report.html).

Network faults use two userspace proxy layers per directed node pair: one for Raft traffic and
one for the HTTP API between nodes (write forwarding), so a partition cuts both. Clients talk to
their node directly, as a client inside the node's own network side would.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kalamdb.chaos.history import HistoryRecorder
from kalamdb.chaos.nemesis import FAULT_KINDS, FaultStep, Nemesis, make_schedule
from kalamdb.chaos.replicas import check_digests, check_final_states
from kalamdb.chaos.workloads import ClientContext, Workload, client_loop, make_workloads
from kalamdb.server.unsafe_txn import MODES as UNSAFE_TXN_MODES
from kalamdb.testing.faults import FaultyCluster

EXIT_PASS, EXIT_VIOLATION, EXIT_ERROR, EXIT_UNKNOWN = 0, 1, 2, 3


@dataclass
class ChaosConfig:
    """Everything that defines a run; written to config.json so it can be replayed."""

    nodes: int = 3
    time: float = 60.0
    workloads: list[str] = field(default_factory=lambda: ["register", "set", "bank"])
    faults: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    seed: int = 0
    out: str = "chaos-run"
    unsafe_local_reads: bool = False
    unsafe_txn: str | None = None  # a planted transaction bug (KALAMDB_UNSAFE_TXN), see server/unsafe_txn.py
    clients_per_node: int = 2
    client_timeout: float = 5.0
    check_timeout: float = 60.0
    barrier_timeout: float = 60.0
    quiet: tuple[float, float] = (1.0, 2.5)
    active: tuple[float, float] = (2.0, 4.0)
    log_level: str = "info"

    def validate(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise ValueError(f"--nodes must be between 1 and 9, got {self.nodes}")
        if self.time <= 0:
            raise ValueError(f"--time must be positive, got {self.time}")
        bad = [f for f in self.faults if f not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault(s) {', '.join(bad)}; choose from {', '.join(FAULT_KINDS)}")
        make_workloads(self.workloads)  # raises on unknown names
        if self.unsafe_txn is not None and self.unsafe_txn not in UNSAFE_TXN_MODES:
            raise ValueError(f"unknown unsafe_txn {self.unsafe_txn!r}; choose from {', '.join(UNSAFE_TXN_MODES)}")
        if not self.workloads:
            raise ValueError("at least one workload is needed")


def schedule_for(cfg: ChaosConfig) -> list[FaultStep]:
    """The nemesis schedule of a configuration: a pure function of (seed, time, faults, nodes)."""
    return make_schedule(cfg.seed, cfg.time, cfg.faults, list(range(1, cfg.nodes + 1)),
                         quiet=cfg.quiet, active=cfg.active)


class ChaosCluster(FaultyCluster):
    """The fault-injection cluster (every peer link, Raft and HTTP forwarding, through proxies)
    plus the node-id based interface the nemesis drives (`FaultBackend`)."""

    def node_ids(self) -> list[int]:
        return [n.node_id for n in self.nodes]

    def _ix(self, ids: list[int]) -> list[int]:
        return [n.index for n in self.nodes if n.node_id in ids]

    def leader_id(self) -> int | None:
        for nid, h in self._health_all().items():
            if isinstance(h, dict) and h.get("is_leader"):
                return nid
        return None

    def supports(self, kind: str) -> bool:
        return kind in FAULT_KINDS

    def inject(self, kind: str, nodes: list[int], params: dict) -> Any:
        ix = self._ix(nodes)
        every = set(nodes) == set(self.node_ids())
        if kind == "kill":
            self.kill_nodes(ix)
        elif kind == "pause":
            # a node that an overlapping kill already stopped is down anyway: pause the others
            self.pause_nodes([i for i in ix if self.get_node(i).is_running()])
        elif kind == "partition":
            if every:
                self.partition_majorities_ring()
            else:
                self.partition([ix, [n.index for n in self.nodes if n.index not in ix]])
        elif kind == "delay":
            self._links_fault(nodes, lambda net, links: net.delay(params.get("ms", 50), params.get("jitter_ms", 0),
                                                                  links=links))
        elif kind == "loss":
            self._links_fault(nodes, lambda net, links: net.loss(params.get("p", 0.1), links=links)
                              if net is self.rpc_net else None)
        elif kind == "disk":
            spec = "delay(50)" if params.get("mode") == "slow" else "1*eio"
            self.set_failpoints([i for i in ix if self.get_node(i).is_running()], {"log.fsync": spec})
        elif kind == "clock":
            for i in ix:
                self.set_clock(i, offset_ms=params.get("offset_s", 1.0) * 1000)
            self.restart_nodes(ix, kill=False)
        elif kind == "cpu":
            up = [i for i in ix if self.get_node(i).is_running()]
            return self.cpu_starve(up, fraction=params.get("fraction", 0.1))
        elif kind == "memory":
            recs = []
            for i in ix:
                n = self.get_node(i)
                if n.is_running():
                    rss = n.stats().rss_mb or 64.0
                    recs += self.memory_pressure([i], limit_bytes=int((rss + params.get("extra_mb", 64)) * (1 << 20)))
            return recs
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return None

    def _links_fault(self, nodes: list[int], apply: Callable[[Any, Any], None]) -> None:
        ids = self.node_ids()
        links = [(a, b) for a in ids for b in ids if a != b and (a in nodes or b in nodes)]
        for net in (self.rpc_net, self.http_net):
            apply(net, links)

    def undo(self, kind: str, nodes: list[int], token: Any) -> None:
        ix = self._ix(nodes)
        if kind == "pause":
            self.resume_nodes(ix)
        elif kind == "partition":
            for net in (self.rpc_net, self.http_net):
                net.heal()
        elif kind == "delay":
            self._links_fault(nodes, lambda net, links: net.delay(0, 0, links=links))
        elif kind == "loss":
            self._links_fault(nodes, lambda net, links: net.loss(0.0, links=links) if net is self.rpc_net else None)
        elif kind == "disk":
            with contextlib.suppress(Exception):
                self.set_failpoints([i for i in ix if self.get_node(i).is_running()], {"log.fsync": "off"})
        elif kind == "clock":
            for i in ix:
                self.set_clock(i, 0.0)
            self.restart_nodes(ix, kill=False)
        elif kind in ("cpu", "memory"):
            for rec in token or []:
                rec.handle.release()
                with contextlib.suppress(ValueError):
                    self.pressures.remove(rec)
        # kills, OOM kills under a memory cap and fsync failures all end in a stopped process
        self.restart_crashed()
        for i in ix:
            if not self.get_node(i).is_running():
                self.start_node(i)

    def heal_all(self) -> None:
        self.clear_network()
        self.release_pressure()
        self.resume_nodes("all")
        for n in self.nodes:
            if self.node_env.get(n.index):
                self.set_clock(n.index, 0.0)
        self.restart_crashed()
        for n in self.nodes:
            if not n.is_running():
                self.start_node(n.index)

    def recovery_barrier(self, timeout: float) -> int:
        return self.recover(timeout)


@dataclass
class RunResult:
    exit_code: int
    out: Path
    results: dict

    @property
    def valid(self) -> bool:
        return self.exit_code == EXIT_PASS


def _write_json(path: Path, data: Any) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str))


def run_chaos(cfg: ChaosConfig, on_progress: Callable[[str, float], None] | None = None) -> RunResult:
    """Run one chaos run; never leaves processes behind. `on_progress(phase, fraction)` is called
    from this thread as the run advances."""
    cfg.validate()
    say = on_progress or (lambda phase, frac: None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = schedule_for(cfg)
    _write_json(out / "config.json", asdict(cfg))
    _write_json(out / "schedule.json", [s.to_json() for s in schedule])
    workloads = make_workloads(cfg.workloads)
    root = Path(tempfile.mkdtemp(prefix="kalamdb-chaos-"))
    extra_env = {"KALAMDB_UNSAFE_LOCAL_READS": "1"} if cfg.unsafe_local_reads else {}
    if cfg.unsafe_txn:
        extra_env["KALAMDB_UNSAFE_TXN"] = cfg.unsafe_txn
    cluster = ChaosCluster(size=cfg.nodes, root=root, extra_env=extra_env, log_level=cfg.log_level,
                           seed=cfg.seed)
    results: dict[str, Any] = {"seed": cfg.seed, "config": asdict(cfg), "valid": False}
    history_file = open(out / "history.jsonl", "w")  # noqa: SIM115 - closed in finally
    try:
        say("starting cluster", 0.0)
        cluster.start()
        admin = cluster.leader().client(timeout=30)
        with admin:
            for wl in workloads:
                wl.setup(admin)
        cluster.wait_for_replication(timeout=30)
        rec = HistoryRecorder(history_file)
        t0 = time.monotonic_ns()
        nemesis = Nemesis(cluster, schedule, t0)
        stop = threading.Event()
        threads, contexts = [], []
        n_clients = cfg.nodes * cfg.clients_per_node
        for i in range(n_clients):
            node = cluster.nodes[i % cfg.nodes]
            # straight to the node, not via the kit's client proxy: a dead node then refuses the
            # connection (a definite failure) instead of a proxy hanging up after the request was sent
            url = getattr(node, "real_url", node.url)
            ctx = ClientContext(i, node.node_id, url, cluster.root_password,
                                random.Random(f"{cfg.seed}:client:{i}"), n_clients, timeout=cfg.client_timeout)
            contexts.append(ctx)
            t = threading.Thread(target=client_loop, args=(workloads, ctx, rec, stop), name=f"client-{i}",
                                 daemon=True)
            threads.append(t)
        nemesis.start()
        for t in threads:
            t.start()
        end = time.monotonic() + cfg.time
        while (left := end - time.monotonic()) > 0:
            say("running", 1.0 - left / cfg.time)
            stop.wait(min(0.5, left))  # progress tick; the run's length is the deadline itself
        stop.set()
        nemesis.stop()
        say("stopping clients", 1.0)
        for t in threads:
            t.join(timeout=cfg.client_timeout * 3)
        say("healing and waiting for recovery", 1.0)
        recovery = nemesis.finish(cfg.barrier_timeout)
        say("final reads", 1.0)
        finals = {n.node_id: n.client(timeout=30) for n in cluster.nodes}
        try:
            for wl in workloads:
                wl.final_reads(finals, rec)
        finally:
            for c in finals.values():
                c.close()
        replica_checks = _replica_checks(cluster, workloads, cfg.barrier_timeout)
        say("checking", 1.0)
        ops = rec.operations()
        checks = []
        for wl in workloads:
            checks.extend(wl.check(ops, timeout=cfg.check_timeout, events=rec.events))
        checks.extend(replica_checks)
        results.update({
            "checkers": checks,
            "windows": [asdict(w) for w in nemesis.windows],
            "skipped_faults": nemesis.skipped,
            "nemesis_errors": nemesis.errors,
            "client_errors": [e for ctx in contexts for e in ctx.unexpected][:100],
            "recovery": recovery,
            "events": len(rec.events),
            "operations": len(ops),
            "t0_ns": t0,
            "duration_s": (time.monotonic_ns() - t0) / 1e9,
        })
        violated = [c for c in checks if not c["valid"] and not c.get("unknown")]
        unknown = [c for c in checks if c.get("unknown")]
        code = EXIT_VIOLATION if violated else (EXIT_UNKNOWN if unknown else EXIT_PASS)
        results["valid"] = code == EXIT_PASS
        results["exit_code"] = code
        history_file.close()
        from kalamdb.chaos.report import write_report

        write_report(out, rec.events, results)
        return RunResult(code, out, results)
    except BaseException as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["exit_code"] = EXIT_ERROR
        raise
    finally:
        with contextlib.suppress(Exception):
            history_file.close()
        # unpause before stopping so SIGTERM is handled; kill whatever does not stop
        with contextlib.suppress(Exception):
            for n in cluster.nodes:
                n.send_signal(signal.SIGCONT)
        with contextlib.suppress(Exception):
            cluster.shutdown()
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        for p in root.glob("node*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(p, logs / p.name)
        shutil.rmtree(root, ignore_errors=True)
        _write_json(out / "results.json", results)


def _replica_checks(cluster: ChaosCluster, workloads: list[Workload], timeout: float) -> list[dict]:
    """Final-state equality (every table read locally on every node at one applied index) and
    digest equality."""
    digest = cluster.verify_state_digest(timeout=timeout)
    d = check_digests({str(nid): (int(v["applied_index"]), str(v["digest"])) for nid, v in digest.digests.items()})
    index = digest.index
    states: dict[str, Any] = {}
    for n in cluster.nodes:
        state = {}
        for wl in workloads:
            table = type(wl).table
            resp = n.sql(f"SELECT * FROM {table}", consistency="local", min_applied_index=index)
            rows = sorted((tuple(r) for r in resp.rows), key=repr) if resp.ok else [("error", str(resp.error))]
            # drop the per-row _seq/_deleted system columns if present: compare user data
            state[table] = [repr(r) for r in rows]
        states[str(n.node_id)] = state
    f = check_final_states(states)
    out = []
    for r in (f, d):
        out.append({"name": r.name, "workload": "replicas", "valid": r.valid, "summary": r.summary(),
                    "anomalies": orjson.loads(orjson.dumps(r.anomalies, default=str))})
    return out


__all__ = ["ChaosCluster", "ChaosConfig", "RunResult", "run_chaos", "schedule_for"]
