"""One chaos run: start a real cluster with network faults (proxy or netns mode), run workload
clients and the nemesis together, heal, wait for recovery, read the final state on every node, run
every checker and write the run folder (history.jsonl, node logs, config.json with the seed,
schedule.json, results.json, report.html).

In proxy mode network faults use two userspace proxy layers per directed node pair: one for Raft
traffic and one for the HTTP API between nodes (write forwarding), so a partition cuts both. In
netns mode every node has its own namespace and IP and faults are kernel rules. Clients talk to
their node directly, as a client inside the node's own network side would.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kalamdb.chaos.cluster_faults import KitFaultBackend, MemberView
from kalamdb.chaos.history import HistoryRecorder
from kalamdb.chaos.nemesis import (
    DEFAULT_FAULTS,
    FAULT_KINDS,
    MEMBERSHIP_KINDS,
    FaultStep,
    Nemesis,
    make_schedule,
)
from kalamdb.chaos.replicas import check_digests, check_final_states
from kalamdb.chaos.workloads import ClientContext, Workload, client_loop, make_workloads
from kalamdb.client import Client, Response
from kalamdb.server.unsafe_txn import MODES as UNSAFE_TXN_MODES
from kalamdb.testing.cluster import NETWORK_MODES, ClusterTestServer

EXIT_PASS, EXIT_VIOLATION, EXIT_ERROR, EXIT_UNKNOWN = 0, 1, 2, 3


@dataclass
class ChaosConfig:
    """Everything that defines a run; written to config.json so it can be replayed."""

    nodes: int = 3
    time: float = 60.0
    workloads: list[str] = field(default_factory=lambda: ["register", "set", "bank"])
    faults: list[str] = field(default_factory=lambda: list(DEFAULT_FAULTS))
    seed: int = 0
    out: str = "chaos-run"
    unsafe_local_reads: bool = False
    unsafe_removed_votes: bool = False  # planted bug: removed voters keep counting (KALAMDB_UNSAFE_REMOVED_VOTES)
    unsafe_txn: str | None = None  # a planted transaction bug (KALAMDB_UNSAFE_TXN), see server/unsafe_txn.py
    unsafe_live: str | None = None  # a planted live-query bug (KALAMDB_UNSAFE_LIVE), see live/service.py
    clients_per_node: int = 2
    client_timeout: float = 5.0
    check_timeout: float = 60.0
    barrier_timeout: float = 60.0
    quiet: tuple[float, float] = (1.0, 2.5)
    active: tuple[float, float] = (2.0, 4.0)
    log_level: str = "info"
    network: str = "proxy"

    def validate(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise ValueError(f"--nodes must be between 1 and 9, got {self.nodes}")
        if self.time <= 0:
            raise ValueError(f"--time must be positive, got {self.time}")
        bad = [f for f in self.faults if f not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault(s) {', '.join(bad)}; choose from {', '.join(FAULT_KINDS)}")
        if self.network not in NETWORK_MODES:
            raise ValueError(f"--network must be one of {', '.join(NETWORK_MODES)}, got {self.network!r}")
        make_workloads(self.workloads)  # raises on unknown names
        if self.unsafe_txn is not None and self.unsafe_txn not in UNSAFE_TXN_MODES:
            raise ValueError(f"unknown unsafe_txn {self.unsafe_txn!r}; choose from {', '.join(UNSAFE_TXN_MODES)}")
        if not self.workloads:
            raise ValueError("at least one workload is needed")
        from kalamdb.live.service import UNSAFE_MODES as UNSAFE_LIVE_MODES

        if self.unsafe_live is not None and self.unsafe_live not in UNSAFE_LIVE_MODES:
            raise ValueError(f"unknown unsafe_live {self.unsafe_live!r}; choose from {', '.join(UNSAFE_LIVE_MODES)}")


def schedule_for(cfg: ChaosConfig) -> list[FaultStep]:
    """The nemesis schedule of a configuration: a pure function of (seed, time, faults, nodes)."""
    return make_schedule(cfg.seed, cfg.time, cfg.faults, list(range(1, cfg.nodes + 1)),
                         quiet=cfg.quiet, active=cfg.active)


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
    if cfg.unsafe_removed_votes:
        extra_env["KALAMDB_UNSAFE_REMOVED_VOTES"] = "1"
    if cfg.unsafe_live:
        extra_env["KALAMDB_UNSAFE_LIVE"] = cfg.unsafe_live
    cluster = ClusterTestServer(size=cfg.nodes, root=root, extra_env=extra_env, log_level=cfg.log_level,
                                seed=cfg.seed, network=cfg.network)
    results: dict[str, Any] = {"seed": cfg.seed, "config": asdict(cfg), "valid": False}
    history_file = open(out / "history.jsonl", "w")  # noqa: SIM115 - closed in finally
    try:
        say("starting cluster", 0.0)
        cluster.start()
        results["network"] = cluster.network_mode
        cluster.membership.keep_removed = cfg.unsafe_removed_votes  # the planted bug needs its ghosts
        lead = cluster.leader()
        admin = SetupClient(lead.url, user="root", password=cluster.root_password, timeout=30)
        with admin:
            for wl in workloads:
                wl.setup(admin)
        cluster.wait_for_replication(timeout=30)
        for wl in workloads:
            wl.begin(cluster, cfg.seed)
        rec = HistoryRecorder(history_file)
        t0 = time.monotonic_ns()
        view = MemberView(cluster)
        backend = KitFaultBackend(cluster, rec, view, t0_ns=t0)
        nemesis = Nemesis(backend, schedule, t0)
        stop = threading.Event()
        threads, contexts = [], []
        n_clients = cfg.nodes * cfg.clients_per_node
        for i in range(n_clients):
            node = cluster.nodes[i % cfg.nodes]
            # straight to the node, not via the kit's client proxy: a dead node then refuses the
            # connection (a definite failure) instead of a proxy hanging up after the request was sent
            url = node.listen_url
            ctx = FollowingContext(i, node.node_id, url, cluster.root_password,
                                   random.Random(f"{cfg.seed}:client:{i}"), n_clients, timeout=cfg.client_timeout,
                                   view=view)
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
        for wl in workloads:
            wl.end(cluster, cfg.barrier_timeout)
        replica_checks = _replica_checks(cluster, workloads, cfg.barrier_timeout)
        say("checking", 1.0)
        ops = rec.operations()
        checks = []
        for wl in workloads:
            checks.extend(wl.check(ops, timeout=cfg.check_timeout, events=rec.events))
        checks.extend(replica_checks)
        if set(cfg.faults) & set(MEMBERSHIP_KINDS):
            checks.append(_membership_check(cluster, backend, cfg.barrier_timeout))
        results.update({
            "checkers": checks,
            "windows": [asdict(w) for w in nemesis.windows],
            "skipped_faults": nemesis.skipped,
            "nemesis_errors": nemesis.errors,
            "client_errors": [e for ctx in contexts for e in ctx.unexpected][:100],
            "recovery": recovery,
            "membership": backend.changes,
            "configurations": backend.configurations,
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
        for wl in workloads:
            with contextlib.suppress(Exception):
                wl.close()
        with contextlib.suppress(Exception):
            history_file.close()
        with contextlib.suppress(Exception):
            cluster.shutdown()  # resumes paused nodes first, kills whatever does not stop
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        for p in root.glob("node*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(p, logs / p.name)
        shutil.rmtree(root, ignore_errors=True)
        _write_json(out / "results.json", results)


class SetupClient(Client):
    """The client that creates the workload tables before any fault. On a loaded machine an early
    election can refuse a setup statement (definite: certainly not applied) or leave it open
    (indefinite): the statement is sent again, and a primary-key violation on a retry after an
    indefinite answer means the first attempt was applied."""

    ATTEMPTS = 20

    def sql(self, text: str, params: list | None = None, namespace_id: str | None = None, **extra: Any) -> Response:
        maybe_applied = False
        for attempt in range(self.ATTEMPTS):
            try:
                resp = super().sql(text, params, namespace_id, **extra)
            except OSError:
                if attempt == self.ATTEMPTS - 1:
                    raise
                maybe_applied = True
                time.sleep(0.25)  # an answer was lost; bounded by ATTEMPTS
                continue
            err = resp.error or {}
            if resp.ok or attempt == self.ATTEMPTS - 1:
                return resp
            if maybe_applied and "Primary key violation" in str(err.get("message")):
                return Response({"status": "success", "results": []})  # the earlier attempt was applied
            details = str(err.get("details") or "")
            if details.startswith("indefinite"):
                maybe_applied = True
            elif not details.startswith("definite"):
                return resp  # a real error: the workload's setup reports it
            time.sleep(0.25)  # a new leader is being elected; bounded by ATTEMPTS
        raise AssertionError("unreachable")


@dataclass
class FollowingContext(ClientContext):
    """A client pinned to one member that follows the configuration: when the members change, it
    re-pins to the member at its position (index modulo the member count), so new nodes get
    clients and removed ones stop being used. It connects with the same `kalamdb.Client` users have."""

    view: MemberView | None = None
    seen_version: int = -1

    def connection(self) -> Client:
        if self.view is not None:
            version, members = self.view.snapshot()
            if version != self.seen_version and members:
                self.seen_version = version
                node_id, url = members[self.index % len(members)]
                if (node_id, url) != (self.node_id, self.url):
                    self.node_id, self.url = node_id, url
                    if self.client is not None:
                        self.client.close()
                        self.client = None
        return super().connection()


def _membership_check(cluster: ClusterTestServer, backend: KitFaultBackend, timeout: float) -> dict:
    """Every acknowledged membership change holds in the final configuration (a node whose removal
    was acknowledged is not a voter, one whose join was acknowledged is, unless removed later), no
    learner is left, and every member reports the same voters. Indeterminate changes may go either
    way. Waits (bounded) for the leader to finish changes whose intent is committed."""
    state: dict[int, str] = {nid: "in" for nid in backend.configurations[0]["voters"]}
    for ch in backend.changes:
        if ch["op"] == "transfer" or ch["outcome"] == "fail":
            continue
        sure = "in" if ch["outcome"] == "ok" else "maybe"
        gone = "out" if ch["outcome"] == "ok" else "maybe"
        if ch.get("node") is not None and ch["op"] in ("remove", "replace"):
            state[ch["node"]] = gone
        if ch.get("new_node") is not None:
            state[ch["new_node"]] = sure
    must_in = sorted(n for n, s in state.items() if s == "in")
    must_out = sorted(n for n, s in state.items() if s == "out")
    problems: list[str] = []
    deadline = time.monotonic() + min(timeout, 20.0)
    while True:
        problems = []
        try:
            views = {n.node_id: n.health(timeout=2.0) for n in cluster.nodes}
        except OSError as exc:
            views, problems = {}, [f"a member does not answer: {exc}"]
        voter_sets = {nid: tuple(h.get("voters") or []) for nid, h in views.items()}
        learners = {nid: h.get("learners") for nid, h in views.items() if h.get("learners")}
        final = sorted(set().union(*voter_sets.values())) if voter_sets else []
        if len(set(voter_sets.values())) > 1:
            problems.append(f"members disagree on the voters: {voter_sets}")
        if learners:
            problems.append(f"learners left: {learners}")
        missing = [n for n in must_in if n not in final]
        if missing:
            problems.append(f"acknowledged joins missing from the final voters {final}: {missing}")
        stale = [n for n in must_out if n in final]
        if stale:
            problems.append(f"acknowledged removals still voters in {final}: {stale}")
        if sorted(n.node_id for n in cluster.nodes) != final and not problems:
            problems.append(f"the kit runs {sorted(n.node_id for n in cluster.nodes)}, the voters are {final}")
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # the leader's membership reconciliation runs periodically; bounded by the deadline
    summary = (f"membership: valid (final voters {final}, {len(backend.changes)} changes)" if not problems
               else "membership: INVALID: " + "; ".join(problems))
    return {"name": "membership", "workload": "replicas", "valid": not problems, "summary": summary,
            "anomalies": {"problems": problems, "must_be_voters": must_in, "must_not_be_voters": must_out}}


def _replica_checks(cluster: ClusterTestServer, workloads: list[Workload], timeout: float) -> list[dict]:
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


__all__ = ["ChaosConfig", "RunResult", "run_chaos", "schedule_for"]
