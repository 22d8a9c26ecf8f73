"""kalamdb scenarios on a real 3-node cluster (processes from the cluster test kit).

Every figure is observed from outside, the way a client sees it: HTTP answers, the Raft index each
write answer carries, `/v1/api/cluster/wait` long-polls for "applied on that node", psutil for
memory and CPU. Nothing waits by sleeping: state is waited for with long-polls or bounded polls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import orjson
import psutil

from kalamdb.bench.load import Request, Target, json_ok, percentile
from kalamdb.server import metrics

if TYPE_CHECKING:
    from kalamdb.testing.cluster import ClusterTestServer

SQL_PATH = "/v1/api/sql"
WAIT_PATH = "/v1/api/cluster/wait"
TABLE = "bench.items"
CATCHUP_ROWS_PER_REQUEST = 50


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def start_kalamdb(*, heartbeat_ms: int = 50, election_ms: tuple[int, int] = (150, 300), nodes: int = 3,
                  snapshot_policy: str = "LogsSinceLast(20000)", extra_env: dict | None = None,
                  log_level: str = "warn") -> Any:
    from kalamdb.testing.cluster import start_cluster_server

    return start_cluster_server(nodes, heartbeat_ms=heartbeat_ms, election_ms=election_ms, log_level=log_level,
                                snapshot_policy=snapshot_policy, extra_env=dict(extra_env or {}))


def basic_auth(password: str) -> str:
    return "Basic " + base64.b64encode(f"root:{password}".encode()).decode()


def create_table(cluster: ClusterTestServer) -> None:
    for sql in ("CREATE NAMESPACE IF NOT EXISTS bench",
                f"CREATE SHARED TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, body TEXT)"):
        r = cluster.execute_sql_on_leader(sql)
        if not r.ok:
            raise RuntimeError(f"setup failed: {sql}: {r.error}")


def node_urls(cluster: ClusterTestServer, target: str) -> list[str]:
    """`random`: every node (followers forward writes to the leader); `leader`: the leader only."""
    if target == "leader":
        return [cluster.leader().url]
    return [n.url for n in cluster.nodes if n.is_running()]


def literal_insert(ids: range | list[int], body: str) -> str:
    """A multi-row INSERT with literal values (the engine lifts them into parameters and caches the
    statement by shape; bound parameters are capped at 50 per statement)."""
    quoted = "'" + body.replace("'", "''") + "'"
    return f"INSERT INTO {TABLE} (id, body) VALUES " + ", ".join(f"({int(i)}, {quoted})" for i in ids)


def insert_target(urls: list[str], auth: str, *, rows_per_request: int = 1, body_bytes: int = 32,
                  on_answer: Callable[[bytes, float, float], None] | None = None) -> Target:
    """One INSERT per request of `rows_per_request` rows with fresh ids (params, parsed once per shape)."""
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    value = "x" * body_bytes
    sql = f"INSERT INTO {TABLE} (id, body) VALUES ($1, $2)"
    endpoints = [u + SQL_PATH for u in urls]

    def make(n: int, rng: random.Random) -> Request:
        if rows_per_request == 1:
            body = {"sql": sql, "params": [n, value]}
        else:
            base = n * rows_per_request
            body = {"sql": literal_insert(range(base, base + rows_per_request), value)}
        return Request(rng.choice(endpoints), orjson.dumps(body), headers)

    return Target("kalamdb", make, json_ok, on_answer)


def mixed_target(urls: list[str], auth: str, *, read_fraction: float, written: Callable[[], int],
                 consistency: str | None = None) -> Target:
    """Point reads of already written ids (linearizable by default) mixed with one-row inserts."""
    writes = insert_target(urls, auth)
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    endpoints = [u + SQL_PATH for u in urls]
    read_sql = f"SELECT id, body FROM {TABLE} WHERE id = $1"

    def make(n: int, rng: random.Random) -> Request:
        if rng.random() >= read_fraction:
            return writes.make(n, rng)
        body: dict = {"sql": read_sql, "params": [rng.randint(1, max(1, written()))]}
        if consistency:
            body["consistency"] = consistency
        return Request(rng.choice(endpoints), orjson.dumps(body), headers)

    return Target("kalamdb", make, json_ok)


# ---------------------------------------------------------------- per-node resources
@dataclass
class ResourceSampler:
    """Samples RSS and CPU of a set of processes in a thread while a load runs, and how loaded the
    whole machine was meanwhile: a ratio between two systems measured on a saturated machine says
    as much about how they share its CPUs as about either system, so every level reports it."""

    pids: dict[str, int]
    interval_s: float = 0.1
    max_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._procs = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(psutil.Error):
                self._procs[name] = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-sampler")

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, p in self._procs.items():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[name] = t.user + t.system
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):  # a sampling period, not a wait for state
            for name, p in self._procs.items():
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss / (1 << 20)
                    self.max_rss_mb[name] = max(self.max_rss_mb.get(name, 0.0), rss)

    def __enter__(self) -> Self:
        self._load_avg = os.getloadavg()[0]
        self._machine0, self._client0 = psutil.cpu_times(), psutil.Process().cpu_times()
        self._cpu0, self._t0 = self._cpu(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        cpu1, wall = self._cpu(), time.perf_counter() - self._t0
        for name, c1 in cpu1.items():
            if name in self._cpu0 and wall > 0:
                self.cpu_percent[name] = round(100 * (c1 - self._cpu0[name]) / wall, 1)
        self.max_rss_mb = {k: round(v, 1) for k, v in self.max_rss_mb.items()}
        machine1, client1 = psutil.cpu_times(), psutil.Process().cpu_times()
        total = sum(machine1) - sum(self._machine0)
        idle = sum(getattr(machine1, k, 0.0) - getattr(self._machine0, k, 0.0) for k in ("idle", "iowait"))
        client = (client1.user + client1.system) - (self._client0.user + self._client0.system)
        self.load = {
            "load_avg_1m": round(self._load_avg, 2),  # at the start of the level
            "machine_busy_percent": round(100 * (1 - idle / total), 1) if total > 0 else 0.0,
            # the load generator itself (this process), in % of one CPU
            "client_cpu_percent": round(100 * client / wall, 1) if wall > 0 else 0.0,
        }


def leadership(cluster: ClusterTestServer) -> dict[int, tuple[int, int] | None]:
    """node id -> (term, leader id) as each node's health answers it (None: no answer)."""
    out: dict[int, tuple[int, int] | None] = {}
    for n in cluster.nodes:
        try:
            h = n.health(timeout=5.0)
            out[n.node_id] = (int(h["current_term"]), int(h.get("leader_id") or 0))
        except Exception:  # noqa: BLE001 - a node that does not answer is reported as such
            out[n.node_id] = None
    return out


