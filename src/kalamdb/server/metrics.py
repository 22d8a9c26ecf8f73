"""Request and commit metrics in the Prometheus text format (`GET /metrics`, localhost only).

Counters are plain ints updated on the event loop (no locks); the exposition is built on demand.
The commit counters show group commit at work: commands per batch = commands / batches.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

# seconds; upper bounds of the latency histogram buckets
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class SqlMetrics:
    """Counts SQL requests by HTTP status and keeps a latency histogram."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.count = 0

    def observe(self, status: int, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.count += 1


def render(sql: SqlMetrics, stats: Mapping[str, int | float], *, applied_index: int) -> str:
    lines = [
        "# HELP kalamdb_sql_requests_total SQL requests answered, by HTTP status.",
        "# TYPE kalamdb_sql_requests_total counter",
    ]
    for status in sorted(sql.by_status):
        lines.append(f'kalamdb_sql_requests_total{{code="{status}"}} {sql.by_status[status]}')
    lines += [
        "# HELP kalamdb_sql_request_seconds Time to answer a SQL request.",
        "# TYPE kalamdb_sql_request_seconds histogram",
    ]
    cumulative = 0
    for bound, n in zip(BUCKETS, sql.bucket_counts, strict=False):
        cumulative += n
        lines.append(f'kalamdb_sql_request_seconds_bucket{{le="{bound}"}} {cumulative}')
    lines.append(f'kalamdb_sql_request_seconds_bucket{{le="+Inf"}} {sql.count}')
    lines.append(f"kalamdb_sql_request_seconds_sum {sql.latency_sum:.6f}")
    lines.append(f"kalamdb_sql_request_seconds_count {sql.count}")
    lines += [
        "# HELP kalamdb_applied_index Highest log index applied to this node's state.",
        "# TYPE kalamdb_applied_index gauge",
        f"kalamdb_applied_index {applied_index}",
    ]
    for name, value in sorted(stats.items()):
        kind = "counter" if name.endswith("_total") else "gauge"
        lines.append(f"# TYPE kalamdb_{name} {kind}")
        lines.append(f"kalamdb_{name} {value}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """Sample name (with labels) -> value; for tests and benchmarks reading /metrics."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
