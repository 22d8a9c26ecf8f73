"""Alternating A/B runs on one machine: variants of the node environment (and etcd) take turns,
level by level, so that the machine's load hits them alike.

    python -m kalamdb.bench.ab --rounds 3 --clients 1,64 base: fast:KALAMDB_SOMETHING=1 etcd
    python -m kalamdb.bench.ab --interleave --rounds 12 --duration 2 --clients 1,64 base: fast:...

A variant is `NAME:ENV=VALUE,ENV2=VALUE2` (an empty env is the code as it is); `etcd` runs the same
load against a 3-node etcd. By default every round starts fresh clusters; each row prints every
round's figures with the load average at its start, and CPU per operation (sum of the nodes' CPU /
operations), the figure least moved by load.

With `--interleave` every variant's cluster is started once and stays up, and the rounds are short
slices taken in turn (the order reversed every round), so neighbouring slices see nearly the same
machine. Each variant after the first is then reported against the first as paired ratios with a
95 % confidence interval (kalamdb/bench/paired.py): a shared host drifts by more than most changes,
and only the pairs cancel that. The idle clusters cost every slice alike (heartbeats, a few per
cent of a core each).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kalamdb.bench import cluster as kc
from kalamdb.bench.load import Target, closed_loop, cpu_ms_per_op, new_session
from kalamdb.bench.paired import paired_ratio


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    env = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, env


def run_level(target: Target, clients: int, pids: dict[str, int], *, duration: float, warmup: float,
              ids: Any, rows: int) -> tuple[dict, float]:
    sampler = kc.ResourceSampler(pids)

    async def go() -> Any:
        async with new_session(clients + 4) as session:
            return await closed_loop(session, target, clients=clients, duration=duration, warmup=warmup,
                                     seed=1, op_counter=ids, ops_per_request=rows)

    with sampler:
        res = kc.run_async(go())
    return res.summary(), sum(sampler.cpu_percent.values())


@dataclass
class Side:
    """One variant's running cluster: where its load goes, which processes it costs, how it stops."""

    name: str
    target: Target
    pids: dict[str, int]
    stop: Callable[[], None]


def start_side(name: str, env: dict[str, str], *, target: str, rows: int) -> Side:
    if name == "etcd":
        from kalamdb.bench.etcd import EtcdCluster

        etcd = EtcdCluster().start()
        return Side(name, etcd.put_target(), {f"etcd{i}": p for i, p in enumerate(etcd.pids())}, etcd.stop)
    cluster = kc.start_kalamdb(extra_env=env)
    try:
        kc.create_table(cluster)
        cluster.wait_for_replication(timeout=10)
        urls = kc.node_urls(cluster, target)
        load_target = kc.insert_target(urls, kc.basic_auth(cluster.root_password), rows_per_request=rows)
        return Side(name, load_target, kc.kalamdb_pids(cluster), cluster.shutdown)
    except BaseException:
        cluster.shutdown()
        raise


def cpu_per_op_ms(summary: dict, cpu_percent: float) -> float:
    """The processes' CPU per operation of one run, in ms (a run with no operations counts as one)."""
    return cpu_ms_per_op(cpu_percent, max(1.0, summary["ops_per_s"]))


def interleave(a: argparse.Namespace, variants: list[tuple[str, dict[str, str]]], levels: list[int]) -> None:
    """Every variant's cluster up at once; short slices in turn; paired ratios against the first."""
    ids = itertools.count(1)
    opts = {"duration": a.duration, "warmup": a.warmup, "ids": ids, "rows": a.rows}
    slices: dict[tuple[str, int], list[tuple[dict, float]]] = {}
    with contextlib.ExitStack() as stack:
        sides = []
        for name, env in variants:
            print(f"starting {name}", flush=True)
            side = start_side(name, env, target=a.target, rows=a.rows)
            stack.callback(side.stop)
            sides.append(side)
        for rnd in range(a.rounds):
            order = sides if rnd % 2 == 0 else sides[::-1]
            for n in levels:
                for side in order:
                    slices.setdefault((side.name, n), []).append(run_level(side.target, n, side.pids, **opts))
            print(f"round {rnd + 1}/{a.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    base = variants[0][0]
    for n in levels:
        print(f"--- {n} client(s), {a.rounds} slices of {a.duration:g} s per variant")
        series = {name: {"throughput": [r["ops_per_s"] for r, _ in slices[(name, n)]],
                         "p50": [r["p50_ms"] for r, _ in slices[(name, n)]],
                         "CPU per op": [cpu_per_op_ms(r, c) for r, c in slices[(name, n)]]}
                  for name, _ in variants}
        for name, _ in variants:
            mine = series[name]
            line = (f"{name:>10}  median {statistics.median(mine['throughput']):7.0f}/s  "
                    f"p50 {statistics.median(mine['p50']):6.2f} ms  "
                    f"CPU per op {statistics.median(mine['CPU per op']):.3f} ms")
            if name != base and a.rounds >= 2:
                line += f"  | vs {base}: " + "  ".join(
                    f"{what} {paired_ratio(series[base][what], values)}" for what, values in mine.items())
            print(line)
            runs = slices[(name, n)]
            errors = sum(r["errors"] for r, _ in runs)
            if errors:
                print(f"{'':>10}  {errors} errors; one: {next(r['first_error'] for r, _ in runs if r['errors'])}")
    print("(ratios: geometric mean of the pairs [95 % confidence interval]; * = the interval excludes 1)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,64")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.7)
    ap.add_argument("--target", choices=["random", "leader"], default="random")
    ap.add_argument("--rows", type=int, default=1, help="rows per INSERT request")
    ap.add_argument("--interleave", action="store_true",
                    help="keep every variant's cluster up and alternate short slices; report paired ratios")
    ap.add_argument("variants", nargs="+")
    a = ap.parse_args(argv)
    levels = [int(x) for x in a.clients.split(",")]
    variants = [parse_variant(v) for v in a.variants]
    if a.interleave:
        interleave(a, variants, levels)
        return
    ids = itertools.count(1)
    results: dict[tuple[str, int], list[tuple[dict, float, float]]] = {}
    opts = {"duration": a.duration, "warmup": a.warmup, "ids": ids, "rows": a.rows}
    for rnd in range(a.rounds):
        for name, env in variants:
            load = os.getloadavg()[0]
            side = start_side(name, env, target=a.target, rows=a.rows)
            try:
                for n in levels:
                    summary, cpu = run_level(side.target, n, side.pids, **opts)
                    results.setdefault((name, n), []).append((summary, cpu, load))
            finally:
                side.stop()
        print(f"round {rnd + 1}/{a.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    for (name, n), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        figures = "  ".join(f"{r['ops_per_s']:7.0f}/s p50 {r['p50_ms']:6.2f} p99 {r['p99_ms']:6.1f} "
                            f"err {r['errors']} (load {ld:.1f})" for r, _, ld in runs)
        cpu_per_op = statistics.mean(cpu_per_op_ms(r, cpu) for r, cpu, _ in runs)
        print(f"{name:>10} x{n:<4} {figures}  | CPU per op {cpu_per_op:.3f} ms")
        for r, _, _ in runs:
            if r["errors"]:
                print(f"{'':>10} first error of a run with {r['errors']}: {r['first_error']}")


if __name__ == "__main__":
    main()
