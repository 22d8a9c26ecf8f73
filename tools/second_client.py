#!/usr/bin/env python3
"""A second, independent write-load client for kalamdb next to etcd (issue 12's cross-check).

`kalamdb bench` measures with the project's own load code; a ratio it reports could be an artefact
of that code. This script shares nothing with it: it imports no kalamdb module, drives both systems
with one aiohttp client on uvloop, starts kalamdb the way a user does (`kalamdb cluster up`) and
etcd with its own command line, and alternates rounds between the two systems so that a change in
the machine's load hits both. Every request is one durable single-row write to a random member:
kalamdb `INSERT` through `POST /v1/api/sql` (Bearer token from `/v1/api/auth/login`), etcd
`POST /v3/kv/put` through its JSON gateway.

    python tools/second_client.py --clients 1,64 --duration 4 --rounds 3

prints one line per (round, system, clients) and, at the end, the medians and the kalamdb/etcd
ratios (p50 latency at the lowest client count, throughput at the highest).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a kalamdb dependency, but the client runs without it
    uvloop = None


@dataclass
class Round:
    system: str
    clients: int
    writes: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)

    @property
    def throughput(self) -> float:
        return self.writes / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it when this script dies, however it dies."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url: str, timeout: float, ok=lambda status: status == 200) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout}s ({last})")


class Kalamdb:
    """`kalamdb cluster up --nodes 3` in its own process group; three HTTP URLs."""

    name = "kalamdb"

    def __init__(self, root: Path, kalamdb_bin: str):
        port = free_block(3)
        self.urls = [f"http://127.0.0.1:{port + i}" for i in range(3)]
        env = {**os.environ, "KALAMDB_ALLOW_EMPTY_ROOT": "1"}
        self.log = open(root / "kalamdb.log", "wb")  # noqa: SIM115 - lives as long as the cluster
        self.proc = subprocess.Popen([kalamdb_bin, "cluster", "up", "--nodes", "3", "--data-dir",
                                      str(root / "kalamdb"), "--base-port", str(port), "--log-level", "warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, process_group=0,
                                     preexec_fn=die_with_parent)  # noqa: PLW1509 - started before any thread
        for u in self.urls:
            wait_http(u + "/v1/api/healthcheck", 60)
        self.token = ""

    async def prepare(self, session: aiohttp.ClientSession) -> None:
        async with session.post(self.urls[0] + "/v1/api/auth/login",
                                json={"username": "root", "password": ""}) as r:
            body = await r.json()
            assert r.status == 200, body
            self.token = body["access_token"]
        await self._sql(session, self.urls[0], "CREATE NAMESPACE IF NOT EXISTS second")
        await self._sql(session, self.urls[0], "CREATE SHARED TABLE IF NOT EXISTS second.kv "
                                              "(id BIGINT PRIMARY KEY, v TEXT)")

    async def _sql(self, session: aiohttp.ClientSession, url: str, sql: str, params: list | None = None) -> bool:
        body: dict = {"sql": sql}
        if params is not None:
            body["params"] = params
        async with session.post(url + "/v1/api/sql", json=body,
                                headers={"Authorization": f"Bearer {self.token}"}) as r:
            await r.read()
            return r.status == 200

    async def write(self, session: aiohttp.ClientSession, key: int) -> bool:
        return await self._sql(session, random.choice(self.urls),
                               "INSERT INTO second.kv (id, v) VALUES ($1, $2)", [key, "x" * 32])

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


class Etcd:
    """Three etcd members with their own data directories (fsync on, as etcd always does)."""

    name = "etcd"

    def __init__(self, root: Path, etcd_bin: str):
        ports = free_ports(6)
        peers = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(3)]
        self.urls = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)]
        initial = ",".join(f"e{i}={p}" for i, p in enumerate(peers))
        self.procs = []
        self.log = open(root / "etcd.log", "wb")  # noqa: SIM115 - lives as long as the cluster
        for i in range(3):
            self.procs.append(subprocess.Popen(
                [etcd_bin, "--name", f"e{i}", "--data-dir", str(root / f"etcd{i}"),
                 "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                 "--listen-client-urls", self.urls[i], "--advertise-client-urls", self.urls[i],
                 "--initial-cluster", initial, "--initial-cluster-state", "new", "--log-level", "error",
                 "--logger", "zap"], stdout=self.log, stderr=subprocess.STDOUT, process_group=0,
                preexec_fn=die_with_parent))  # noqa: PLW1509 - started before any thread
        for u in self.urls:
            wait_http(u + "/health", 60)

    async def prepare(self, session: aiohttp.ClientSession) -> None:
        assert await self.write(session, 0), "etcd's /v3/kv/put gateway did not accept a write"

    async def write(self, session: aiohttp.ClientSession, key: int) -> bool:
        body = {"key": base64.b64encode(f"k{key}".encode()).decode(),
                "value": base64.b64encode(b"x" * 32).decode()}
        async with session.post(random.choice(self.urls) + "/v3/kv/put", json=body) as r:
            await r.read()
            return r.status == 200

    def stop(self) -> None:
        for p in self.procs:
            stop_group(p)
        self.log.close()


def free_block(n: int) -> int:
    """A base port with n free consecutive ports (and their RPC block at +1108)."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        try:
            socks = []
            for p in [base + i for i in range(n)] + [base + 1108 + i for i in range(n)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no free block of ports")


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


async def run_round(system, clients: int, duration: float, keys: list[int]) -> Round:
    """`clients` closed loops, each with its own connection, for `duration` seconds."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def loop(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            keys[0] += 1
            t0 = time.perf_counter()
            ok = await system.write(session, keys[0])
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(session) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    return Round(system.name, clients, len(latencies), errors, seconds, latencies)


async def main_async(args: argparse.Namespace, systems: list) -> list[Round]:
    async with aiohttp.ClientSession() as session:
        for s in systems:
            await s.prepare(session)
    keys = [random.randrange(1 << 40)]
    results: list[Round] = []
    for rnd in range(1, args.rounds + 1):
        order = systems if rnd % 2 else systems[::-1]  # alternate who goes first
        for system in order:
            for clients in args.clients:
                r = await run_round(system, clients, args.duration, keys)
                results.append(r)
                print(f"round {rnd} {r.system:8} clients {clients:3}: {r.throughput:8.0f} writes/s  "
                      f"p50 {r.pct(0.5):6.2f} ms  p99 {r.pct(0.99):6.2f} ms  errors {r.errors}  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    return results


def summarize(results: list[Round], clients: list[int]) -> None:
    def med(system: str, n: int, f) -> float:
        return statistics.median(f(r) for r in results if r.system == system and r.clients == n)

    print("\nmedians over rounds")
    for n in clients:
        k_p50, e_p50 = med("kalamdb", n, lambda r: r.pct(0.5)), med("etcd", n, lambda r: r.pct(0.5))
        k_tp, e_tp = med("kalamdb", n, Round.throughput.fget), med("etcd", n, Round.throughput.fget)
        print(f"clients {n:3}: kalamdb {k_tp:7.0f}/s p50 {k_p50:6.2f} ms | etcd {e_tp:7.0f}/s p50 {e_p50:6.2f} ms"
              f" | p50 x{k_p50 / e_p50:.2f}, throughput x{k_tp / e_tp:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kalamdb-bin", default=shutil.which("kalamdb") or str(Path(sys.executable).parent / "kalamdb"))
    ap.add_argument("--etcd-bin", default=shutil.which("etcd") or "/usr/bin/etcd")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    random.seed(seed)
    print(f"seed {seed}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    if not Path(args.etcd_bin).exists():
        raise SystemExit(f"etcd not found at {args.etcd_bin}: apt-get install etcd-server (or --etcd-bin)")
    root = Path(tempfile.mkdtemp(prefix="second-client-"))
    systems: list = []
    try:
        systems.append(Kalamdb(root, args.kalamdb_bin))
        systems.append(Etcd(root, args.etcd_bin))
        if uvloop is not None:
            uvloop.install()
        results = asyncio.run(main_async(args, systems))
        summarize(results, args.clients)
    finally:
        for s in systems:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
