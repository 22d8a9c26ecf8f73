"""`kalamdb bench`: a 3-node kalamdb cluster (and optionally etcd) under load, measured from outside.

    kalamdb bench --compare etcd --clients 1,64 --duration 4 --json out.json

Scenarios (pick with --scenarios, default all cheap ones): insert, mixed, batch, lag, failover,
start, catchup, memory. Results print as a table; --json writes them in the schema of issue 8;
--plot DIR draws PNGs when matplotlib is installed.
"""

from __future__ import annotations

import itertools
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from kalamdb.bench import cluster as kc
from kalamdb.bench import load
from kalamdb.bench.load import LoadResult, closed_loop, new_session

if TYPE_CHECKING:
    from kalamdb.bench.etcd import EtcdCluster
    from kalamdb.testing.cluster import ClusterTestServer

ALL_SCENARIOS = ("start", "insert", "batch", "mixed", "lag", "failover", "catchup", "memory")
SATURATED_PERCENT = 90.0  # machine busy at or above this during a level: its ratio says so


def _ints(ctx: Any, param: Any, value: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' must be comma-separated integers, e.g. 1,16,64") from None
    if not out or min(out) < 1:
        raise click.BadParameter("every value must be >= 1")
    return out


def _scenarios(ctx: Any, param: Any, value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in ALL_SCENARIOS]
    if bad or not names:
        raise click.BadParameter(f"unknown scenario(s) {bad}; choose from {','.join(ALL_SCENARIOS)}")
    return names


def cpu_ms_per_op(row: dict) -> float | None:
    """The CPU the system's processes spent per operation of a level, in ms: the sum of their CPU
    shares over the level, over its operations. Less moved by a busy machine than throughput or
    latency (a wait for a core costs no CPU), so it says what a ratio measured on a saturated
    machine cannot: which system does more work per write."""
    cpu, ops = row.get("cpu_percent"), row.get("ops_per_s")
    if not cpu or not ops:
        return None
    return round(load.cpu_ms_per_op(sum(cpu.values()), ops), 3)


class EtcdSide:
    """The etcd cluster of `--compare etcd`, its process ids, and a stop that may be called twice."""

    def __init__(self, etcd: EtcdCluster, pids: dict[str, int]):
        self.etcd = etcd
        self.pids = pids
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.etcd.stop()


class Bench:
    """One bench run: its options, its results, and the console it reports to."""

    def __init__(self, opts: dict[str, Any]):
        from rich.console import Console

        self.o = opts
        self.console = Console(stderr=True)
        self.results: list[dict] = []
        self.extra: dict[str, Any] = {}
        self.ids = itertools.count(1)
        self.seed = opts["seed"]

    # ---------------------------------------------------------------- helpers
    def load(self, target: Any, clients: int, label: str, *, ops_per_request: int = 1,
             sampler_pids: dict[str, int] | None = None, side: Any = None) -> tuple[LoadResult, Any]:
        """Run one closed-loop level with a progress bar; optionally a side task (the lag probe)."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        duration, warmup = self.o["duration"], self.o["warmup"]
        sampler = kc.ResourceSampler(sampler_pids or {})

        async def go() -> LoadResult:
            import asyncio

            async with new_session(clients + 4) as session:
                with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                              console=self.console, transient=True) as bar:
                    task = bar.add_task(label, total=1.0)
                    side_task = None
                    if side is not None:
                        side_task = asyncio.ensure_future(
                            side(session, time.perf_counter() + warmup + duration))
                    res = await closed_loop(session, target, clients=clients, duration=duration, warmup=warmup,
                                            seed=self.seed, op_counter=self.ids, ops_per_request=ops_per_request,
                                            on_tick=lambda f: bar.update(task, completed=f))
                    if side_task is not None:
                        await side_task
                    return res

        with sampler:
            res = kc.run_async(go())
        return res, sampler

    def kalamdb_load(self, cluster: ClusterTestServer, target: Any, clients: int, label: str,
                     **kw: Any) -> tuple[LoadResult, Any, dict]:
        """`load` on kalamdb, with whether the level cost a leadership change and how late the
        Raft threads ran during it (issue 12: Raft traffic must not queue behind request work;
        overload must be answered with 429/503, never with a lost leader)."""
        before, late0 = kc.leadership(cluster), kc.raft_thread_lateness(cluster)
        res, smp = self.load(target, clients, label, **kw)
        held = kc.leadership_report(before, kc.leadership(cluster))
        held["raft_thread"] = kc.lateness_report(late0, kc.raft_thread_lateness(cluster))
        return res, smp, held

    def add(self, system: str, scenario: str, res: LoadResult | None = None, **fields: Any) -> dict:
        row: dict[str, Any] = {"system": system, "scenario": scenario}
        if res is not None:
            row.update(res.summary())
        row.update(fields)
        self.results.append(row)
        if row.get("first_error"):
            self.console.print(f"[yellow]{system} {scenario}: first error: {row['first_error']}[/]")
        return row

    def node_env(self) -> dict[str, str]:
        if not self.o["profile_dir"]:
            return {}
        from kalamdb.bench.profile_hook import profile_env

        return profile_env(Path(self.o["profile_dir"]))

    # ---------------------------------------------------------------- kalamdb
    def run_kalamdb(self, etcd: EtcdSide | None = None) -> None:
        """kalamdb's scenarios. With `etcd`, each insert level runs on both systems back to back,
        the first one alternating from level to level, and etcd is stopped before the rest: a
        machine whose speed drifts during the run (a shared host's does) then moves both systems'
        figures of a level alike, where running every etcd level first put all the drift between
        them. While one system is measured the other idles (heartbeats only)."""
        sc = self.o["scenarios"]
        el = self.o["election_ms"]
        self.console.print("[bold]kalamdb[/]: starting a 3-node cluster")
        starts = []
        cluster = None
        try:
            runs = self.o["start_runs"] if "start" in sc else 1
            for i in range(runs):
                t0 = time.perf_counter()
                c = kc.start_kalamdb(heartbeat_ms=self.o["heartbeat_ms"], election_ms=el, extra_env=self.node_env())
                starts.append(time.perf_counter() - t0)
                if i < runs - 1:
                    c.shutdown()
                else:
                    cluster = c
            if cluster is None:
                raise RuntimeError("no kalamdb cluster was started (start_runs must be at least 1)")
            if "start" in sc:
                self.add("kalamdb", "start", **kc.summarize_seconds(starts))
            kc.create_table(cluster)
            cluster.wait_for_replication(timeout=10)
            pids = kc.kalamdb_pids(cluster)
            idle = kc.rss_mb(pids)
            self.extra.setdefault("memory", {})["kalamdb_idle_rss_mb"] = idle
            auth = kc.basic_auth(cluster.root_password)
            urls = kc.node_urls(cluster, self.o["target"])
            for i, clients in enumerate(self.o["clients"]):
                if etcd is not None and i % 2 == 0:
                    self.etcd_level(etcd, clients)
                if "insert" in sc:
                    res, smp, held = self.kalamdb_load(cluster, kc.insert_target(urls, auth), clients,
                                                       f"kalamdb insert x{clients}", sampler_pids=pids)
                    self.add("kalamdb", "insert", res, target=self.o["target"], rss_mb=smp.max_rss_mb,
                             cpu_percent=smp.cpu_percent, machine=smp.load, leadership=held)
                if etcd is not None and i % 2 == 1:
                    self.etcd_level(etcd, clients)
            if etcd is not None:
                etcd.stop()
            if "batch" in sc:
                rpr = self.o["rows_per_request"]
                clients = self.o["batch_clients"]
                res, smp, held = self.kalamdb_load(cluster, kc.insert_target(urls, auth, rows_per_request=rpr),
                                                   clients, f"kalamdb batch {rpr} rows x{clients}",
                                                   ops_per_request=rpr, sampler_pids=pids)
                self.add("kalamdb", "batch", res, rows_per_request=rpr, rss_mb=smp.max_rss_mb,
                         cpu_percent=smp.cpu_percent, machine=smp.load, leadership=held)
            if "mixed" in sc:
                clients = max(self.o["clients"])
                written = next(self.ids)
                tgt = kc.mixed_target(urls, auth, read_fraction=self.o["read_fraction"], written=lambda: written)
                res, smp, held = self.kalamdb_load(cluster, tgt, clients, f"kalamdb mixed x{clients}",
                                                   sampler_pids=pids)
                self.add("kalamdb", "mixed", res, read_fraction=self.o["read_fraction"], cpu_percent=smp.cpu_percent,
                         machine=smp.load, leadership=held)
            if "lag" in sc:
                self.guarded("replication_lag", self.run_lag, cluster, urls, auth, pids)
            if "memory" in sc and self.o["million"]:
                self.guarded("memory_fill", self.fill_million, cluster, auth, pids)
            if "catchup" in sc:
                self.guarded("catchup", self.run_catchup, cluster)
            if "failover" in sc:
                self.guarded("failover", self.run_failover, cluster)
        finally:
            if cluster is not None:
                cluster.shutdown()

    def guarded(self, scenario: str, fn: Any, *args: Any) -> None:
        """Run one scenario; if it breaks, report it as a row with its error and go on."""
        try:
            fn(*args)
        except (click.ClickException, RuntimeError, AssertionError, OSError) as exc:
            self.add("kalamdb", scenario, errors=1, first_error=f"{type(exc).__name__}: {exc}"[:500])

    def run_failover(self, cluster: ClusterTestServer) -> None:
        runs = []
        for i in range(self.o["failover_runs"]):
            self.console.print(f"  failover run {i + 1}/{self.o['failover_runs']}", end="\r")
            runs.append(kc.failover_once(cluster, self.ids))
        self.add("kalamdb", "failover", election_ms=list(self.o["election_ms"]), **kc.summarize_seconds(runs))

    def run_lag(self, cluster: ClusterTestServer, urls: list[str], auth: str, pids: dict[str, int]) -> None:
        clients = self.o["lag_clients"]
        leader = cluster.leader()
        probe = kc.LagProbe(leader.url, [n.url for n in cluster.nodes if n is not leader and n.is_running()], auth)
        res, smp, held = self.kalamdb_load(cluster, kc.insert_target(urls, auth), clients,
                                           f"kalamdb lag under x{clients}", sampler_pids=pids,
                                           side=lambda s, stop: probe.run(s, stop, self.ids))
        self.add("kalamdb", "replication_lag", res, load_clients=clients, lag=probe.summary(),
                 rss_mb=smp.max_rss_mb, cpu_percent=smp.cpu_percent, machine=smp.load, leadership=held)
        self.extra["lag_over_time"] = [[round(t, 3), round(lag, 3)] for t, lag in probe.applied_lags]

    def fill_million(self, cluster: ClusterTestServer, auth: str, pids: dict[str, int]) -> None:
        rows, rpr = self.o["million_rows"], 500
        leader = cluster.leader()
        self.console.print(f"  filling {rows} rows in batches of {rpr}")
        last, done, failed = 0, 0, []
        with kc.ResourceSampler(pids) as smp:
            while done < rows:
                r = leader.sql(kc.literal_insert([next(self.ids) for _ in range(rpr)], "m" * 32))
                if not r.ok:  # e.g. leadership moved: find the leader again, go on with fresh ids
                    failed.append(r.error)
                    if len(failed) > 20:
                        raise click.ClickException(f"fill failed 20 times, last: {r.error}")
                    leader = cluster.leader()
                    continue
                done += rpr
                last = r.raft_index or last
            cluster.wait_for_replication(last, timeout=120)
        self.extra.setdefault("memory", {})["kalamdb_after_rows"] = {
            "rows": done, "rss_mb": kc.rss_mb(pids), "max_rss_mb": smp.max_rss_mb,
            "failed_batches": len(failed), "first_failure": failed[0] if failed else None}

    def run_catchup(self, cluster: ClusterTestServer) -> None:
        n = self.o["catchup_writes"]
        by_log = kc.catch_up_once(cluster, n, self.ids)
        self.add("kalamdb", "catchup_log", **by_log)
        # by snapshot: a fresh cluster whose leader compacts its log more often than the follower misses
        c2 = kc.start_kalamdb(heartbeat_ms=self.o["heartbeat_ms"], election_ms=self.o["election_ms"],
                              snapshot_policy=f"LogsSinceLast({max(3, n // kc.CATCHUP_ROWS_PER_REQUEST // 4)})",
                              extra_env=self.node_env(), log_level="info")  # info: the log says "installed snapshot"
        try:
            kc.create_table(c2)
            by_snap = kc.catch_up_once(c2, n, itertools.count(1))
            self.add("kalamdb", "catchup_snapshot", **by_snap)
        finally:
            c2.shutdown()

    # ---------------------------------------------------------------- etcd
    def start_etcd(self) -> EtcdSide:
        """A 3-node etcd, started once; its insert levels run between kalamdb's (`run_kalamdb`)."""
        from kalamdb.bench.etcd import EtcdCluster, EtcdUnavailable

        self.console.print("[bold]etcd[/]: starting a 3-node cluster")
        try:
            etcd = EtcdCluster(binary=self.o["etcd_bin"]).start()
        except EtcdUnavailable as exc:
            raise click.ClickException(str(exc)) from None
        self.extra["etcd_version"] = etcd.version
        self.add("etcd", "start", runs=1, p50_ms=round(etcd.start_seconds * 1000, 1))
        pids = {f"etcd{i}": p for i, p in enumerate(etcd.pids())}
        self.extra.setdefault("memory", {})["etcd_idle_rss_mb"] = kc.rss_mb(pids)
        return EtcdSide(etcd, pids)

    def etcd_level(self, side: EtcdSide, clients: int) -> None:
        res, smp = self.load(side.etcd.put_target(), clients, f"etcd put x{clients}", sampler_pids=side.pids)
        self.add("etcd", "insert", res, target="random", rss_mb=smp.max_rss_mb, cpu_percent=smp.cpu_percent,
                 machine=smp.load)

    # ---------------------------------------------------------------- output
    def ratios(self) -> list[dict]:
        out = []
        rows = {(r["system"], r["scenario"], r.get("clients")): r for r in self.results}
        for clients in self.o["clients"]:
            k, e = rows.get(("kalamdb", "insert", clients)), rows.get(("etcd", "insert", clients))
            if k and e and e["ops_per_s"]:
                out.append({"clients": clients, "throughput_ratio": round(k["ops_per_s"] / e["ops_per_s"], 3),
                            "p50_ratio": round(k["p50_ms"] / e["p50_ms"], 3) if e["p50_ms"] else None,
                            "p99_ratio": round(k["p99_ms"] / e["p99_ms"], 3) if e["p99_ms"] else None,
                            "cpu_ms_per_write": [cpu_ms_per_op(r) for r in (k, e)],
                            "machine_busy_percent": [r.get("machine", {}).get("machine_busy_percent", 0.0)
                                                     for r in (k, e)]})
        return out

    def print_table(self) -> None:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="kalamdb bench")
        for col in ("system", "scenario", "clients", "ops/s", "p50 ms", "p99 ms", "errors", "notes"):
            t.add_column(col, justify="right" if col not in ("system", "scenario", "notes") else "left")
        for r in self.results:
            notes = []
            if "lag" in r:
                lag = r["lag"]
                notes.append(f"lag p50 {lag['p50_ms']} p99 {lag['p99_ms']} ms (leader applied -> last follower "
                             f"applied, {lag['samples']} writes); probe's view p50 {lag['raw_p50_ms']} p99 "
                             f"{lag['raw_p99_ms']} ms, minus its /wait round trip p50 {lag['net_p50_ms']} p99 "
                             f"{lag['net_p99_ms']} ms")
            if "rows_per_request" in r:
                notes.append(f"{r['rows_per_request']} rows/request")
            if "seconds" in r:
                notes.append(f"caught up in {r['seconds']} s after {r['writes']} rows")
            if r.get("rss_mb"):
                notes.append("max RSS " + "/".join(f"{v:.0f}" for v in r["rss_mb"].values()) + " MB")
            if r.get("cpu_percent"):
                notes.append("CPU " + "/".join(f"{v:.0f}" for v in r["cpu_percent"].values()) + " %")
            if "runs" in r and "clients" not in r:
                notes.append(f"{r['runs']} run(s)")
            if r.get("failed_by_status"):
                notes.append("failed: " + ", ".join(f"{n} answered {'no answer' if st == '-1' else st}"
                                                    for st, n in r["failed_by_status"].items()))
            if r.get("leadership"):
                notes.append(_leadership_note(r["leadership"]))
            if r.get("machine"):
                m = r["machine"]
                notes.append(f"load {m['load_avg_1m']}, machine {m['machine_busy_percent']:.0f} % busy, "
                             f"client {m['client_cpu_percent']:.0f} % of a CPU")
            t.add_row(r["system"], r["scenario"], str(r.get("clients", "")),
                      f"{r['ops_per_s']:.0f}" if "ops_per_s" in r else "",
                      _fmt(r.get("p50_ms")), _fmt(r.get("p99_ms")), str(r.get("errors", "")), "; ".join(notes))
        console = Console()
        console.print(t)
        for m, v in self.extra.get("memory", {}).items():
            console.print(f"{m}: {v}")
        saturated = []
        for r in self.ratios():
            console.print(f"kalamdb/etcd at {r['clients']} clients: throughput x{r['throughput_ratio']}, "
                          f"p50 x{r['p50_ratio']}, p99 x{r['p99_ratio']}; CPU per write "
                          f"{r['cpu_ms_per_write'][0]} / {r['cpu_ms_per_write'][1]} ms; machine busy "
                          f"{r['machine_busy_percent'][0]:.0f} % (kalamdb) / {r['machine_busy_percent'][1]:.0f} % (etcd)")
            if max(r["machine_busy_percent"]) >= SATURATED_PERCENT:
                saturated.append(str(r["clients"]))
        moved = [f"{r['scenario']} x{r.get('clients', '')}" for r in self.results
                 if r.get("leadership") and not r["leadership"]["held"]]
        console.print("leadership changed during: " + ", ".join(moved) if moved else
                      "leadership held through every kalamdb level (same leader and term before and after)")
        if saturated:
            console.print(f"the machine was >= {SATURATED_PERCENT:.0f} % busy at {', '.join(saturated)} client(s): "
                          "there the ratios compare the systems competing for CPU with their client and whatever "
                          "else runs, not only their own cost per write")

    def document(self) -> dict:
        import psutil

        return {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                        "memory_mb": round(psutil.virtual_memory().total / (1 << 20)),
                        "load_avg": [round(x, 2) for x in os.getloadavg()]},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": {k: v for k, v in self.o.items() if k not in ("json_path", "plot_dir")},
            "results": self.results,
            "ratios": self.ratios(),
            **self.extra,
        }