def leadership_report(before: dict[int, tuple[int, int] | None],
                      after: dict[int, tuple[int, int] | None]) -> dict[str, Any]:
    """Did a load level cost a leadership change? Held: every node answered, before and after, with
    the same term and leader (no election happened, not even one that re-elected the same node)."""
    def view(snap: dict[int, tuple[int, int] | None]) -> dict[str, Any]:
        answers = {v for v in snap.values() if v is not None}
        if len(answers) == 1 and None not in snap.values():
            term, leader = next(iter(answers))
            return {"term": term, "leader": leader}
        return {"nodes": {str(k): (None if v is None else {"term": v[0], "leader": v[1]}) for k, v in snap.items()}}

    b, a = view(before), view(after)
    return {"held": "leader" in b and b == a and b["leader"] != 0, "before": b, "after": a}


def raft_thread_lateness(cluster: ClusterTestServer) -> dict[int, tuple[float, float] | None]:
    """node id -> (late ticks so far, largest tick lateness so far in s) from each node's /metrics
    (None: no answer). A late tick is one that fired more than four tick periods late: the Raft
    thread did not get to run, and a stall longer than the election timeout costs a leadership."""
    out: dict[int, tuple[float, float] | None] = {}
    for n in cluster.nodes:
        try:
            with urllib.request.urlopen(n.url + "/metrics", timeout=5.0) as resp:
                values = metrics.parse(resp.read().decode())
            out[n.node_id] = (values["kalamdb_raft_thread_stalls_total"],
                              values["kalamdb_raft_thread_max_lateness_seconds"])
        except Exception:  # noqa: BLE001 - a node that does not answer is reported as such
            out[n.node_id] = None
    return out


