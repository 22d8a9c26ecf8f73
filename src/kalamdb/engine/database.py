"""The replicated state machine: SQL requests are prepared on the node that receives them, turned
into one deterministic command, and applied in log order on every replica's SQLite file.

This module is the engine's facade (connections, prepare, commands, the apply batch, reads,
digests and snapshots); the work itself lives by concept beside it: executor.py (the statement
loop, SELECT), writes.py (two-phase INSERT/UPDATE/DELETE), ddl.py, users.py, changes.py (the change
log and feed), compile.py + authorizer.py (what a statement means, and what it may touch).

Threads: apply/apply_batch run on ONE writer thread with the writer connection; execute_read,
digest and authenticate use per-thread reader connections (WAL mode, so reads never block writes)."""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import msgpack

from kalamdb.engine import authorizer, executor, limits, localviews, sysviews, topics, users
from kalamdb.engine import catalog as cat
from kalamdb.engine.changes import (
    CHANGE_RETENTION_ROWS,
    CHANGE_RETENTION_S,
    CHANGES_SQL,
    PRUNE_EVERY,
    Applied,
    Change,
    ChangeFeed,
    FeedEvent,
    Reset,
    ResumeTooOld,
)
from kalamdb.engine.compile import Compiled, compile_query
from kalamdb.engine.functions import FnState, register
from kalamdb.engine.ids import next_snowflake
from kalamdb.engine.passwords import hash_password
from kalamdb.engine.types import ExecContext, Outcome, Prepared, Principal, guard_of, require_admin
from kalamdb.engine.writes import TemplateCache
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.parser import ParseCache, parse_statement
from kalamdb.sql.splitter import split_statements
from kalamdb.sql.topics import TopicStatement
from kalamdb.sql.types import SQL_NAMES, TYPE_ALIASES

MAX_SQL_BYTES = limits.MAX_SQL_BYTES
MAX_PARAMS = limits.MAX_PARAMS
COMMAND_VERSION = 1
_catalog_tokens = iter(range(1, 1 << 62))
_USER_DDL = (st.CreateUser, st.AlterUser, st.DropUser)

__all__ = ["Database", "Outcome", "Prepared", "Principal"]


