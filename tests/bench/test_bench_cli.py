"""Smoke tests of `kalamdb bench`: tiny real runs (3 real node processes) write a valid report.

They check that each scenario produces its figures and that bad options fail clearly; they do not
judge speed (the machine is shared; numbers live in the report, not in assertions)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from click.testing import CliRunner

from kalamdb.bench.cli import bench_command, cpu_ms_per_op
from kalamdb.bench.cluster import lateness_report, leadership_report
from kalamdb.bench.load import Request, Target, closed_loop, percentile

SEED = "1234"


def run_bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "out.json"
    result = CliRunner().invoke(bench_command, [*args, "--seed", SEED, "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, f"bench failed (seed {SEED}): {result.output}"
    return json.loads(out.read_text())


def rows(doc: dict, system: str, scenario: str) -> list[dict]:
    return [r for r in doc["results"] if r["system"] == system and r["scenario"] == scenario]


def test_percentile_is_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 99.0
    assert math.isnan(percentile([], 0.5))


@pytest.mark.parametrize("args, message", [
    (["--clients", "1,x"], "comma-separated integers"),
    (["--clients", "0"], ">= 1"),
    (["--scenarios", "insert,nope"], "unknown scenario"),
    (["--election-ms", "300,150"], "lo <= hi"),
])
def test_bad_options_fail_with_a_clear_message(args, message):
    result = CliRunner().invoke(bench_command, args)
    assert result.exit_code != 0
    assert message in result.output


def test_insert_lag_and_batch_write_a_valid_report(tmp_path):
    doc = run_bench(tmp_path, "--scenarios", "insert,batch,lag,mixed", "--clients", "1,4", "--duration", "0.6",
                    "--warmup", "0.1", "--rows-per-request", "10", "--lag-clients", "4", "--batch-clients", "2")
    assert doc["machine"]["cpus"] >= 1
    inserts = {r["clients"]: r for r in rows(doc, "kalamdb", "insert")}
    assert set(inserts) == {1, 4}
    for r in inserts.values():
        assert r["errors"] == 0, r["first_error"]
        assert r["ops_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert set(r["rss_mb"]) == {"node1", "node2", "node3"}
        machine = r["machine"]  # how loaded the machine was, so a reader can trust the figures
        assert machine["load_avg_1m"] >= 0 and 0 < machine["machine_busy_percent"] <= 100
        assert 0 < machine["client_cpu_percent"] <= 100 * doc["machine"]["cpus"]
    (batch,) = rows(doc, "kalamdb", "batch")
    assert batch["rows_per_request"] == 10 and batch["ops_per_s"] >= 10 * batch["requests"] / 0.6 * 0.99
    (lag,) = rows(doc, "kalamdb", "replication_lag")
    assert lag["lag"]["samples"] > 0 and lag["lag"]["errors"] == 0
    assert 0 <= lag["lag"]["net_p50_ms"] <= lag["lag"]["raw_p50_ms"]
    # the nodes' own apply times: a follower applies after the leader committed, and within the
    # probe's view of it (ack -> the follower's answer, which also holds the leader's apply -> ack)
    assert 0 <= lag["lag"]["p50_ms"] <= lag["lag"]["p99_ms"] <= lag["lag"]["raw_p99_ms"] + 50
    assert len(doc["lag_over_time"]) == lag["lag"]["samples"]
    (mixed,) = rows(doc, "kalamdb", "mixed")
    assert mixed["errors"] == 0, mixed["first_error"]
    for r in [*inserts.values(), batch, lag, mixed]:  # each level says whether it cost the leader
        held = r["leadership"]
        assert held["held"] and held["before"] == held["after"], held
        assert held["before"]["leader"] in (1, 2, 3) and held["before"]["term"] >= 1
        assert r["failed_by_status"] == {}
        raft = held["raft_thread"]  # read from every node's /metrics before and after the level
        assert raft["late_ticks"] >= 0 and (raft["max_lateness_ms"] is None or raft["max_lateness_ms"] >= 0)


def test_leadership_held_only_with_one_agreed_leader_and_the_same_term():
    same = {1: (3, 2), 2: (3, 2), 3: (3, 2)}
    assert leadership_report(same, dict(same)) == {"held": True, "before": {"term": 3, "leader": 2},
                                                   "after": {"term": 3, "leader": 2}}
    # the same node re-elected in a later term is still an election the load caused
    assert not leadership_report(same, {1: (4, 2), 2: (4, 2), 3: (4, 2)})["held"]
    assert not leadership_report(same, {1: (4, 1), 2: (4, 1), 3: (4, 1)})["held"]
    split = leadership_report(same, {1: (3, 2), 2: (3, 2), 3: None})  # a node did not answer
    assert not split["held"] and split["after"]["nodes"]["3"] is None
    assert not leadership_report({1: (1, 0), 2: (1, 0)}, {1: (1, 0), 2: (1, 0)})["held"]  # no leader


def test_raft_thread_lateness_counts_a_levels_late_ticks_and_its_own_worst_only():
    before = {1: (2.0, 0.050), 2: (0.0, 0.010), 3: (1.0, 0.200)}
    after = {1: (5.0, 0.090), 2: (0.0, 0.030), 3: (1.0, 0.200)}
    # 3 late ticks on node 1; node 3's 200 ms was before the level, so the level's worst is 90 ms
    report = lateness_report(before, after)
    assert (report["late_ticks"], report["max_lateness_ms"]) == (3, 90.0)
    assert report["nodes"] == {"1": {"late_ticks": 3, "max_lateness_ms": 90.0},
                               "2": {"late_ticks": 0, "max_lateness_ms": 30.0},
                               "3": {"late_ticks": 0, "max_lateness_ms": None}}
    quiet = lateness_report(before, dict(before))
    assert (quiet["late_ticks"], quiet["max_lateness_ms"]) == (0, None)
    # a node that did not answer is left out, not counted as zero
    missing = lateness_report(before, {**after, 1: None})
    assert (missing["late_ticks"], missing["max_lateness_ms"], set(missing["nodes"])) == (0, 30.0, {"2", "3"})


async def test_failed_answers_are_counted_by_status():
    import aiohttp
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        n = int(await request.text())
        return web.Response(status=429 if n % 3 == 0 else 503 if n % 3 == 1 else 200, text="{}")

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    target = Target("t", lambda n, rng: Request(f"http://127.0.0.1:{port}/", str(n).encode(), {}))
    try:
        async with aiohttp.ClientSession() as session:
            res = await closed_loop(session, target, clients=1, duration=0.3, warmup=0.0, seed=1,
                                    op_counter=iter(range(10**9)))
    finally:
        await runner.cleanup()
    by_status = res.summary()["failed_by_status"]
    assert set(by_status) == {"429", "503"} and sum(by_status.values()) == res.errors > 0
    assert abs(by_status["429"] - by_status["503"]) <= 1  # every third is a 429, every third a 503


def test_failover_start_catchup_and_fill_report_their_figures(tmp_path):
    doc = run_bench(tmp_path, "--scenarios", "start,failover,catchup,memory", "--start-runs", "1",
                    "--failover-runs", "1", "--catchup-writes", "200", "--million", "--million-rows", "2000")
    filled = doc["memory"]["kalamdb_after_rows"]
    assert filled["rows"] == 2000 and set(filled["rss_mb"]) == {"node1", "node2", "node3"}
    (start,) = rows(doc, "kalamdb", "start")
    assert start["runs"] == 1 and start["p50_ms"] > 0
    (failover,) = rows(doc, "kalamdb", "failover")
    assert failover["runs"] == 1 and 0 < failover["p50_ms"] < 20_000
    for scenario, via_snapshot in (("catchup_log", False), ("catchup_snapshot", True)):
        (c,) = rows(doc, "kalamdb", scenario)
        assert c["index"] > 0 and c["seconds"] > 0
        assert c["via_snapshot"] is via_snapshot, c


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed (apt-get install etcd-server)")
def test_compare_etcd_runs_the_same_load_and_prints_ratios(tmp_path):
    doc = run_bench(tmp_path, "--compare", "etcd", "--scenarios", "insert", "--clients", "1,2",
                    "--duration", "0.5", "--warmup", "0.1")
    # the levels take turns, the first system alternating, so that a drifting machine hits both alike
    order = [(r["system"], r["clients"]) for r in doc["results"] if r["scenario"] == "insert"]
    assert order == [("etcd", 1), ("kalamdb", 1), ("kalamdb", 2), ("etcd", 2)], order
    etcd = next(r for r in rows(doc, "etcd", "insert") if r["clients"] == 2)
    kdb = next(r for r in rows(doc, "kalamdb", "insert") if r["clients"] == 2)
    assert etcd["errors"] == 0 and kdb["errors"] == 0
    assert etcd["ops_per_s"] > 0
    ratio = next(r for r in doc["ratios"] if r["clients"] == 2)
    assert [r["clients"] for r in doc["ratios"]] == [1, 2]
    assert ratio["throughput_ratio"] == pytest.approx(kdb["ops_per_s"] / etcd["ops_per_s"], rel=1e-2)
    assert ratio["machine_busy_percent"] == [kdb["machine"]["machine_busy_percent"],
                                             etcd["machine"]["machine_busy_percent"]]
    # CPU per write of each system: its processes' CPU over the level, over its writes
    assert ratio["cpu_ms_per_write"] == [cpu_ms_per_op(kdb), cpu_ms_per_op(etcd)]
    assert all(v is not None and v > 0 for v in ratio["cpu_ms_per_write"])
    assert doc["etcd_version"]


def test_cpu_per_operation_is_the_processes_cpu_share_over_the_operations():
    assert cpu_ms_per_op({"cpu_percent": {"n1": 50.0, "n2": 30.0, "n3": 20.0}, "ops_per_s": 1000.0}) == 1.0
    assert cpu_ms_per_op({"cpu_percent": {"n1": 40.0}, "ops_per_s": 200.0}) == 2.0
    assert cpu_ms_per_op({"cpu_percent": {}, "ops_per_s": 10.0}) is None
    assert cpu_ms_per_op({"cpu_percent": {"n1": 10.0}, "ops_per_s": 0}) is None


def test_plot_without_matplotlib_says_how_to_install(tmp_path):
    try:
        import matplotlib  # noqa: F401
        pytest.skip("matplotlib is installed here")
    except ImportError:
        pass
    result = CliRunner().invoke(bench_command, ["--plot", str(tmp_path / "plots")])
    assert result.exit_code != 0
    assert "pip install matplotlib" in result.output


def test_profile_dir_gets_one_cprofile_dump_per_node(tmp_path):
    import pstats

    prof = tmp_path / "prof"
    run_bench(tmp_path, "--scenarios", "insert", "--clients", "2", "--duration", "0.3", "--warmup", "0",
              "--profile-dir", str(prof))
    dumps = sorted(prof.glob("node*.pstats"))
    assert [p.name.split("-")[0] for p in dumps] == ["node1", "node2", "node3"]
    stats = pstats.Stats(str(dumps[0]))
    assert stats.total_calls > 0
