"""Alternating A/B runs on one machine: variants of the node environment (and etcd) take turns on
fresh 3-node clusters, level by level, so that the machine's load hits them alike.

    python -m kalamdb.bench.ab --rounds 3 --clients 1,64 base: fast:KALAMDB_SOMETHING=1 etcd

A variant is `NAME:ENV=VALUE,ENV2=VALUE2` (an empty env is the code as it is); `etcd` runs the same
load against a 3-node etcd. Each row prints every round's figures with the load average at its
start, and CPU per operation (sum of the nodes' CPU / operations), the figure least moved by load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
from typing import Any

from kalamdb.bench import cluster as kc
from kalamdb.bench.load import Target, closed_loop, new_session


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="1,64")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.7)
    ap.add_argument("--target", choices=["random", "leader"], default="random")
    ap.add_argument("--rows", type=int, default=1, help="rows per INSERT request")
    ap.add_argument("variants", nargs="+")
    a = ap.parse_args(argv)
    levels = [int(x) for x in a.clients.split(",")]
    variants = [parse_variant(v) for v in a.variants]
    ids = itertools.count(1)
    results: dict[tuple[str, int], list[tuple[dict, float, float]]] = {}
    opts = {"duration": a.duration, "warmup": a.warmup, "ids": ids, "rows": a.rows}
    for rnd in range(a.rounds):
        for name, env in variants:
            load = os.getloadavg()[0]
            if name == "etcd":
                from kalamdb.bench.etcd import EtcdCluster

                with EtcdCluster().start() as etcd:
                    pids = {f"etcd{i}": p for i, p in enumerate(etcd.pids())}
                    for n in levels:
                        summary, cpu = run_level(etcd.put_target(), n, pids, **opts)
                        results.setdefault((name, n), []).append((summary, cpu, load))
                continue
            cluster = kc.start_kalamdb(extra_env=env)
            try:
                kc.create_table(cluster)
                cluster.wait_for_replication(timeout=10)
                urls = kc.node_urls(cluster, a.target)
                pids = kc.kalamdb_pids(cluster)
                target = kc.insert_target(urls, kc.basic_auth(cluster.root_password), rows_per_request=a.rows)
                for n in levels:
                    summary, cpu = run_level(target, n, pids, **opts)
                    results.setdefault((name, n), []).append((summary, cpu, load))
            finally:
                cluster.shutdown()
        print(f"round {rnd + 1}/{a.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    for (name, n), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        figures = "  ".join(f"{r['ops_per_s']:7.0f}/s p50 {r['p50_ms']:6.2f} p99 {r['p99_ms']:6.1f} "
                            f"err {r['errors']} (load {ld:.1f})" for r, _, ld in runs)
        cpu_per_op = statistics.mean(cpu * 10 / max(1.0, r["ops_per_s"]) for r, cpu, _ in runs)
        print(f"{name:>10} x{n:<4} {figures}  | CPU per op {cpu_per_op:.3f} ms")
        for r, _, _ in runs:
            if r["errors"]:
                print(f"{'':>10} first error of a run with {r['errors']}: {r['first_error']}")


if __name__ == "__main__":
    main()
