"""The node-local system views every node has from its own state (not replicated, never in the
digest): system.stats, settings, server_logs, transactions, sessions, datatypes, columns, live,
cluster, cluster_groups and information_schema.columns, with upstream KalamDB's columns.

The node layer replaces some of them with richer ones (a Raft node registers its own
system.cluster / cluster_groups, the live-query service its system.live); what is installed here
is what a node without those parts shows: a single node that is its own one-voter group."""

from __future__ import annotations

import collections
import logging
import os
import platform
import resource
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from kalamdb.engine import limits

if TYPE_CHECKING:
    from kalamdb.engine.database import Database

MAX_CONNECTIONS = 1024  # shown in system.stats: the default of limits.max_connections_per_address
SERVER_LOG_ROWS = 1000  # server_logs keeps this many of the newest records (this node's, since start)

STATS = [("metric_name", "TEXT"), ("metric_value", "TEXT")]
SETTINGS = [("name", "TEXT"), ("value", "TEXT"), ("description", "TEXT"), ("category", "TEXT")]
SERVER_LOGS = [("timestamp", "TEXT"), ("level", "TEXT"), ("thread", "TEXT"), ("target", "TEXT"),
               ("line", "INT"), ("message", "TEXT")]
TRANSACTIONS = [("transaction_id", "TEXT"), ("owner_id", "TEXT"), ("origin", "TEXT"), ("state", "TEXT"),
                ("age_ms", "BIGINT"), ("idle_ms", "BIGINT"), ("write_count", "BIGINT"), ("write_bytes", "BIGINT"),
                ("touched_tables_count", "BIGINT"), ("snapshot_commit_seq", "BIGINT")]
SESSIONS = [("session_id", "TEXT"), ("backend_pid", "BIGINT"), ("current_schema", "TEXT"), ("state", "TEXT"),
            ("transaction_id", "TEXT"), ("transaction_state", "TEXT"), ("transaction_has_writes", "BOOLEAN"),
            ("client_addr", "TEXT"), ("transport", "TEXT"), ("opened_at", "TIMESTAMP"),
            ("last_seen_at", "TIMESTAMP"), ("last_method", "TEXT")]
DATATYPES = [("arrow_type", "TEXT"), ("kalam_type", "TEXT"), ("sql_name", "TEXT"), ("description", "TEXT")]
COLUMNS = [("namespace_id", "TEXT"), ("table_name", "TEXT"), ("version", "INT"), ("column_id", "BIGINT"),
           ("column_name", "TEXT"), ("comment", "TEXT"), ("data_type", "TEXT"), ("default_value", "TEXT"),
           ("ordinal", "INT"), ("nullable", "BOOLEAN"), ("primary_key", "BOOLEAN"), ("primary_key_pos", "INT")]
LIVE = [("live_id", "TEXT"), ("connection_id", "TEXT"), ("subscription_id", "TEXT"), ("namespace_id", "TEXT"),
        ("table_name", "TEXT"), ("user_id", "TEXT"), ("query", "TEXT"), ("options", "TEXT"), ("status", "TEXT"),
        ("created_at", "TIMESTAMP"), ("last_update", "TIMESTAMP"), ("changes", "BIGINT"), ("node_id", "TEXT"),
        ("last_ping_at", "TIMESTAMP")]
CLUSTER = [("cluster_id", "TEXT"), ("node_id", "BIGINT"), ("role", "TEXT"), ("status", "TEXT"),
           ("rpc_addr", "TEXT"), ("api_addr", "TEXT"), ("is_self", "BOOLEAN"), ("is_leader", "BOOLEAN"),
           ("groups_leading", "INT"), ("total_groups", "INT"), ("current_term", "BIGINT"),
           ("last_applied_log", "BIGINT"), ("leader_last_log_index", "BIGINT"), ("snapshot_index", "BIGINT"),
           ("catchup_progress_pct", "SMALLINT"), ("replication_lag", "BIGINT"), ("hostname", "TEXT"),
           ("version", "TEXT"), ("memory_mb", "BIGINT"), ("memory_usage_mb", "BIGINT"),
           ("cpu_usage_percent", "FLOAT"), ("uptime_seconds", "BIGINT"), ("uptime_human", "TEXT"), ("os", "TEXT"),
           ("arch", "TEXT")]
CLUSTER_GROUPS = [("group_id", "TEXT"), ("cluster_id", "TEXT"), ("node_id", "BIGINT"), ("group_type", "TEXT"),
                  ("current_term", "BIGINT"), ("vote", "JSON"), ("last_log_index", "BIGINT"),
                  ("last_applied", "BIGINT"), ("snapshot", "BIGINT"), ("purged", "BIGINT"),
                  ("committed", "BIGINT"), ("state", "TEXT"), ("current_leader", "BIGINT"),
                  ("millis_since_quorum_ack", "BIGINT")]