def _leadership_note(held: dict) -> str:
    """The table's words for a level's `leadership` (bench/cluster.py `leadership_report`)."""
    b, a = held["before"], held["after"]
    said = (f"leader n{b['leader']} held term {b['term']}" if held["held"]
            else f"LEADERSHIP CHANGED: {_leader_view(b)} -> {_leader_view(a)}")
    rt = held.get("raft_thread")
    if rt is not None:
        worst = "" if rt["max_lateness_ms"] is None else f", worst {rt['max_lateness_ms']:.0f} ms"
        said += f" (Raft threads: {rt['late_ticks']} late ticks{worst})"
    return said


def _leader_view(view: dict) -> str:
    return f"n{view['leader']} term {view['term']}" if "leader" in view else f"no agreed leader {view['nodes']}"


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else ""


@click.command("bench")
@click.option("--clients", default="1,16,64", callback=_ints, show_default=True,
              help="comma-separated closed-loop client counts for the insert scenario")
@click.option("--duration", type=click.FloatRange(min=0.1), default=4.0, show_default=True,
              help="measured seconds per level")
@click.option("--warmup", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="unmeasured seconds before each level")
@click.option("--target", type=click.Choice(["random", "leader"]), default="random", show_default=True,
              help="send requests to random nodes (followers forward) or to the leader only")