class Database:
    def __init__(self, data_dir: str | Path, *, node_id: int = 1, durable: bool = True,
                 root_password: str | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "state.sqlite"
        self.node_id = node_id
        self.durable = durable
        self.root_password = root_password
        self.users_version = 0  # bumped whenever applied commands change users (auth caches watch it)
        #: every applied change, published after its batch commits (engine/changes.py)
        self.feed = ChangeFeed()
        self.topics = topics.TopicState()  # topic routes (writer) and HTTP consumers' claims (node-local)
        self.templates = TemplateCache()
        self._parse_cache = ParseCache()
        self._compile_cache: OrderedDict[tuple, Compiled] = OrderedDict()
        self._compile_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._local_tables: dict[str, tuple[list[tuple[str, str]], Callable[[], list[tuple]]]] = {}
        #: the node-local views' columns by name, and a number that changes with them (compile cache key)
        self._local_columns: dict[str, list[tuple[str, str]]] = {}
        self._local_version = 0
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._tls = threading.local()
        self._closed = False
        self._applied_index = 0  # loaded from the file by _load_state
        self._last_snowflake = 0

        self._wconn = self._connect()
        self._wstate = FnState(self, node_id)
        register(self._wconn, self._wstate)
        fresh = self._wconn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = '_kdb_meta'").fetchone()[0] == 0
        if fresh:
            self._wconn.execute("BEGIN IMMEDIATE")
            for sql in cat.BOOTSTRAP_SQL:
                self._wconn.execute(sql)
            self._wconn.execute("COMMIT")
        self._wstate.guard = authorizer.install(self._wconn, cat.SYSTEM_VIEW_BASES)
        self._load_state()
        localviews.install(self)

    # ------------------------------------------------------------------ connections and state

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, cached_statements=512)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'OFF'}")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    def next_seq(self, now_ms: int, node_id: int) -> int:
        """The next `_seq` / SNOWFLAKE_ID() value (writer thread only; persisted with the batch)."""
        self._last_snowflake = next_snowflake(self._last_snowflake, now_ms, node_id)
        return self._last_snowflake

    def reader(self) -> tuple[sqlite3.Connection, FnState]:
        """This thread's read connection (created on first use) and its function state."""
        if self._closed:
            raise KalamError("INTERNAL_ERROR", "Database is closed")
        conn = getattr(self._tls, "conn", None)
        if conn is None:
            conn = self._connect()
            state = FnState(None, self.node_id)
            register(conn, state)
            state.guard = authorizer.install(conn, cat.SYSTEM_VIEW_BASES)
            self._tls.conn, self._tls.state = conn, state
            with self._readers_lock:
                self._readers.append(conn)
        return conn, self._tls.state

    def _load_state(self) -> None:
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in CHANGES_SQL:  # data directories of versions before the change log
                conn.execute(sql)
            topics.ensure_schema(conn)
            conn.execute("INSERT OR IGNORE INTO _kdb_meta VALUES ('changes_pruned_upto', 0)")
            meta = dict(conn.execute("SELECT key, value FROM _kdb_meta"))
            self._applied_index = int(meta["applied_index"])
            self._last_snowflake = int(meta["last_snowflake"])
            sysviews.upgrade(conn)
            self.reload_catalog()
            cat.ensure_row_views(conn, self._catalog)
        finally:
            conn.execute("COMMIT")
        self._published = self._catalog

    def reload_catalog(self) -> None:
        loaded = cat.load_catalog(self._wconn)
        self._catalog = cat.Catalog(next(_catalog_tokens), loaded.namespaces, loaded.tables)
        self.topics.reload(self._wconn)

    def bump_catalog(self, ctx: ExecContext) -> None:
        ctx.conn.execute("UPDATE _kdb_meta SET value = value + 1 WHERE key = 'catalog_version'")
        self.reload_catalog()

    @property
    def writer_catalog(self) -> cat.Catalog:
        """The catalog as of the command being applied (DDL earlier in the batch included)."""
        return self._catalog

    @property
    def compile_cache_size(self) -> int:
        return len(self._compile_cache)

    @property
    def published_catalog(self) -> cat.Catalog:
        """The catalog as of the last committed batch (what readers see)."""
        return self._published

    def catalog_for(self, ctx: ExecContext) -> cat.Catalog:
        return self._catalog if ctx.writing else self._published

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def parse_cache(self) -> ParseCache:
        return self._parse_cache

    # ------------------------------------------------------------------ prepare

    def prepare(self, sql: str, params: list | None, namespace: str | None, principal: Principal) -> Prepared:
        """Parse and check a request on the node that received it. Everything that can be refused
        without applying is refused here, before any costly work or any log entry: sizes, syntax,
        permissions that do not depend on data, and writes that would exceed their budgets."""
        if not isinstance(sql, str) or not sql.strip():
            raise KalamError("EMPTY_SQL", "SQL statement is empty")
        if len(sql) > MAX_SQL_BYTES or len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
            raise KalamError("INVALID_SQL", f"SQL is larger than {MAX_SQL_BYTES} bytes")
        params = list(params or [])
        if len(params) > MAX_PARAMS:
            raise KalamError("INVALID_PARAMETER", "Statement 1 failed: Parameter count exceeded: maximum "
                             f"{MAX_PARAMS} parameters allowed, got {len(params)}")
        for i, p in enumerate(params, 1):
            if p is not None and not isinstance(p, (bool, int, float, str, bytes)):
                raise KalamError("INVALID_PARAMETER", f"Parameter ${i} must be a scalar (string, number, "
                                 f"boolean or null), got {type(p).__name__}")
            if isinstance(p, int) and not -(2**63) <= p < 2**63:
                raise KalamError("INVALID_PARAMETER", f"Parameter ${i} does not fit in 64 bits")
            size = len(p) if isinstance(p, bytes) else (len(p.encode("utf-8", "surrogatepass"))
                                                         if isinstance(p, str) and len(p) * 4 > limits.MAX_PARAM_BYTES
                                                         else len(p) if isinstance(p, str) else 0)
            if size > limits.MAX_PARAM_BYTES:
                raise KalamError("INVALID_PARAMETER", f"Statement 1 failed: Parameter size exceeded: parameter at "
                                 f"index {i - 1} is {size} bytes (max {limits.MAX_PARAM_BYTES} bytes)")
        texts = split_statements(sql)
        if not texts:
            raise KalamError("EMPTY_SQL", "SQL statement is empty")
        if params and len(texts) > 1:
            raise KalamError("PARAMS_WITH_BATCH", "Parameters are not allowed with multiple statements")
        statements = []
        for i, text in enumerate(texts, 1):
            try:
                statements.append(parse_statement(text, self._parse_cache))
            except KalamError as e:
                if len(texts) == 1:
                    raise
                raise KalamError(e.code, f"Statement {i} failed: {e.message}", details=e.details) from None
        ns = (namespace or "default").lower()
        if not re.fullmatch(r"[a-z0-9_]+", ns):
            raise KalamError("INVALID_INPUT", f"Invalid namespace_id '{namespace}'")
        cluster_op = None
        for s in statements:
            if isinstance(s, st.ClusterStatement):
                if len(statements) != 1:
                    raise KalamError("INVALID_SQL", "A CLUSTER statement must be sent alone")
                require_admin(principal, "CLUSTER commands")
                cluster_op = s.op
            else:
                _check_statement_permission(s, principal)
        is_write = any(s.is_write for s in statements)
        touches = any(isinstance(s.inner if isinstance(s, st.ExecuteAs) else s, _USER_DDL) for s in statements)
        prepared = Prepared(sql, statements, params, ns, principal, is_write, cluster_op, touches)
        if is_write:
            self._admit_write(prepared)
        return prepared

    def _admit_write(self, prepared: Prepared) -> None:
        """Check a write's queries against the current state before it is proposed: permissions,
        and the step and row budgets (phase 1 run as a read), so a write that would exceed them
        never reaches the log and replicas never spend the budget. Only budget, permission and
        structural (INVALID_SQL: e.g. a write reading a node-local view) failures refuse here; any
        other error is left to apply, where it is decided identically on
        every replica. Requests with DDL are not checked (their tables may not exist yet)."""
        if any(not isinstance(s, (st.Query, st.ExecuteAs, st.Begin, st.Commit, st.Rollback))
               for s in prepared.statements):
            return
        conn, state = self.reader()
        ctx = ExecContext(conn, state, prepared.principal, prepared.namespace, prepared.params, False)
        for i, s in enumerate(prepared.statements, 1):
            q = s.inner if isinstance(s, st.ExecuteAs) else s
            if not isinstance(q, st.Query) or q.kind == "select":
                continue
            try:
                compiled = self.compiled(q, ctx)
                owner = None
                if isinstance(s, st.ExecuteAs):
                    owner = users.execute_as_target(ctx, s.username)
                executor.check_access(compiled, prepared.principal, owner)
                if compiled.sql and compiled.target is not None:
                    self._dry_run(ctx, q, compiled, owner or prepared.principal)
            except KalamError as e:
                if e.code in ("PERMISSION_DENIED", "INVALID_SQL") or "budget" in e.message or "more than" in e.message:
                    # worded as apply would word it (upstream: "Statement N failed: ...")
                    raise KalamError(e.code, f"Statement {i} failed: {e.message}", details=e.details,
                                     sensitive=e.sensitive) from None
            except sqlite3.Error:
                pass

    def _dry_run(self, ctx: ExecContext, q: st.Query, compiled: Compiled, who: Principal) -> None:
        params = q.params if q.params is not None else ctx.params
        binds = {f"p{i}": v for i, v in enumerate(params, 1)}
        state = ctx.state
        state.owner, state.username, state.last_error = who.user_id, who.username, None
        state.start_statement(steps=limits.WRITE_STEP_BUDGET)
        ctx.conn.execute("BEGIN")
        try:
            with authorizer.UserScope(guard_of(ctx), compiled.allow):
                n = len(ctx.conn.execute(compiled.sql, binds).fetchmany(limits.MAX_WRITE_ROWS + 1))
        except sqlite3.Error as e:
            if str(e) == "interrupted":
                raise KalamError("SQL_EXECUTION_ERROR", "Statement would exceed its execution budget "
                                 f"({limits.WRITE_STEP_BUDGET} steps); it was not applied") from None
            raise
        finally:
            state.end_statement()
            ctx.conn.execute("COMMIT")
        if n > limits.MAX_WRITE_ROWS:
            from kalamdb.engine.writes import too_many_rows

            raise too_many_rows(compiled)

    def compiled(self, q: st.Query, ctx: ExecContext) -> Compiled:
        catalog = self.catalog_for(ctx)
        local = self._local_columns
        key = (q.sql, ctx.namespace, catalog.version, self._local_version)
        with self._compile_lock:
            hit = self._compile_cache.get(key)
            if hit is not None:
                self._compile_cache.move_to_end(key)
                return hit
        if q.ast is None:
            q.ast = self._parse_cache.parse(q.sql)
        compiled = compile_query(q.ast, q.kind, catalog, ctx.namespace, local)
        with self._compile_lock:
            self._compile_cache[key] = compiled
            if len(self._compile_cache) > 2048:
                self._compile_cache.popitem(last=False)
        return compiled

    # ------------------------------------------------------------------ commands

    def to_command(self, prepared: Prepared, *, now_us: int, node_id: int) -> bytes:
        wire = []
        for s in prepared.statements:
            w = s.to_wire()  # never contains a plaintext password (the field is not on the wire)
            if isinstance(s, (st.CreateUser, st.AlterUser)) and s.password is not None:
                w["password_hash"] = hash_password(s.password)
            wire.append(w)
        p = prepared.principal
        cmd = {"v": COMMAND_VERSION, "kind": "sql", "now": int(now_us), "node": int(node_id),
               "seed": random.getrandbits(63), "user": [p.user_id, p.username, p.role],
               "ns": prepared.namespace, "params": prepared.params, "stmts": wire}
        return msgpack.packb(cmd, use_bin_type=True)

    @staticmethod
    def noop_command() -> bytes:
        """A command that changes nothing but the applied index (Raft no-op and config entries)."""
        return msgpack.packb({"v": COMMAND_VERSION, "kind": "noop"})

    def expiry_command(self, now_us: int) -> bytes | None:
        conn, _ = self.reader()
        for info in self._published.tables.values():
            if info.table_type != "STREAM":
                continue
            cutoff = now_us - int(info.options["TTL_SECONDS"]) * 1_000_000
            try:
                row = conn.execute(f"SELECT 1 FROM {cat.quote_ident(info.storage)} WHERE _ts < ? LIMIT 1",
                                   (cutoff,)).fetchone()
            except sqlite3.Error:
                continue
            if row is not None:
                return msgpack.packb({"v": COMMAND_VERSION, "kind": "expire", "now": int(now_us)})
        return None

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, command: bytes) -> Outcome:
        return self.apply_batch([(index, command)])[0]

    def apply_batch(self, items: list[tuple[int, bytes]]) -> list[Outcome]:
        """Apply commands in log order in ONE transaction; then publish their changes in order."""
        with self._write_lock:
            failed: dict[int, KalamError] = {}
            while True:
                try:
                    outcomes, events = self._apply_batch_once(items, failed)
                    break
                except executor.TransactionLost as lost:
                    failed[lost.args[0]] = KalamError(
                        "SQL_EXECUTION_ERROR", "Statement exceeded its execution budget and was stopped")
        for event in events:
            self.feed.publish(event)
        return outcomes

    def _apply_batch_once(self, items: list[tuple[int, bytes]],
                          failed: dict[int, KalamError]) -> tuple[list[Outcome], list[FeedEvent]]:
        conn = self._wconn
        outcomes: list[Outcome] = []
        events: list[FeedEvent] = []
        pending: list[Change] = []  # changes not yet in a published Applied event
        logged: list[Change] = []  # changes not yet written to the change log (one write per batch)
        first = 0
        start_index, start_seq = self._applied_index, self._last_snowflake
        conn.execute("BEGIN IMMEDIATE")
        try:
            for index, command in items:
                if index <= self._applied_index:
                    outcomes.append(Outcome([], None))
                    continue
                first = first or index
                if index in failed:
                    outcome, ctx = Outcome([], failed[index]), None
                else:
                    conn.execute("SAVEPOINT kdb_cmd")
                    try:
                        outcome, ctx = self._apply_one(index, command)
                        conn.execute("RELEASE kdb_cmd")
                    except Exception as e:
                        if executor.environmental(e) or not conn.in_transaction:
                            raise executor.TransactionLost(index) if not conn.in_transaction else e from e
                        conn.execute("ROLLBACK TO kdb_cmd")
                        conn.execute("RELEASE kdb_cmd")
                        self.reload_catalog()
                        err = e if isinstance(e, KalamError) else KalamError(
                            "INTERNAL_ERROR", f"Command could not be applied: {type(e).__name__}: {e}")
                        outcome, ctx = Outcome([], err), None
                if ctx is not None:
                    pending.extend(ctx.changes)
                    logged.extend(ctx.changes)
                    if ctx.events:
                        events.append(Applied(first, index, tuple(pending)))
                        pending, first = [], 0
                        events.extend(ctx.events)
                if index % PRUNE_EVERY == 0:
                    self._log_changes(logged)
                    self._prune_changes()
                self._applied_index = index
                outcomes.append(outcome)
            self._log_changes(logged)
            conn.execute("UPDATE _kdb_meta SET value = ? WHERE key = 'applied_index'", (self._applied_index,))
            conn.execute("UPDATE _kdb_meta SET value = ? WHERE key = 'last_snowflake'", (self._last_snowflake,))
            conn.execute("COMMIT")
        except BaseException:
            # the transaction did not commit (disk error, interrupt): forget everything it did
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._applied_index, self._last_snowflake = start_index, start_seq
            self.reload_catalog()
            self._published = self._catalog
            raise
        self._published = self._catalog
        if first or pending:
            events.append(Applied(first or self._applied_index, self._applied_index, tuple(pending)))
        return outcomes, events

    def _apply_one(self, index: int, command: bytes) -> tuple[Outcome, ExecContext | None]:
        cmd = msgpack.unpackb(command, raw=False)
        if not isinstance(cmd, dict) or cmd.get("v") != COMMAND_VERSION:
            raise KalamError("INTERNAL_ERROR", "Unsupported command format")
        if cmd.get("kind") == "noop":  # log entries that only advance the applied index
            return Outcome([], None), None
        state = self._wstate
        state.reset(int(cmd["now"]), int(cmd.get("seed", 0)))
        state.node_id = int(cmd.get("node", self.node_id))
        if cmd["kind"] == "expire":
            return self._apply_expiry(state.now_us), None
        user_id, username, role = cmd["user"]
        principal = Principal(user_id, username, role)
        stmts = [self._from_wire(w) for w in cmd["stmts"]]
        ctx = ExecContext(self._wconn, state, principal, cmd["ns"], cmd.get("params") or [], True, index)
        results, error = executor.run(self, ctx, stmts)
        return Outcome(results, error), ctx

    def _from_wire(self, wire: dict) -> st.Statement:
        s = st.statement_from_wire(wire)
        self._attach_ast(s)
        return s

    def _attach_ast(self, s: st.Statement) -> None:
        if isinstance(s, st.Query) and s.ast is None:
            s.ast = self._parse_cache.parse(s.sql)
        elif isinstance(s, st.ExecuteAs):
            self._attach_ast(s.inner)

    def _apply_expiry(self, now_us: int) -> Outcome:
        """STREAM rows past their TTL go, on every replica at the same log index (expiry is not a
        change subscribers are told about, as upstream)."""
        total = 0
        for info in self._catalog.tables.values():
            if info.table_type == "STREAM":
                cutoff = now_us - int(info.options["TTL_SECONDS"]) * 1_000_000
                cur = self._wconn.execute(f"DELETE FROM {cat.quote_ident(info.storage)} WHERE _ts < ?", (cutoff,))
                total += cur.rowcount
        return Outcome([{"row_count": total, "message": f"Expired {total} row(s)"}], None)

    def _log_changes(self, changes: list[Change]) -> None:
        """Write the batch's changes to the change log (in the batch's transaction) and clear them."""
        if changes:
            self._wconn.executemany("INSERT INTO _kdb_changes VALUES (?, ?, ?, ?, ?, ?)",
                                    [(c.seq, c.index, c.table, c.owner or "", c.op, c.encode()) for c in changes])
            changes.clear()

    def _prune_changes(self) -> None:
        """Drop changes past the retention (by the newest change's time, and by count): depends
        only on the log itself, and runs at fixed indexes, so every replica prunes identically."""
        conn = self._wconn
        newest = conn.execute("SELECT MAX(seq) FROM _kdb_changes").fetchone()[0]
        if newest is None:
            return
        cutoff = newest - ((CHANGE_RETENTION_S * 1000) << 22)
        row = conn.execute("SELECT seq FROM _kdb_changes ORDER BY seq DESC LIMIT 1 OFFSET ?",
                           (CHANGE_RETENTION_ROWS,)).fetchone()
        if row is not None:
            cutoff = max(cutoff, row[0] + 1)
        gone = conn.execute("SELECT MAX(seq) FROM _kdb_changes WHERE seq < ?", (cutoff,)).fetchone()[0]
        if gone is not None:
            conn.execute("DELETE FROM _kdb_changes WHERE seq <= ?", (gone,))
            conn.execute("UPDATE _kdb_meta SET value = MAX(value, ?) WHERE key = 'changes_pruned_upto'", (gone,))

    # ------------------------------------------------------------------ reads

    def execute_read(self, prepared: Prepared) -> list[dict]:
        return self.read_at(prepared)[1]

    def read_at(self, prepared: Prepared) -> tuple[int, list[dict]]:
        """Run a read-only request in one read transaction; returns the applied index its snapshot
        is at together with the results (a live query's initial load is consistent with it)."""
        if prepared.is_write:
            raise KalamError("INTERNAL_ERROR", "execute_read called with a write request")
        conn, state = self.reader()
        state.reset(time.time_ns() // 1000, None)
        ctx = ExecContext(conn, state, prepared.principal, prepared.namespace, prepared.params, False)
        conn.execute("BEGIN")
        try:
            index = conn.execute("SELECT value FROM _kdb_meta WHERE key = 'applied_index'").fetchone()[0]
            results, error = executor.run(self, ctx, prepared.statements)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        if error is not None:
            raise error
        return int(index), results

    def changes_since(self, table: str, owner: str | None, after_seq: int,
                      limit: int = 1000) -> tuple[int, list[Change]]:
        """(applied index, up to `limit` changes of `table` with `_seq` > after_seq, oldest first)
        from the durable change log; `owner` for USER and STREAM tables (None for SHARED).
        Raises ResumeTooOld when changes after `after_seq` may have been pruned."""
        conn, _ = self.reader()
        conn.execute("BEGIN")
        try:
            meta = dict(conn.execute("SELECT key, value FROM _kdb_meta WHERE key IN "
                                     "('applied_index', 'changes_pruned_upto')"))
            if after_seq < int(meta["changes_pruned_upto"]):
                raise ResumeTooOld(table, after_seq, int(meta["changes_pruned_upto"]))
            rows = conn.execute("SELECT seq, idx, tbl, owner, op, data FROM _kdb_changes WHERE tbl = ? AND owner = ? "
                                "AND seq > ? ORDER BY seq LIMIT ?", (table, owner or "", after_seq, limit)).fetchall()
        finally:
            conn.execute("COMMIT")
        return int(meta["applied_index"]), [Change.decode(*r) for r in rows]

    # ------------------------------------------------------------------ users

    def authenticate(self, username: str, password: str) -> Principal:
        return users.authenticate(self, username, password)

    def principal_for(self, user_id: str) -> Principal | None:
        return users.principal_for(self, user_id)

    # ------------------------------------------------------------------ node-local system tables

    def register_system_table(self, name: str, columns: list[tuple[str, str]], rows: Callable[[], list[tuple]]):
        """A node-local `system.<name>` (replaces an earlier one of the same name)."""
        name = name.lower()
        if not re.fullmatch(r"[a-z0-9_]+", name) or name in cat.SYSTEM_VIEWS:
            raise ValueError(f"invalid or reserved system table name {name!r}")
        self.register_local_view(f"system.{name}", columns, rows)

    def register_local_view(self, full_name: str, columns: list[tuple[str, str]],
                            rows: Callable[[], list[tuple]]) -> None:
        """A node-local view by its full name (`system.x`, `information_schema.x`): materialised as a
        TEMP table on the connection that reads it, so WHERE/ORDER/joins work."""
        typed = [(c.lower(), TYPE_ALIASES.get(t.upper(), t)) for c, t in columns]
        self._local_tables[full_name] = (typed, rows)
        self._local_columns = {name: cols for name, (cols, _) in self._local_tables.items()}
        self._local_version += 1

    def system_columns(self) -> dict[str, list[tuple[str, str]]]:
        """Every system view's columns with their SQL type names, by full name (information_schema)."""
        out = {f"system.{name}": [(c, SQL_NAMES.get(t, t.upper())) for c, t in types.items()]
               for name, types in cat.SYSTEM_VIEWS.items()}
        for name, (cols, _) in self._local_tables.items():
            out[name] = [(c, SQL_NAMES.get(t, t.upper())) for c, t in cols]
        return dict(sorted(out.items()))

    def materialise_local(self, conn: sqlite3.Connection, name: str) -> None:
        cols, rows_fn = self._local_tables[name]
        table = cat.quote_ident(name)
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        conn.execute(f"CREATE TEMP TABLE {table} ({', '.join(cat.quote_ident(c) for c, _ in cols)})")
        rows = [tuple(r) for r in rows_fn()]
        if rows:
            marks = ", ".join("?" for _ in cols)
            conn.executemany(f"INSERT INTO temp.{table} VALUES ({marks})", rows)

    # ------------------------------------------------------------------ digest and snapshots

    def digest(self) -> str:
        """SHA-256 over every replicated table (schema and rows in rowid order) and view."""
        return self.digest_with_index()[1]

    def digest_with_index(self) -> tuple[int, str]:
        """(applied index, digest) read in ONE read transaction, so the pair is consistent even
        while the writer keeps applying."""
        conn, _ = self.reader()
        h = hashlib.sha256()
        conn.execute("BEGIN")
        try:
            index = conn.execute("SELECT value FROM _kdb_meta WHERE key = 'applied_index'").fetchone()[0]
            objects = conn.execute("SELECT type, name, sql FROM main.sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                                   "ORDER BY type, name").fetchall()
            for typ, name, sql in objects:
                h.update(msgpack.packb([typ, name, sql]))
                if typ == "table":
                    for row in conn.execute(f"SELECT * FROM main.{cat.quote_ident(name)} ORDER BY rowid"):
                        h.update(msgpack.packb(row, use_bin_type=True))
        finally:
            conn.execute("COMMIT")
        return int(index), h.hexdigest()

    def snapshot_to(self, path) -> int:
        path = Path(path)
        with self._write_lock:
            dst = sqlite3.connect(path, isolation_level=None)
            try:
                self._wconn.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                index = dst.execute("SELECT value FROM _kdb_meta WHERE key = 'applied_index'").fetchone()[0]
            finally:
                dst.close()
        return int(index)

    def restore_from(self, path) -> None:
        self.users_version += 1
        path = Path(path)
        if not path.is_file():
            raise KalamError("INVALID_INPUT", f"Snapshot file {path} does not exist")
        with self._write_lock:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            try:
                try:
                    ok = src.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                    ok = ok and src.execute("SELECT value FROM _kdb_meta WHERE key = 'applied_index'").fetchone()
                except sqlite3.Error:
                    ok = False
                if not ok:
                    raise KalamError("INVALID_INPUT", f"{path} is not a kalamdb snapshot")
                src.backup(self._wconn)
            finally:
                src.close()
            with self._compile_lock:
                self._compile_cache.clear()
            self._load_state()
        self.feed.publish(Reset(self._applied_index))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._wconn.close()
        with self._readers_lock:
            for conn in self._readers:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # owned by another thread that is still using it; closed with the process
            self._readers.clear()


def _check_statement_permission(s: st.Statement, principal: Principal) -> None:
    """Refusals that depend only on who asks, decided before the request costs anything."""
    if isinstance(s, TopicStatement):
        topics.check_permission(s, principal)
    elif isinstance(s, (st.CreateNamespace, st.DropNamespace)):
        require_admin(principal, "Namespace DDL")
    elif isinstance(s, (st.CreateUser, st.DropUser)):
        require_admin(principal, "User management")
    elif isinstance(s, st.AlterUser):
        if s.role is not None:
            require_admin(principal, "Changing a role")
        elif s.username != principal.username and principal.role not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", "Only dba or system may change another user's password")
    elif isinstance(s, st.CreateTable) and s.table_type == "SHARED" and principal.role == "user":
        raise KalamError("PERMISSION_DENIED", "Role 'user' may create USER and STREAM tables only")
    elif isinstance(s, st.DropTable) and principal.role not in ("dba", "system"):
        raise KalamError("PERMISSION_DENIED", "Unauthorized: Insufficient privileges to drop table")
    elif isinstance(s, (st.CreateStorage, st.AlterStorage, st.DropStorage, st.KillJob)):
        require_admin(principal, type(s).__name__)
    elif isinstance(s, (st.StorageFlush, st.StorageCompact)) and principal.role == "user":
        raise KalamError("PERMISSION_DENIED", "Unauthorized: STORAGE FLUSH and STORAGE COMPACT require Service, "
                         "DBA, or System role")
