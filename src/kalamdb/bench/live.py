"""Live-query benchmarks on a real 3-node cluster (issue 13's speed targets):

    python -m kalamdb.bench.live latency  [--writes 500]
        one subscriber on a follower, writes through another node, one at a time:
        insert -> notification latency (p50, p99), via the leader and via the other follower;
    python -m kalamdb.bench.live writes   [--subs-per-node 1000 --rounds 3]
        the write benchmark (16 clients, another table) alternating without / with the
        subscriptions open (idle), medians;
    python -m kalamdb.bench.live cpu      [--writes 600 --subs-per-conn 10]
        CPU per notification on one standalone node (100 connections x 10 subscriptions): the
        node's and the subscribers' CPU time per notification, and the same writes without any;
    python -m kalamdb.bench.live fanout   [--subs-per-node 1000 --rate 100 --duration 20]
        N subscriptions per node on one table (100 users x 10, 10 per connection), writes at a fixed
        rate: every notification counted, latency from the write's `_seq` time to arrival, node RSS;
        then the write benchmark (16 closed-loop clients, another table) with and without them open.

The subscribers run in their own process (bench/live_subscribers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import time
from typing import Any

import orjson

from kalamdb.bench.live_subscribers import TABLE, SubscriberProcess, pct, subscribers_main

WRITE_TABLE = "bench.items"
USER_PASSWORD = "bench-live-pw"


def _cluster() -> Any:
    from kalamdb.bench.cluster import start_kalamdb

    return start_kalamdb(log_level="warn")


def _setup(cluster: Any, users: int) -> list[str]:
    from kalamdb.bench.cluster import create_table

    create_table(cluster)
    for sql in ("CREATE NAMESPACE IF NOT EXISTS benchlive",
                (f"CREATE SHARED TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, body TEXT) "
                "WITH (ACCESS_LEVEL = 'PUBLIC')")):
        cluster.execute_sql_on_leader(sql).raise_for_error()
    names = [f"blive{i}" for i in range(users)]
    for name in names:
        cluster.execute_sql_on_leader(f"CREATE USER {name} WITH PASSWORD '{USER_PASSWORD}' ROLE user").raise_for_error()
    cluster.wait_for_replication(timeout=60)
    return names


def _tokens(url: str, names: list[str]) -> list[str]:
    from kalamdb.client import Client

    out = []
    with Client(url, user=None, password=None) as c:
        for name in names:
            resp = c.login(name, USER_PASSWORD)
            if not resp.ok:
                raise RuntimeError(f"login {name}: {resp}")
            out.append(resp["access_token"])
    return out


def latency(writes: int) -> dict:
    """Insert -> notification on a follower, writes through the leader and through the other follower."""
    from kalamdb.client import AsyncClient
    from kalamdb.live.client import LiveSubscription

    cluster = _cluster()
    try:
        _setup(cluster, 0)
        leader = cluster.leader()
        followers = cluster.followers()
        sub_node, other = followers[0], followers[1]

        async def run() -> dict:
            out = {}
            async with LiveSubscription(sub_node.url, f"SELECT * FROM {TABLE}", user="root",
                                        password=cluster.root_password, initial_data=False) as sub:
                events = aiter(sub)
                assert (await anext(events))["type"] == "subscription_ack"
                ids = itertools.count(1)
                for label, via in (("via leader", leader), ("via the other follower", other)):
                    async with AsyncClient(via.url, password=cluster.root_password) as db:
                        lat, acked = [], []
                        for _ in range(writes):
                            k = next(ids)
                            t0 = time.perf_counter()
                            resp = await db.sql(f"INSERT INTO {TABLE} (id, body) VALUES ($1, 'x')", [k])
                            if not resp.ok:
                                raise RuntimeError(resp)
                            acked.append((time.perf_counter() - t0) * 1000)
                            while True:
                                ev = await anext(events)
                                if ev["type"] == "change" and ev["rows"][0]["id"] == str(k):
                                    break
                            lat.append((time.perf_counter() - t0) * 1000)
                    out[label] = {"writes": writes, "p50_ms": round(pct(lat, 0.5), 2),
                                  "p99_ms": round(pct(lat, 0.99), 2), "max_ms": round(max(lat), 2),
                                  "write_answer_p50_ms": round(pct(acked, 0.5), 2),
                                  "write_answer_p99_ms": round(pct(acked, 0.99), 2)}
            return out

        return asyncio.run(run())
    finally:
        cluster.shutdown()


def fanout(subs_per_node: int, rate: float, duration: float, write_clients: int, write_s: float) -> dict:
    from kalamdb.bench.cluster import basic_auth, insert_target, kalamdb_pids, rss_mb, run_async
    from kalamdb.bench.load import closed_loop, new_session

    subs_per_conn = 10  # upstream: at most 10 subscriptions per user (per node)
    users = max(1, subs_per_node // subs_per_conn)
    cluster = _cluster()
    proc = None
    try:
        names = _setup(cluster, users)
        urls = [n.url for n in cluster.nodes]
        tokens = _tokens(urls[0], names)
        pids = kalamdb_pids(cluster)
        auth = basic_auth(cluster.root_password)
        counter = itertools.count(10_000_000)

        def write_bench() -> float:
            async def go() -> float:
                target = insert_target([n.url for n in cluster.nodes], auth)
                async with new_session(write_clients) as session:
                    res = await closed_loop(session, target, clients=write_clients, duration=write_s, warmup=1.0,
                                            seed=1, op_counter=counter)
                return res.ops_per_s
            return run_async(go())

        without = [write_bench()]
        rss_before = rss_mb(pids)
        proc = SubscriberProcess(urls, tokens, subs_per_conn)
        ready = proc.ready
        rss_open = rss_mb(pids)

        async def paced_writes() -> dict:
            from kalamdb.client import AsyncClient

            n = int(rate * duration)
            async with AsyncClient(cluster.leader().url, password=cluster.root_password) as db:
                start = time.perf_counter()
                tasks = []
                for i in range(n):
                    delay = start + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the offered load's schedule (open loop)
                    tasks.append(asyncio.ensure_future(db.sql(f"INSERT INTO {TABLE} (id, body) VALUES ($1, 'x')",
                                                              [i])))
                results = await asyncio.gather(*tasks)
            return {"writes": n, "ok": sum(1 for r in results if r.ok),
                    "achieved_per_s": round(n / (time.perf_counter() - start), 1)}

        wrote = asyncio.run(paced_writes())
        expected = wrote["ok"] * ready["subscriptions"]
        deadline = time.monotonic() + 60
        frames = 0
        while time.monotonic() < deadline:
            frames = proc.ask("count")["frames"]
            if frames >= expected:
                break
            time.sleep(0.5)  # polling the subscriber process's counter, bounded by the deadline
        final = proc.ask("stats")
        rss_after = rss_mb(pids)
        proc.ask("reset")
        with_subs = write_bench()  # A/B: without (before), with, without (after closing them)
        proc.stop()
        without.append(write_bench())
        return {
            "subscriptions_per_node": ready["subscriptions"] // len(urls), "connections": ready["ready"],
            "rate_per_s": rate, "duration_s": duration, **wrote,
            "notifications_expected": expected, "notifications_received": frames,
            "latency_p50_ms": round(final["p50_ms"], 1), "latency_p99_ms": round(final["p99_ms"], 1),
            "latency_max_ms": final["max_ms"],
            "rss_mb_before": rss_before, "rss_mb_subscribed": rss_open, "rss_mb_after_writes": rss_after,
            "write_bench_ops_per_s_without": [round(w, 1) for w in without],
            "write_bench_ops_per_s_with": round(with_subs, 1),
            "write_bench_ratio_with_vs_without": round(with_subs / (sum(without) / len(without)), 3),
        }
    finally:
        if proc is not None:
            proc.kill()
        cluster.shutdown()


def cpu(writes: int, subs_per_conn: int) -> dict:
    """CPU per notification: one standalone node, 100 connections x `subs_per_conn` subscriptions,
    `writes` sequential inserts; the node's and the subscriber process's CPU time divided by the
    notifications delivered (CPU time, unlike wall time, hardly depends on the machine's load)."""
    import psutil

    from kalamdb.client import AsyncClient
    from kalamdb.testing.single import start_server

    srv = start_server()
    proc = None
    try:
        srv.sql("CREATE NAMESPACE benchlive").raise_for_error()
        srv.sql(f"CREATE SHARED TABLE {TABLE} (id BIGINT PRIMARY KEY, body TEXT) "
                "WITH (ACCESS_LEVEL = 'PUBLIC')").raise_for_error()
        names = [f"blive{i}" for i in range(100)]
        for name in names:
            srv.sql(f"CREATE USER {name} WITH PASSWORD '{USER_PASSWORD}' ROLE user").raise_for_error()
        tokens = _tokens(srv.url, names)
        proc = SubscriberProcess([srv.url], tokens, subs_per_conn)
        ready = proc.ready
        node, subs = psutil.Process(srv.pid), psutil.Process(proc.pid)
        n0, s0, t0 = node.cpu_times(), subs.cpu_times(), time.perf_counter()

        async def write() -> None:
            async with AsyncClient(srv.url) as db:
                for i in range(writes):
                    (await db.sql(f"INSERT INTO {TABLE} (id, body) VALUES ($1, 'x')", [i])).raise_for_error()

        asyncio.run(write())
        want = writes * ready["subscriptions"]
        deadline = time.monotonic() + 120
        frames = 0
        while frames < want and time.monotonic() < deadline:
            frames = proc.ask("count")["frames"]
            if frames < want:
                time.sleep(0.2)  # polling the subscriber process's counter, bounded by the deadline
        wall = time.perf_counter() - t0
        n1, s1 = node.cpu_times(), subs.cpu_times()
        st = proc.ask("stats")
        node_cpu = (n1.user + n1.system) - (n0.user + n0.system)
        sub_cpu = (s1.user + s1.system) - (s0.user + s0.system)
        return {"writes": writes, "subscriptions": ready["subscriptions"], "notifications": frames,
                "expected": want, "wall_s": round(wall, 2), "node_cpu_s": round(node_cpu, 2),
                "node_us_per_notification": round(node_cpu / max(frames, 1) * 1e6, 2),
                "subscriber_us_per_notification": round(sub_cpu / max(frames, 1) * 1e6, 2),
                "latency_p50_ms": round(st["p50_ms"], 1), "latency_p99_ms": round(st["p99_ms"], 1)}
    finally:
        if proc is not None:
            proc.kill()
        srv.close()


def writes_ab(subs_per_node: int, rounds: int, write_clients: int, write_s: float) -> dict:
    """The write benchmark (closed-loop inserts into another table) alternating without and with
    `subs_per_node` idle subscriptions open on every node; medians of each."""
    from kalamdb.bench.cluster import basic_auth, insert_target, run_async
    from kalamdb.bench.load import closed_loop, new_session

    subs_per_conn = 10
    cluster = _cluster()
    try:
        names = _setup(cluster, max(1, subs_per_node // subs_per_conn))
        urls = [n.url for n in cluster.nodes]
        tokens = _tokens(urls[0], names)
        auth = basic_auth(cluster.root_password)
        counter = itertools.count(10_000_000)

        import psutil

        from kalamdb.bench.cluster import kalamdb_pids

        procs = [psutil.Process(pid) for pid in kalamdb_pids(cluster).values()]
        cpu_per_write: dict[str, list[float]] = {"without": [], "with": []}

        def bench(label: str = "without") -> float:
            async def go() -> Any:
                target = insert_target(urls, auth)
                async with new_session(write_clients) as session:
                    return await closed_loop(session, target, clients=write_clients, duration=write_s, warmup=1.0,
                                             seed=1, op_counter=counter)

            before = sum(sum(p.cpu_times()[:2]) for p in procs)
            res = run_async(go())
            used = sum(sum(p.cpu_times()[:2]) for p in procs) - before
            # CPU of the three nodes per answered write (the warm-up's writes included in both)
            cpu_per_write[label].append(used / max(1, len(res.latencies_s) + res.errors) * 1e6)
            return res.ops_per_s

        without, with_subs = [], []
        for _ in range(rounds):
            without.append(bench())
            proc = SubscriberProcess(urls, tokens, subs_per_conn)
            try:
                opened = proc.ready["subscriptions"]
                with_subs.append(bench("with"))
            finally:
                proc.stop()
        med = lambda xs: sorted(xs)[len(xs) // 2]
        return {"subscriptions_open": opened, "rounds": rounds, "ops_per_s_without": [round(x, 1) for x in without],
                "ops_per_s_with": [round(x, 1) for x in with_subs],
                "median_ratio_with_vs_without": round(med(with_subs) / med(without), 3),
                "node_cpu_us_per_write_without": [round(x) for x in cpu_per_write["without"]],
                "node_cpu_us_per_write_with": [round(x) for x in cpu_per_write["with"]]}
    finally:
        cluster.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kalamdb.bench.live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_lat = sub.add_parser("latency")
    p_lat.add_argument("--writes", type=int, default=500)
    p_fan = sub.add_parser("fanout")
    p_fan.add_argument("--subs-per-node", type=int, default=1000)
    p_fan.add_argument("--rate", type=float, default=100.0)
    p_fan.add_argument("--duration", type=float, default=20.0)
    p_fan.add_argument("--write-clients", type=int, default=16)
    p_fan.add_argument("--write-seconds", type=float, default=8.0)
    p_cpu = sub.add_parser("cpu")
    p_cpu.add_argument("--writes", type=int, default=600)
    p_cpu.add_argument("--subs-per-conn", type=int, default=10)
    p_ab = sub.add_parser("writes")
    p_ab.add_argument("--subs-per-node", type=int, default=1000)
    p_ab.add_argument("--rounds", type=int, default=3)
    p_ab.add_argument("--write-clients", type=int, default=16)
    p_ab.add_argument("--write-seconds", type=float, default=6.0)
    p_sub = sub.add_parser("_subscribers")
    p_sub.add_argument("spec")
    args = parser.parse_args(argv)
    if args.what == "_subscribers":
        asyncio.run(subscribers_main(json.loads(args.spec)))
        return
    random.seed(0)
    load = os.getloadavg()
    if args.what == "latency":
        out = latency(args.writes)
    elif args.what == "writes":
        out = writes_ab(args.subs_per_node, args.rounds, args.write_clients, args.write_seconds)
    elif args.what == "cpu":
        out = {"with": cpu(args.writes, args.subs_per_conn), "without (same writes, no subscription)": cpu(args.writes, 0)}
    else:
        out = fanout(args.subs_per_node, args.rate, args.duration, args.write_clients, args.write_seconds)
    print(orjson.dumps({"bench": args.what, "loadavg_before": [round(x, 2) for x in load],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()], **out},
                       option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
