"""Single-node write benchmark: one-row INSERT per HTTP request, N concurrent clients, real server.

    python -m kalamdb.bench.single_node --clients 1,64 --duration 5

Starts a server process (unless --url is given), creates a SHARED table, then for each client count
runs closed-loop clients (each sends its next INSERT when the previous one is acknowledged) and
reports acknowledged inserts/s and latency percentiles. Every acknowledged insert was fsynced.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import sys
import time

import orjson

from kalamdb.server import metrics

INSERT_SQL = "INSERT INTO {table} (id, body) VALUES ($1, $2)"


def fsync_p50_ms(directory: str, samples: int = 50) -> float:
    """This disk's fsync latency right now: the floor under every acknowledged write."""
    import os
    import tempfile

    fd, path = tempfile.mkstemp(dir=directory, prefix=".fsync-probe-")
    try:
        times = []
        for _ in range(samples):
            os.write(fd, b"x" * 128)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return percentile(times, 0.5) * 1000


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def run_level(url: str, auth: str, table: str, clients: int, duration: float, ids: itertools.count,
                    warmup: float) -> dict:
    import aiohttp

    headers = {"Authorization": auth, "Content-Type": "application/json"}
    sql = INSERT_SQL.format(table=table)
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                body = orjson.dumps({"sql": sql, "params": [next(ids), "x" * 32]})
                async with session.post(url + "/v1/api/sql", data=body, headers=headers) as resp:
                    payload = await resp.read()
                t1 = time.perf_counter()
                if resp.status != 200:
                    errors.append(payload[:200].decode(errors="replace"))
                    if len(errors) > 100:
                        return
                elif t0 >= measure_from:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(worker() for _ in range(clients)))
    latencies.sort()
    return {
        "clients": clients,
        "inserts_per_s": len(latencies) / duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "acked": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


async def setup_table(url: str, auth: str, table: str) -> None:
    import aiohttp

    ns = table.split(".")[0]
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for sql in (f"CREATE NAMESPACE IF NOT EXISTS {ns}",
                    f"CREATE SHARED TABLE {table} (id BIGINT PRIMARY KEY, body TEXT)"):
            async with session.post(url + "/v1/api/sql", data=orjson.dumps({"sql": sql}), headers=headers) as r:
                answer = orjson.loads(await r.read())
                if answer.get("status") != "success":
                    raise SystemExit(f"setup failed: {sql}: {answer.get('error')}")


def cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU of the server process and its threads (None if unknown)."""
    if pid is None:
        return None
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def commit_counters(url: str) -> tuple[float, float] | None:
    """(batches, commands) from the server's /metrics, or None if it does not offer them."""
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    try:
        values = metrics.parse(text)
        return values["kalamdb_commit_batches_total"], values["kalamdb_commit_commands_total"]
    except (KeyError, ValueError):  # not kalamdb's /metrics
        return None


async def main_async(args: argparse.Namespace) -> list[dict]:
    auth = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    table = f"bench_{int(time.time())}.items"
    await setup_table(args.url, auth, table)
    ids = itertools.count(1)
    out = []
    for clients in args.clients:
        cpu0, n0, m0 = cpu_seconds(args.server_pid), next(ids), await commit_counters(args.url)
        result = await run_level(args.url, auth, table, clients, args.duration, ids, args.warmup)
        cpu1, n1, m1 = cpu_seconds(args.server_pid), next(ids), await commit_counters(args.url)
        batches = m1[0] - m0[0] if m0 and m1 else 0
        result["writes_per_fsync"] = (m1[1] - m0[1]) / batches if m0 and m1 and batches else None
        # server CPU per request: comparable across runs even when the machine is busy
        result["server_cpu_us"] = ((cpu1 - cpu0) / max(1, n1 - n0 - 1) * 1e6) if cpu0 is not None and cpu1 is not None else None
        out.append(result)
    return out


class BareHttpServer:
    """The bare_http ceiling as a child process (started and always killed by the benchmark)."""

    def __init__(self) -> None:
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="kalamdb-bare-")
        port_file = os.path.join(self._dir, "port")
        from kalamdb import lifeline

        self.proc = lifeline.spawn([sys.executable, "-m", "kalamdb.bench.bare_http", "--port-file", port_file])
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit("the bare HTTP baseline server did not start")
            time.sleep(0.01)  # polling an external process's port file, bounded by the deadline
        with open(port_file) as fh:
            self.url = f"http://127.0.0.1:{int(fh.read())}"

    def close(self) -> None:
        import shutil

        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


async def run_baseline(url: str, levels: list[int], duration: float, warmup: float) -> list[dict]:
    ids = itertools.count(1)
    return [await run_level(url, "none", "bare.items", c, duration, ids, warmup) for c in levels]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,64", help="comma-separated concurrency levels (default 1,64)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per level")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring, per level")
    p.add_argument("--url", help="benchmark this running server instead of starting one")
    p.add_argument("--user", default="root")
    p.add_argument("--password", default="")
    p.add_argument("--baseline", action="store_true",
                   help="also measure a bare aiohttp JSON endpoint in the same run and print the ratio")
    args = p.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error("--clients must be comma-separated integers, e.g. 1,64")
    if not args.clients or min(args.clients) < 1 or args.duration <= 0:
        p.error("--clients must be >= 1 and --duration > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    fsync_ms = None
    args.server_pid = None
    if args.url is None:
        from kalamdb.testing.single import start_server

        server = start_server(log_level="warn")
        args.url = server.url
        args.server_pid = server.pid
        fsync_ms = fsync_p50_ms(str(server.data_dir))
    try:
        try:
            import uvloop

            results = uvloop.run(main_async(args))
        except ImportError:
            results = asyncio.run(main_async(args))
    finally:
        if server is not None:
            server.close()
    baseline = None
    if args.baseline:
        bare = BareHttpServer()
        try:
            import uvloop

            baseline = uvloop.run(run_baseline(bare.url, args.clients, args.duration, args.warmup))
        finally:
            bare.close()
    if fsync_ms is not None:
        print(f"fsync p50 on the data dir's disk: {fsync_ms:.3f} ms")
    print(f"{'clients':>8} {'inserts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} "
          f"{'server CPU us/insert':>21} {'writes/fsync':>13}")
    for r in results:
        cpu = f"{r['server_cpu_us']:.0f}" if r["server_cpu_us"] is not None else "-"
        per_fsync = f"{r['writes_per_fsync']:.1f}" if r["writes_per_fsync"] is not None else "-"
        print(f"{r['clients']:>8} {r['inserts_per_s']:>10.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['max_ms']:>8.2f} {r['errors']:>7} {cpu:>21} {per_fsync:>13}")
        if r["first_error"]:
            print(f"         first error: {r['first_error']}", file=sys.stderr)
    if baseline is not None:
        print("bare aiohttp+uvloop JSON endpoint, same client, same run (no auth, no SQL, no disk):")
        for r, b in zip(results, baseline, strict=True):
            ratio = r["inserts_per_s"] / b["inserts_per_s"] if b["inserts_per_s"] else float("nan")
            print(f"{b['clients']:>8} {b['inserts_per_s']:>10.0f} req/s  p50 {b['p50_ms']:.3f} ms  "
                  f"-> kalamdb inserts reach {ratio:.0%} of bare HTTP throughput")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