INFO_COLUMNS = [("table_catalog", "TEXT"), ("table_schema", "TEXT"), ("table_name", "TEXT"),
                ("column_name", "TEXT"), ("ordinal_position", "BIGINT"), ("column_default", "TEXT"),
                ("is_nullable", "TEXT"), ("data_type", "TEXT")]

# (arrow type, kalam type, SQL name, description) of the types kalamdb stores
DATATYPE_ROWS = [
    ("Boolean", "Boolean", "BOOLEAN", "True/false boolean value"),
    ("Int16", "SmallInt", "SMALLINT", "16-bit signed integer"),
    ("Int32", "Int", "INT", "32-bit signed integer"),
    ("Int64", "BigInt", "BIGINT", "64-bit signed integer"),
    ("Float32", "Float", "FLOAT", "32-bit floating point"),
    ("Float64", "Double", "DOUBLE", "64-bit floating point"),
    ("Utf8", "Text", "TEXT", "Variable-length UTF-8 string"),
    ("Binary", "Bytes", "BYTES", "Variable-length binary data"),
    ("Timestamp(Microsecond, None)", "Timestamp", "TIMESTAMP", "Timestamp with microsecond precision"),
    ("Date32", "Date", "DATE", "Date (days since epoch)"),
    ("Time64(Microsecond)", "Time", "TIME", "Time of day with microsecond precision"),
    ("Utf8", "Json", "JSON", "JSON document stored as text"),
    ("FixedSizeBinary(16)", "Uuid", "UUID", "128-bit universally unique identifier"),
    ("Decimal128", "Decimal", "DECIMAL", "Fixed-point decimal number"),
    ("FixedSizeList(Float32)", "Embedding", "EMBEDDING", "Fixed-size vector of 32-bit floats"),
    ("Utf8", "File", "FILE", "Reference to a stored file (JSON metadata)"),
]

SETTINGS_ROWS = [
    ("limits.max_sql_bytes", str(limits.MAX_SQL_BYTES), "Largest SQL text of one request", "limits"),
    ("limits.max_params", str(limits.MAX_PARAMS), "Most parameters of one request", "limits"),
    ("limits.max_param_bytes", str(limits.MAX_PARAM_BYTES), "Largest single parameter", "limits"),
    ("limits.max_in_list_items", str(limits.MAX_IN_LIST_ITEMS), "Most items of one IN (...) list", "limits"),
    ("limits.max_value_bytes", str(limits.MAX_VALUE_BYTES), "Largest stored cell", "limits"),
    ("limits.max_write_rows", str(limits.MAX_WRITE_ROWS), "Most rows one write statement may change", "limits"),
    ("limits.write_step_budget", str(limits.WRITE_STEP_BUDGET), "SQLite VM steps of one write statement",
     "limits"),
    ("limits.read_seconds_budget", str(limits.READ_SECONDS_BUDGET), "Seconds one read statement may run",
     "limits"),
    ("limits.max_result_rows", str(limits.MAX_RESULT_ROWS), "Most rows of one read result", "limits"),
    ("limits.max_result_bytes", str(limits.MAX_RESULT_BYTES), "Largest read result", "limits"),
]


class LogRing(logging.Handler):
    """The newest SERVER_LOG_ROWS log records of this process (system.server_logs)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: collections.deque = collections.deque(maxlen=SERVER_LOG_ROWS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
            self.records.append((ts, record.levelname, record.threadName, record.name, record.lineno,
                                 record.getMessage()[:4096]))
        except Exception:  # noqa: BLE001, S110 - logging must never fail the caller
            pass


_ring_lock = threading.Lock()
_ring: LogRing | None = None


def log_ring() -> LogRing:
    global _ring
    with _ring_lock:
        if _ring is None:
            _ring = LogRing()
            logging.getLogger("kalamdb").addHandler(_ring)
        return _ring


class CpuMeter:
    """This process's CPU use (user + system) since the previous reading, 100 = one core busy, as
    psutil's `cpu_percent(None)` counts it. Read from the interpreter's own clocks: a node does not
    load psutil, which was 0.8 MB of its idle RSS (docs/PERFORMANCE.md)."""

    def __init__(self) -> None:
        self._cpu, self._wall = time.process_time(), time.monotonic()

    def percent(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        elapsed = wall - self._wall
        used = (cpu - self._cpu) / elapsed * 100 if elapsed > 0 else 0.0
        self._cpu, self._wall = cpu, wall
        return round(used, 1)


_CPU = CpuMeter()


def uptime_human(seconds: int) -> str:
    """'1d 2h 3m 4s', as upstream's uptime_human column."""
    d, rem = divmod(seconds, 86_400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h}h {m}m {s}s"


