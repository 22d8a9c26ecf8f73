"""The closed-loop HTTP load generator shared by every system the bench measures.

kalamdb and etcd are driven by this same code (aiohttp, one JSON POST per operation, N clients each
sending its next request when the previous one is answered), so their figures differ only by the
server. A `Target` says how to build one request; the loop measures, the target only describes.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

CDF_QUANTILES = [round(i / 100, 2) for i in range(1, 100)] + [0.995, 0.999]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def cpu_ms_per_op(cpu_percent: float, ops_per_s: float) -> float:
    """CPU spent per operation in ms, from processes' summed CPU share over a run (100 = one core
    busy) and the run's operations per second."""
    return cpu_percent * 10 / ops_per_s


@dataclass
class Request:
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Target:
    """How one system takes an operation: `make(op_number, rng) -> Request`; `ok(status, body)`.

    `on_answer` (optional) sees every successful answer with its send/receive times, e.g. to pick
    up a write's Raft index for the replication-lag probe.
    """

    name: str
    make: Callable[[int, random.Random], Request]
    ok: Callable[[int, bytes], bool] = lambda status, body: status == 200
    on_answer: Callable[[bytes, float, float], None] | None = None


@dataclass
class LoadResult:
    clients: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    ops_per_request: int = 1
    #: failed answers by HTTP status ("-1": no answer at all), e.g. {"429": 22} for load shed
    failed_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return len(self.latencies_s) * self.ops_per_request / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_s
        return {
            "clients": self.clients,
            "ops_per_s": round(self.ops_per_s, 1),
            "requests": len(lat),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
            "p90_ms": round(percentile(lat, 0.90) * 1000, 3),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
            "max_ms": round(lat[-1] * 1000, 3) if lat else math.nan,
            "errors": self.errors,
            "failed_by_status": dict(sorted(self.failed_by_status.items())),
            "first_error": self.first_error,
            # the latency distribution, for CDF plots: [quantile, ms] at 1% steps plus the tail
            "cdf_ms": [[q, round(percentile(lat, q) * 1000, 3)] for q in CDF_QUANTILES] if lat else [],
        }


async def closed_loop(session: Any, target: Target, *, clients: int, duration: float, warmup: float,
                      seed: int, op_counter: Any, on_tick: Callable[[float], None] | None = None,
                      ops_per_request: int = 1, max_errors: int = 1000) -> LoadResult:
    """Run `clients` closed-loop clients for warmup+duration seconds; only the last `duration` counts."""
    result = LoadResult(clients=clients, duration_s=duration, ops_per_request=ops_per_request)
    lat = result.latencies_s
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    stop = False

    async def client(i: int) -> None:
        nonlocal stop
        rng = random.Random(seed * 1_000_003 + i)
        while not stop:
            req = target.make(next(op_counter), rng)
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                async with session.post(req.url, data=req.body, headers=req.headers) as resp:
                    body = await resp.read()
                    status = resp.status
            except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
                status, body = -1, repr(exc).encode()
            t1 = time.perf_counter()
            if not target.ok(status, body):
                result.errors += 1
                result.failed_by_status[str(status)] = result.failed_by_status.get(str(status), 0) + 1
                if result.first_error is None:
                    result.first_error = f"HTTP {status}: {body[:300].decode(errors='replace')}"
                if result.errors >= max_errors:
                    stop = True
                continue
            if t0 >= measure_from:
                lat.append(t1 - t0)
            if target.on_answer is not None:
                target.on_answer(body, t0, t1)

    async def ticker(on_tick: Callable[[float], None]) -> None:
        while not stop:
            now = time.perf_counter()
            if now >= stop_at:
                return
            on_tick(min(1.0, (now - start) / (stop_at - start)))
            await asyncio.sleep(0.2)  # progress bar refresh period, not a wait for state

    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    tick = asyncio.ensure_future(ticker(on_tick)) if on_tick is not None else None
    try:
        await asyncio.gather(*tasks)
    finally:
        stop = True
        if tick is not None:
            await tick
    lat.sort()
    return result


def json_ok(status: int, body: bytes) -> bool:
    """kalamdb's answer: HTTP 200 and status success."""
    if status != 200:
        return False
    if b'"status":"success"' in body[:64]:  # the server's compact JSON: no parse on the client's CPU
        return True
    try:
        return orjson.loads(body).get("status") == "success"
    except orjson.JSONDecodeError:
        return False


def new_session(clients: int, timeout_s: float = 30.0) -> Any:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(1, clients) + 8, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))
