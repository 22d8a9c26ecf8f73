"""Topics: upstream KalamDB's durable change-feed topics with consumer groups and offsets, built on
the engine's one ordered change feed (engine/changes.py).

- A topic has partitions and routes ("table T, operation O, payload mode M"). While a command is
  applied, every row change of a routed table becomes a message in `_kdb_topic_messages`, in the
  same transaction as the change itself, at the next offset of its partition (`_kdb_topic_partitions`
  holds the counters, so offsets are never reused, even after CLEAR TOPIC). Offsets, payloads and
  timestamps come from the command (its log index, its clock), so every replica holds byte-for-byte
  the same messages, and any node can serve any consumer.
- A consumer group's committed offset (`_kdb_topic_offsets`) is written only by ACK and by SQL
  `CONSUME ... GROUP` (which commits what it returns, as upstream), both replicated commands: a
  group's position survives restarts and failover and is the same on every node.
- Delivery is at-least-once. The HTTP consume endpoint does not commit; it records node-local
  *claims* (ClaimBook) so that concurrent polls of one group on one node get different messages,
  and a claim that is not acknowledged within CLAIM_TIMEOUT_S is handed out again (upstream's
  visibility timeout). Claims are node-local on purpose: making them replicated would put a log
  entry on every poll, and losing them (a restart, a poll on another node) can only cause a
  redelivery from the committed offset, never a loss.
- Retention (upstream: 7 days, 1 GiB per topic): messages older than the topic's retention_seconds
  (by the command clock) and beyond MAX_PARTITION_MESSAGES per partition are pruned while
  publishing, at fixed offsets, so replicas prune identically.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from kalamdb.engine import catalog as cat
from kalamdb.engine import storage, users
from kalamdb.engine.types import ADMIN_ROLES, ExecContext, Principal, message
from kalamdb.errors import KalamError
from kalamdb.sql import topics as tsql
from kalamdb.sql.types import encode_cell

if TYPE_CHECKING:
    from kalamdb.engine.changes import Change
    from kalamdb.engine.database import Database

CLAIM_TIMEOUT_S = 60.0
DEFAULT_CONSUME_LIMIT = 100
MAX_CONSUME_LIMIT = 1000
DEFAULT_RETENTION_S = 7 * 24 * 3600
DEFAULT_RETENTION_BYTES = 1024 * 1024 * 1024
MAX_PARTITION_MESSAGES = 1_000_000
PRUNE_EVERY = 1024  # a partition is pruned when its next offset crosses a multiple of this
MAX_TOPICS = 1024
MAX_ROUTES = 256
CONSUMER_ROLES = ("service", "dba", "system")

SCHEMA_SQL = [
    """CREATE TABLE IF NOT EXISTS _kdb_topics (topic_id TEXT PRIMARY KEY, name TEXT NOT NULL, alias TEXT,
        partitions INTEGER NOT NULL, retention_seconds INTEGER, retention_max_bytes INTEGER,
        routes TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS _kdb_topic_partitions (topic_id TEXT NOT NULL, partition_id INTEGER NOT NULL,
        next_offset INTEGER NOT NULL, PRIMARY KEY (topic_id, partition_id)) STRICT""",
    """CREATE TABLE IF NOT EXISTS _kdb_topic_messages (topic_id TEXT NOT NULL, partition_id INTEGER NOT NULL,
        off INTEGER NOT NULL, key TEXT, payload BLOB NOT NULL, timestamp_ms INTEGER NOT NULL, user_id TEXT,
        op TEXT NOT NULL, PRIMARY KEY (topic_id, partition_id, off)) STRICT""",
    """CREATE TABLE IF NOT EXISTS _kdb_topic_offsets (topic_id TEXT NOT NULL, group_id TEXT NOT NULL,
        partition_id INTEGER NOT NULL, last_acked_offset INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        PRIMARY KEY (topic_id, group_id, partition_id)) STRICT""",
    """CREATE VIEW IF NOT EXISTS "system.topics" AS SELECT topic_id, name, alias, partitions, retention_seconds,
        retention_max_bytes, routes, created_at, updated_at FROM _kdb_topics""",
    """CREATE VIEW IF NOT EXISTS "system.topic_offsets" AS SELECT topic_id, group_id, partition_id,
        last_acked_offset, updated_at FROM _kdb_topic_offsets""",
]

# the two system views, registered with the catalog (column types for encoding; the catalog tables
# each view's body may read, for the authorizer)
cat.SYSTEM_VIEWS["topics"] = {
    "topic_id": "Text", "name": "Text", "alias": "Text", "partitions": "Int", "retention_seconds": "BigInt",
    "retention_max_bytes": "BigInt", "routes": "Json", "created_at": "Timestamp", "updated_at": "Timestamp"}
cat.SYSTEM_VIEWS["topic_offsets"] = {
    "topic_id": "Text", "group_id": "Text", "partition_id": "Int", "last_acked_offset": "BigInt",
    "updated_at": "Timestamp"}
cat.SYSTEM_VIEW_BASES["system.topics"] = frozenset({"_kdb_topics"})
cat.SYSTEM_VIEW_BASES["system.topic_offsets"] = frozenset({"_kdb_topic_offsets"})

_OP_NAMES = {"insert": "Insert", "update": "Update", "delete": "Delete"}
CONSUME_SCHEMA = [("topic_id", "Text"), ("partition_id", "Int"), ("offset", "BigInt"), ("key", "Text"),
                  ("payload", "Bytes"), ("timestamp_ms", "BigInt"), ("user_id", "Text"), ("op", "Text")]
ACK_SCHEMA = [("topic", "Text"), ("group_id", "Text"), ("partition", "Int"), ("committed_offset", "BigInt")]


def ensure_schema(conn) -> None:
    """The topic tables and views (created on every replica identically, at load)."""
    for sql in SCHEMA_SQL:
        conn.execute(sql)


# ------------------------------------------------------------------------------------ node state


@dataclass(frozen=True, slots=True)
class Route:
    topic_id: str
    partitions: int
    op: str
    payload_mode: str


class ClaimBook:
    """Node-local claims of one (topic, group, partition): a cursor and the ranges handed out and
    not yet acknowledged, each with the (monotonic) time it was handed out."""

    def __init__(self, timeout_s: float = CLAIM_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._cursors: dict[tuple, list] = {}  # key -> [cursor, [(start, end_exclusive, claimed_at), ...]]
        self._locks: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def lock(self, key: tuple) -> threading.Lock:
        with self._lock:
            lk = self._locks.get(key)
            if lk is None:
                if len(self._locks) > 100_000:  # bounded: forget idle groups (claims are only a hint)
                    self._locks.clear()
                    self._cursors.clear()
                lk = self._locks[key] = threading.Lock()
            return lk

    def window(self, key: tuple, start: int, committed_next: int | None, limit: int,
               now: float | None = None) -> tuple[int, int]:
        """(first offset, how many) this poll may take; call with `lock(key)` held."""
        now = time.monotonic() if now is None else now
        state = self._cursors.get(key)
        if state is None:
            state = self._cursors[key] = [start, []]
        cursor, pending = state
        floor = committed_next if committed_next is not None else 0
        pending[:] = [p for p in pending if p[1] > floor]  # acknowledged ranges are done
        expired = [p for p in pending if now - p[2] > self.timeout_s]
        if expired:
            pending[:] = [p for p in pending if now - p[2] <= self.timeout_s]
            cursor = min(cursor, min(p[0] for p in expired))  # hand the unacknowledged out again
        if committed_next is not None:
            cursor = max(cursor, committed_next)
        nxt = cursor
        moved = True
        while moved:
            moved = False
            for s, e, _ in pending:
                if s <= nxt < e:
                    nxt, moved = e, True
        later = [s for s, _, _ in pending if s > nxt]
        avail = min(limit, min(later) - nxt) if later else limit
        state[0] = cursor
        return nxt, avail

    def claim(self, key: tuple, first: int, last: int, now: float | None = None) -> None:
        state = self._cursors[key]
        state[1].append((first, last + 1, time.monotonic() if now is None else now))
        state[0] = max(state[0], last + 1)


class TopicState:
    """What a node keeps about topics in memory: the routes by source table (the writer's, reloaded
    with the catalog) and the HTTP consumers' claims."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[Route, ...]] = {}
        self.claims = ClaimBook()

    def reload(self, conn) -> None:
        routes: dict[str, list[Route]] = {}
        for topic_id, partitions, routes_json in conn.execute(
                "SELECT topic_id, partitions, routes FROM _kdb_topics ORDER BY topic_id"):
            for r in json.loads(routes_json):
                routes.setdefault(r["table_id"], []).append(Route(topic_id, partitions, r["op"], r["payload_mode"]))
        self.routes = {t: tuple(rs) for t, rs in routes.items()}


# ------------------------------------------------------------------------------------ permissions


def check_permission(s: tsql.TopicStatement, principal: Principal) -> None:
    """Who may run a topic statement (decided before anything is proposed, again when applied)."""
    if isinstance(s, (tsql.Consume, tsql.Ack)):
        if principal.role not in CONSUMER_ROLES:
            what = "consume from topics" if isinstance(s, tsql.Consume) else "acknowledge topic offsets"
            raise KalamError("PERMISSION_DENIED", f"Only service, dba, or system roles can {what}")
    elif principal.role not in ADMIN_ROLES:
        verb = {tsql.CreateTopic: "CREATE TOPIC", tsql.DropTopic: "DROP TOPIC", tsql.ClearTopic: "CLEAR TOPIC",
                tsql.AddTopicSource: "ALTER TOPIC"}[type(s)]
        raise KalamError("PERMISSION_DENIED", f"{verb} requires DBA or System role")


# ------------------------------------------------------------------------------------ publishing


def publish(db: Database, ctx: ExecContext, start: int) -> None:
    """Turn the row changes ctx.changes[start:] (one statement's) into topic messages."""
    routes = db.topics.routes
    if not routes or start >= len(ctx.changes):
        return
    by_partition: dict[tuple[str, int], list[tuple]] = {}
    ts_ms = ctx.state.now_us // 1000
    tables = db.writer_catalog.tables
    for ch in ctx.changes[start:]:
        rs = routes.get(ch.table)
        if not rs:
            continue
        matching = [r for r in rs if r.op == ch.op]
        if not matching:
            continue
        ns, _, name = ch.table.partition(".")
        info = tables.get((ns, name))
        if info is None:
            continue
        row = _payload_row(info, ch)
        key = _key(row.get(info.primary_key)) if info.primary_key else None
        keyed = orjson.dumps(row)
        full = None
        for r in matching:
            if r.payload_mode == "key":
                payload = keyed
            else:
                if full is None:
                    full = orjson.dumps({**row, "_table": f"{ns}:{name}"})
                payload = full
            part = 0 if r.partitions == 1 else _partition(key if key is not None else keyed, r.partitions)
            by_partition.setdefault((r.topic_id, part), []).append((key, payload, ts_ms, ch.owner, ch.op))
    conn = ctx.conn
    for (topic_id, part), msgs in by_partition.items():
        nxt = conn.execute("SELECT next_offset FROM _kdb_topic_partitions WHERE topic_id = ? AND partition_id = ?",
                           (topic_id, part)).fetchone()
        first = nxt[0] if nxt else 0
        conn.executemany("INSERT INTO _kdb_topic_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(topic_id, part, first + i, k, p, t, u, o) for i, (k, p, t, u, o) in enumerate(msgs)])
        end = first + len(msgs)
        conn.execute("INSERT INTO _kdb_topic_partitions VALUES (?, ?, ?) ON CONFLICT (topic_id, partition_id) "
                     "DO UPDATE SET next_offset = excluded.next_offset", (topic_id, part, end))
        if end // PRUNE_EVERY != first // PRUNE_EVERY:
            _prune(conn, topic_id, part, end, ts_ms)


def _payload_row(info: cat.TableInfo, ch: Change) -> dict:
    """Upstream's message payload: every column (as the API encodes it) plus _seq, _commit_seq and
    _deleted. A delete carries the row as it was, with the tombstone's _seq."""
    src = ch.old if ch.op == "delete" else ch.row
    src = src or {}
    out = {c.name: encode_cell(src.get(c.name), c.data_type) for c in info.columns}
    out["_seq"] = str(ch.seq)
    out["_commit_seq"] = str(ch.index)
    out["_deleted"] = ch.op == "delete"
    return out


def _key(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _partition(key: str | bytes, partitions: int) -> int:
    """partition = hash(primary key) % partitions (a stable 64-bit BLAKE2b hash; upstream's is
    Rust's SipHash, so the same key may land in a different partition number than upstream's)."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % partitions


def _prune(conn, topic_id: str, part: int, next_offset: int, now_ms: int) -> None:
    row = conn.execute("SELECT retention_seconds FROM _kdb_topics WHERE topic_id = ?", (topic_id,)).fetchone()
    retention_s = row[0] if row and row[0] else DEFAULT_RETENTION_S
    conn.execute("DELETE FROM _kdb_topic_messages WHERE topic_id = ? AND partition_id = ? AND "
                 "(off < ? OR timestamp_ms < ?)",
                 (topic_id, part, next_offset - MAX_PARTITION_MESSAGES, now_ms - retention_s * 1000))


# ------------------------------------------------------------------------------------ statements


def execute(db: Database, ctx: ExecContext, s: tsql.TopicStatement) -> dict:
    check_permission(s, ctx.principal)
    if isinstance(s, tsql.Consume):
        return consume(db, ctx, s)
    if not ctx.writing:
        raise KalamError("INTERNAL_ERROR", f"{type(s).__name__} needs the write path")
    if isinstance(s, tsql.Ack):
        _topic_row(ctx, s.topic)
        _commit(ctx, s.topic, s.group, s.partition, s.offset)
        return _rows_result(ACK_SCHEMA, [[s.topic, s.group, s.partition, str(s.offset)]], ctx)
    ctx.ddl_done = True  # a failure rolls back and reloads the catalog, and with it the routes
    if isinstance(s, tsql.CreateTopic):
        result = _create(db, ctx, s)
    elif isinstance(s, tsql.AddTopicSource):
        result = _add_source(db, ctx, s)
    elif isinstance(s, tsql.DropTopic | tsql.ClearTopic):
        result = _drop_or_clear(ctx, s)
    else:
        raise KalamError("INTERNAL_ERROR", f"{type(s).__name__} is not a topic statement this engine runs")
    db.topics.reload(ctx.conn)
    return result


def _topic_row(ctx: ExecContext, topic: str) -> tuple:
    row = ctx.conn.execute("SELECT topic_id, name, partitions, routes FROM _kdb_topics WHERE topic_id = ?",
                           (topic,)).fetchone()
    if row is None:
        raise KalamError("SQL_EXECUTION_ERROR", missing_topic(topic))  # 400 in SQL, as upstream
    return row


def missing_topic(topic: str) -> str:
    """The error message for a topic that does not exist (the HTTP endpoints answer it with 404)."""
    return f"Topic '{topic}' does not exist"


def _create(db: Database, ctx: ExecContext, s: tsql.CreateTopic) -> dict:
    ns = s.topic.split(".", 1)[0]
    if ns not in db.writer_catalog.namespaces:
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{ns}' does not exist")
    conn = ctx.conn
    if conn.execute("SELECT 1 FROM _kdb_topics WHERE topic_id = ?", (s.topic,)).fetchone():
        raise KalamError("SQL_EXECUTION_ERROR", f"Topic '{s.topic}' already exists")
    if conn.execute("SELECT COUNT(*) FROM _kdb_topics").fetchone()[0] >= MAX_TOPICS:
        raise KalamError("SQL_EXECUTION_ERROR", f"A server may have at most {MAX_TOPICS} topics")
    now = ctx.state.now_us
    conn.execute("INSERT INTO _kdb_topics VALUES (?, ?, NULL, ?, ?, ?, '[]', ?, ?)",
                 (s.topic, s.topic, s.partitions, DEFAULT_RETENTION_S, DEFAULT_RETENTION_BYTES, now, now))
    conn.executemany("INSERT OR REPLACE INTO _kdb_topic_partitions VALUES (?, ?, 0)",
                     [(s.topic, p) for p in range(s.partitions)])
    return message(f"Created topic '{s.topic}' with {s.partitions} partition(s)", ctx)


def _add_source(db: Database, ctx: ExecContext, s: tsql.AddTopicSource) -> dict:
    topic_id, _, _, routes_json = _topic_row(ctx, s.topic)
    if (s.namespace, s.table) not in db.writer_catalog.tables:
        raise KalamError("TABLE_NOT_FOUND", f"Table '{s.namespace}.{s.table}' not found")
    table_id = f"{s.namespace}.{s.table}"
    routes = json.loads(routes_json)
    if any(r["table_id"] == table_id and r["op"] == s.op for r in routes):
        raise KalamError("SQL_EXECUTION_ERROR", f"Route for {table_id} ON {_OP_NAMES[s.op]} already exists in "
                         f"topic '{s.topic}'")
    if len(routes) >= MAX_ROUTES:
        raise KalamError("SQL_EXECUTION_ERROR", f"A topic may have at most {MAX_ROUTES} sources")
    routes.append({"table_id": table_id, "op": s.op, "payload_mode": s.payload_mode, "filter_expr": s.filter_expr,
                   "partition_key_expr": None})
    ctx.conn.execute("UPDATE _kdb_topics SET routes = ?, updated_at = ? WHERE topic_id = ?",
                     (json.dumps(routes, separators=(",", ":")), ctx.state.now_us, topic_id))
    return message(f"Added source {table_id} ON {_OP_NAMES[s.op]} to topic '{s.topic}'", ctx)


def _drop_or_clear(ctx: ExecContext, s: tsql.DropTopic | tsql.ClearTopic) -> dict:
    """The topic's messages and consumer offsets go at once, in this command, recorded as a
    completed `topic_cleanup` job in system.jobs (upstream schedules the job to do it later)."""
    topic_id, name, _, _ = _topic_row(ctx, s.topic)
    conn = ctx.conn
    messages = conn.execute("DELETE FROM _kdb_topic_messages WHERE topic_id = ?", (topic_id,)).rowcount
    offsets = conn.execute("DELETE FROM _kdb_topic_offsets WHERE topic_id = ?", (topic_id,)).rowcount
    job_id = f"TC-{ctx.state.rng.getrandbits(48):012x}"
    storage.record_job(ctx, job_id, "topic_cleanup", {"topic_id": topic_id, "topic_name": name}, "completed",
                       f"Cleaned up topic '{name}' - {offsets} consumer group offsets deleted, {messages} messages "
                       "deleted")
    if isinstance(s, tsql.DropTopic):
        conn.execute("DELETE FROM _kdb_topic_partitions WHERE topic_id = ?", (topic_id,))
        conn.execute("DELETE FROM _kdb_topics WHERE topic_id = ?", (topic_id,))
        return message(f"Dropped topic '{name}' and scheduled cleanup job [{job_id}]", ctx)
    return message(f"Scheduled cleanup job [{job_id}] for topic '{name}'", ctx)


def _commit(ctx: ExecContext, topic: str, group: str, partition: int, offset: int) -> None:
    ctx.conn.execute("INSERT INTO _kdb_topic_offsets VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic_id, group_id, "
                     "partition_id) DO UPDATE SET last_acked_offset = excluded.last_acked_offset, "
                     "updated_at = excluded.updated_at", (topic, group, partition, offset, ctx.state.now_us))


def consume(db: Database, ctx: ExecContext, s: tsql.Consume) -> dict:
    """Messages of one partition from the group's committed offset + 1, else from the requested
    position. SQL with a GROUP commits the last one returned (a write); the HTTP endpoint
    (`claims`) records node-local claims instead."""
    conn = ctx.conn
    topic_id, _, partitions, _ = _topic_row(ctx, s.topic)
    if not 0 <= s.partition < partitions:
        raise KalamError("SQL_EXECUTION_ERROR", f"Topic '{s.topic}' has no partition {s.partition} "
                         f"(it has {partitions})")
    if s.group is not None and not s.claims and not ctx.writing:
        raise KalamError("INTERNAL_ERROR", "CONSUME ... GROUP needs the write path")
    limit = min(s.limit or DEFAULT_CONSUME_LIMIT, MAX_CONSUME_LIMIT)
    committed = None
    if s.group is not None:
        row = conn.execute("SELECT last_acked_offset FROM _kdb_topic_offsets WHERE topic_id = ? AND group_id = ? "
                           "AND partition_id = ?", (topic_id, s.group, s.partition)).fetchone()
        committed = row[0] if row else None
    row = conn.execute("SELECT next_offset FROM _kdb_topic_partitions WHERE topic_id = ? AND partition_id = ?",
                       (topic_id, s.partition)).fetchone()
    next_offset = row[0] if row else 0
    if committed is not None:
        start = committed + 1
    elif s.position == "earliest":
        start = 0
    elif s.position == "latest":
        start = next_offset
    else:
        start = int(s.position)
    if s.claims:
        key = (topic_id, s.group, s.partition)
        with db.topics.claims.lock(key):
            first, take = db.topics.claims.window(key, start, None if committed is None else committed + 1, limit)
            rows = _fetch(conn, topic_id, s.partition, first, take) if take > 0 else []
            if rows:
                db.topics.claims.claim(key, rows[0][0], rows[-1][0])
        return _http_result(db, topic_id, s.partition, rows, first, limit, ctx)
    rows = _fetch(conn, topic_id, s.partition, start, limit)
    if s.group is not None:
        if rows:
            _commit(ctx, topic_id, s.group, s.partition, rows[-1][0])
        elif committed is None and s.position == "latest" and next_offset > 0:
            _commit(ctx, topic_id, s.group, s.partition, next_offset - 1)  # the group starts after what exists
    names = _user_names(db, rows)
    out = [[topic_id, s.partition, str(off), key, list(payload), str(ts), names.get(uid, uid), op]
           for off, key, payload, ts, uid, op in rows]
    return _rows_result(CONSUME_SCHEMA, out, ctx)


def _fetch(conn, topic_id: str, partition: int, start: int, limit: int) -> list[tuple]:
    return conn.execute("SELECT off, key, payload, timestamp_ms, user_id, op FROM _kdb_topic_messages "
                        "WHERE topic_id = ? AND partition_id = ? AND off >= ? ORDER BY off LIMIT ?",
                        (topic_id, partition, start, limit)).fetchall()


def _user_names(db: Database, rows: list[tuple]) -> dict:
    """Owner ids as upstream shows them (the user's name; None for SHARED tables)."""
    names: dict = {}
    for uid in {r[4] for r in rows if r[4] is not None}:
        p = users.principal_for(db, uid)
        names[uid] = p.username if p is not None else uid
    return names


def _http_result(db: Database, topic_id: str, partition: int, rows: list[tuple], first: int, limit: int,
                 ctx: ExecContext) -> dict:
    names = _user_names(db, rows)
    messages = []
    for off, key, payload, ts, uid, op in rows:
        m = {"topic_id": topic_id, "partition_id": partition, "offset": off, "payload": payload, "key": key,
             "timestamp_ms": ts, "op": _OP_NAMES[op]}
        if uid is not None:
            m["user"] = names.get(uid, uid)
        messages.append(m)
    return {"topic_messages": messages, "next_offset": rows[-1][0] + 1 if rows else first,
            "has_more": len(rows) == limit, "row_count": len(rows), "as_user": ctx.principal.username}


def _rows_result(schema: list[tuple[str, str]], rows: list[list], ctx: ExecContext) -> dict:
    return {"schema": [{"name": n, "data_type": t, "index": i} for i, (n, t) in enumerate(schema)],
            "rows": rows, "row_count": len(rows), "as_user": ctx.principal.username}