def lateness_report(before: dict[int, tuple[float, float] | None],
                    after: dict[int, tuple[float, float] | None]) -> dict[str, Any]:
    """What a load level did to the Raft threads: late ticks during it (all nodes), and the largest
    lateness during it where a node's running maximum grew (None: no node's did, so every tick of
    the level was at most as late as the worst one before it)."""
    nodes: dict[str, dict[str, Any]] = {}
    for nid, b in before.items():
        a = after.get(nid)
        if a is None or b is None:
            continue
        nodes[str(nid)] = {"late_ticks": int(a[0] - b[0]),
                           "max_lateness_ms": round(a[1] * 1000, 1) if a[1] > b[1] else None}
    worst = [n["max_lateness_ms"] for n in nodes.values() if n["max_lateness_ms"] is not None]
    return {"late_ticks": sum(n["late_ticks"] for n in nodes.values()),
            "max_lateness_ms": max(worst) if worst else None, "nodes": nodes}


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            out[name] = round(psutil.Process(pid).memory_info().rss / (1 << 20), 1)
    return out


def kalamdb_pids(cluster: ClusterTestServer) -> dict[str, int]:
    return {f"node{n.node_id}": n.pid for n in cluster.nodes if n.is_running() and n.pid is not None}


# ---------------------------------------------------------------- replication lag
@dataclass
class LagProbe:
    """Per write: how long after the leader applied it every follower had applied it too.

    One probe client writes to the leader while the main load runs; after each acknowledged write it
    long-polls every node's /cluster/wait for that write's index on connections kept open. Each node
    answers with the time it applied the index, on the machine's monotonic clock
    (node/apply_times.py): the last follower's time minus the leader's is the replication lag, with
    no HTTP round trip in it. The probe's own view is kept beside it: acknowledgement -> the last
    follower's answer (raw, an upper bound that includes a round trip to a busy follower), and that
    minus the bare round trip of the same long-poll for an index already applied (net).
    """

    leader_url: str
    follower_urls: list[str]
    auth: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, raw lag ms)
    rtts: list[float] = field(default_factory=list)  # ms: round trip of a wait that returns at once
    applied_lags: list[tuple[float, float]] = field(default_factory=list)  # (s since start, ms): last
    # follower applied - leader applied
    errors: int = 0

    async def run(self, session: Any, stop_at: float, ids: Any) -> None:
        target = insert_target([self.leader_url], self.auth)
        rng = random.Random(7)
        t_start = time.perf_counter()
        while time.perf_counter() < stop_at:
            req = target.make(next(ids), rng)
            async with session.post(req.url, data=req.body, headers=req.headers) as resp:
                body = await resp.read()
            acked = time.perf_counter()
            if resp.status != 200:
                self.errors += 1
                continue
            index = orjson.loads(body).get("raft_index")
            if index is None:
                self.errors += 1
                continue
            urls = [self.leader_url, *self.follower_urls]
            answers = await asyncio.gather(*(self._wait(session, u, index) for u in urls))
            waited = [w for w in answers if w is not None]
            if len(waited) != len(answers):
                self.errors += 1
                continue
            (_, leader_at), *followers = waited
            raw = (max(t for t, _ in followers) - acked) * 1000
            applied = [at for _, at in followers if at is not None]
            if leader_at is not None and len(applied) == len(followers):
                self.applied_lags.append((acked - t_start, max(0.0, max(applied) - leader_at) * 1000))
            # the same long-poll for an index every follower already applied: its round trip alone
            t_rtt = time.perf_counter()
            await asyncio.gather(*(self._wait(session, u, 0) for u in self.follower_urls))
            rtt = (time.perf_counter() - t_rtt) * 1000
            self.samples.append((acked - t_start, raw))
            self.rtts.append(rtt)

    async def _wait(self, session: Any, url: str, index: int) -> tuple[float, float | None] | None:
        """(when the answer came, when the node says it applied `index`) once it has; None if not."""
        async with session.get(f"{url}{WAIT_PATH}?index={index}&timeout_ms=5000",
                               headers={"Authorization": self.auth}) as resp:
            body = await resp.read()
        t = time.perf_counter()
        if resp.status != 200:
            return None
        answer = orjson.loads(body)
        return (t, answer.get("applied_at_monotonic_s")) if answer.get("reached") else None

    def summary(self) -> dict:
        """The lag from the nodes' apply times (p50_ms, p99_ms), and the probe's own view: raw (ack ->
        last follower's answer), the bare round trip of the same long-poll, raw minus that (net)."""
        applied = sorted(lag for _, lag in self.applied_lags)
        lags = sorted(lag for _, lag in self.samples)
        rtts = sorted(self.rtts)
        net = sorted(max(0.0, lag - rtt) for (_, lag), rtt in zip(self.samples, self.rtts, strict=True))
        return {"samples": len(applied), "p50_ms": round(percentile(applied, 0.5), 3),
                "p99_ms": round(percentile(applied, 0.99), 3), "max_ms": round(applied[-1], 3) if applied else None,
                "raw_p50_ms": round(percentile(lags, 0.5), 3), "raw_p99_ms": round(percentile(lags, 0.99), 3),
                "rtt_p50_ms": round(percentile(rtts, 0.5), 3),
                "net_p50_ms": round(percentile(net, 0.5), 3), "net_p99_ms": round(percentile(net, 0.99), 3),
                "errors": self.errors}