@click.option("--scenarios", default="start,insert,batch,mixed,lag,failover,catchup,memory",
              callback=_scenarios, show_default=True, help=f"subset of {','.join(ALL_SCENARIOS)}")
@click.option("--rows-per-request", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--batch-clients", type=click.IntRange(1), default=16, show_default=True,
              help="closed-loop clients of the batch scenario")
@click.option("--read-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="share of point reads in the mixed scenario")
@click.option("--lag-clients", type=click.IntRange(1), default=64, show_default=True,
              help="load under which replication lag is measured")
@click.option("--failover-runs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--start-runs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--catchup-writes", type=click.IntRange(10), default=5000, show_default=True)
@click.option("--million/--no-million", default=False, show_default=True,
              help="memory after filling --million-rows rows (slow: minutes)")
@click.option("--million-rows", type=click.IntRange(1000), default=1_000_000, show_default=True)
@click.option("--heartbeat-ms", type=click.IntRange(1), default=50, show_default=True)
@click.option("--election-ms", default="150,300", show_default=True, callback=_ints,
              help="election timeout range lo,hi")
@click.option("--compare", type=click.Choice(["etcd"]), default=None, help="also run the same write load on etcd")
@click.option("--etcd-bin", default=None, help="etcd binary (default: etcd on PATH)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None)
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="write PNG charts here (needs matplotlib)")
@click.option("--profile-dir", type=click.Path(file_okay=False), default=None,
              help="run the kalamdb nodes under cProfile; one .pstats per node lands here")
@click.option("--seed", type=int, default=None, help="seed of the clients' random choices (printed)")
def bench_command(**opts: Any) -> None:
    """Benchmark a 3-node kalamdb cluster (and etcd with --compare etcd) on loopback."""
    if len(opts["election_ms"]) != 2 or opts["election_ms"][0] > opts["election_ms"][1]:
        raise click.BadParameter("--election-ms must be lo,hi with lo <= hi")
    opts["election_ms"] = tuple(opts["election_ms"])
    if opts["seed"] is None:
        opts["seed"] = int.from_bytes(os.urandom(4), "big")
    if opts["plot_dir"]:
        from kalamdb.bench.plot import require_matplotlib

        require_matplotlib()
    b = Bench(opts)
    b.console.print(f"seed {opts['seed']}")
    etcd = None
    try:
        if opts["compare"] == "etcd":
            etcd = b.start_etcd()
        b.run_kalamdb(etcd)
    finally:
        if etcd is not None:
            etcd.stop()
        b.print_table()
        doc = b.document()
        if opts["json_path"]:
            Path(opts["json_path"]).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            b.console.print(f"wrote {opts['json_path']}")
        if opts["plot_dir"]:
            from kalamdb.bench.plot import write_plots

            for p in write_plots(doc, Path(opts["plot_dir"])):
                b.console.print(f"wrote {p}")