def process_cpu_percent() -> float:
    """This process's CPU use since the previous call (100 = one core busy)."""
    return _CPU.percent()


def rss_bytes() -> int:
    """This process's resident memory now (/proc), or its peak where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _rss_mb() -> int:
    return rss_bytes() // (1 << 20)


def install(db: Database) -> None:
    """Register the default node-local views on `db` (the node layer may replace some)."""
    started = time.time()
    ring = log_ring()

    def stats() -> list[tuple]:
        cat = db.published_catalog
        conn, _ = db.reader()
        users = conn.execute("SELECT COUNT(*) FROM _kdb_users WHERE deleted_at IS NULL").fetchone()[0]
        jobs = conn.execute("SELECT COUNT(*) FROM _kdb_jobs WHERE status IN ('new', 'queued', 'running')").fetchone()[0]
        return [(k, str(v)) for k, v in [
            ("total_namespaces", len(cat.namespaces)), ("total_tables", len(cat.tables)), ("total_users", users),
            ("active_jobs", jobs), ("applied_index", db.applied_index), ("server_version", _version()),
            ("schema_registry_size", len(cat.tables)), ("schema_cache_size", db.compile_cache_size),
            ("server_workers_effective", os.cpu_count() or 1), ("max_connections", MAX_CONNECTIONS),
            ("uptime_seconds", int(time.time() - started)), ("memory_usage_mb", _rss_mb()),
            ("parse_cache_hits", db.parse_cache.hits), ("parse_cache_misses", db.parse_cache.misses),
        ]]

    def columns() -> list[tuple]:
        out = []
        for (ns, name), info in sorted(db.published_catalog.tables.items()):
            for i, c in enumerate(info.columns, 1):
                default = None
                if c.default is not None:
                    default = f"{c.default['fn']}()" if "fn" in c.default else repr(c.default.get("lit"))
                pk = c.name == info.primary_key
                out.append((ns, name, info.schema_version, i, c.name, None, c.sql_type, default, i,
                            not c.not_null, pk, 1 if pk else None))
        return out

    def cluster() -> list[tuple]:
        up = int(time.time() - started)
        return [("kalamdb-standalone", db.node_id, "leader", "active", None, None, True, True, 1, 1, 1,
                 db.applied_index, db.applied_index, 0, 100, 0, socket.gethostname(), _version(), _rss_mb(),
                 _rss_mb(), process_cpu_percent(), up, uptime_human(up), platform.system().lower(), platform.machine())]

    def cluster_groups() -> list[tuple]:
        i = db.applied_index
        return [("meta", "kalamdb-standalone", db.node_id, "meta", 1, None, i, i, None, None, i, "Leader",
                 db.node_id, 0)]

    def information_columns() -> list[tuple]:
        out: list[tuple] = []
        for name, view_types in db.system_columns().items():
            schema, table = name.split(".", 1)
            for i, (col, typ) in enumerate(view_types, 1):
                out.append(("kalam", schema, table, col, i, None, "YES", typ))
        for (ns, name), info in sorted(db.published_catalog.tables.items()):
            cols = [(c.name, c.sql_type, not c.not_null, c.default) for c in info.columns]
            cols += [("_seq", "BIGINT", False, None), ("_deleted", "BOOLEAN", False, {"lit": False})]
            for i, (col, typ, nullable, default) in enumerate(cols, 1):
                shown: str | None = None
                if default is not None:
                    shown = f"{default['fn']}()" if "fn" in default else repr(default.get("lit"))
                out.append(("kalam", ns, name, col, i, shown, "YES" if nullable else "NO", typ))
        return out

    db.register_system_table("stats", STATS, stats)
    db.register_system_table("settings", SETTINGS, lambda: SETTINGS_ROWS)
    db.register_system_table("server_logs", SERVER_LOGS, lambda: list(ring.records))
    db.register_system_table("transactions", TRANSACTIONS, list)
    db.register_system_table("sessions", SESSIONS, list)
    db.register_system_table("datatypes", DATATYPES, lambda: DATATYPE_ROWS)
    db.register_system_table("columns", COLUMNS, columns)
    db.register_system_table("live", LIVE, list)
    db.register_system_table("cluster", CLUSTER, cluster)
    db.register_system_table("cluster_groups", CLUSTER_GROUPS, cluster_groups)
    db.register_local_view("information_schema.columns", INFO_COLUMNS, information_columns)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kalamdb")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source checkout)
        return "0.0.0"