# ---------------------------------------------------------------- failover, start, catch-up
def write_once(node: Any, n: int, timeout: float = 2.0) -> tuple[bool, int | None]:
    from kalamdb.client import Client

    try:
        with Client(node.url, user="root", password=node.root_password, timeout=timeout) as c:
            r = c.sql(f"INSERT INTO {TABLE} (id, body) VALUES ($1, $2)", [n, "failover"])
        return r.ok, r.get("raft_index")
    except OSError:
        return False, None


def failover_once(cluster: ClusterTestServer, ids: Any, deadline_s: float = 20.0) -> float:
    """kill -9 the leader, then write round-robin to the survivors until one write succeeds.
    Returns seconds from the kill to that acknowledgement; the killed node is restarted and waited for."""
    leader = cluster.leader()
    survivors = [n for n in cluster.nodes if n is not leader and n.is_running()]
    t0 = time.perf_counter()
    leader.terminate(signal.SIGKILL)
    took = None
    for node in itertools.cycle(survivors):
        ok, _ = write_once(node, next(ids), timeout=2.0)
        if ok:
            took = time.perf_counter() - t0
            break
        if time.perf_counter() - t0 > deadline_s:
            raise RuntimeError(f"no write succeeded within {deadline_s}s after killing the leader")
    assert took is not None  # the loop above ends with a successful write or raises
    cluster.processes.start(leader)
    cluster.wait_for_replication(timeout=30)
    return took


def catch_up_once(cluster: ClusterTestServer, writes: int, ids: Any, *, rows_per_request: int = CATCHUP_ROWS_PER_REQUEST) -> dict:
    """Stop a follower, write `writes` rows, restart it; seconds from restart to applied >= last write."""
    follower = cluster.followers()[0]
    leader = cluster.leader()
    cluster.processes.stop(follower)
    last = 0
    for _ in range(max(1, writes // rows_per_request)):
        r = leader.sql(literal_insert([next(ids) for _ in range(rows_per_request)], "c" * 32))
        if not r.ok:
            raise RuntimeError(f"write during catch-up failed: {r.error}")
        last = r.raft_index or last
    t0 = time.perf_counter()
    cluster.processes.start(follower, wait=False)
    deadline = t0 + 60
    while True:  # the node must answer before it can be long-polled (bounded poll)
        with contextlib.suppress(OSError):
            follower.health(timeout=1.0)
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"follower did not come back: {follower.log_tail()}")
        time.sleep(0.01)
    answering = time.perf_counter() - t0
    follower.wait_applied(last, timeout=max(1.0, deadline - time.perf_counter()))
    took = time.perf_counter() - t0
    log_text = follower.log_path.read_text(errors="replace")  # needs log level info
    restarted = log_text.rsplit("---- kit: starting node", 1)[-1]
    return {"writes": writes, "index": last, "seconds": round(took, 3), "answering_s": round(answering, 3),
            "via_snapshot": "installed snapshot at index" in restarted}


def summarize_seconds(values: list[float]) -> dict:
    v = sorted(values)
    return {"runs": len(v), "p50_ms": round(percentile(v, 0.5) * 1000, 1),
            "p99_ms": round(percentile(v, 0.99) * 1000, 1), "max_ms": round(v[-1] * 1000, 1) if v else None,
            "all_ms": [round(x * 1000, 1) for x in values]}
