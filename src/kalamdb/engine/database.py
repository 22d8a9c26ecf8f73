"""The replicated state machine: SQL requests are prepared on the node that receives them, turned
into one deterministic command, and applied in log order on every replica's SQLite file.

Threads: apply/apply_batch run on ONE writer thread with the writer connection; execute_read,
digest and authenticate use per-thread reader connections (WAL mode, so reads never block writes)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from kalamdb.engine import authorizer, limits
from kalamdb.engine import catalog as cat
from kalamdb.engine.compile import Compiled, compile_query
from kalamdb.engine.functions import FnState, register
from kalamdb.engine.ids import next_snowflake
from kalamdb.engine.passwords import hash_password, verify_password
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.parser import ParseCache, parse_statement
from kalamdb.sql.splitter import split_statements
from kalamdb.sql.types import COERCERS, TYPE_ALIASES, encode_cell, infer_type

MAX_SQL_BYTES = limits.MAX_SQL_BYTES
MAX_PARAMS = limits.MAX_PARAMS
ADMIN_ROLES = ("dba", "system")
COMMAND_VERSION = 1
# SQLite failures caused by this machine (not by the command): they must not be recorded as the
# command's deterministic outcome, so they abort the whole batch instead
_ENVIRONMENTAL = ("disk i/o error", "database or disk is full", "database is locked", "readonly database",
                  "unable to open", "out of memory", "file is not a database", "disk image is malformed")


def _environmental(e: BaseException) -> bool:
    if isinstance(e, _TransactionLost):
        return True
    return isinstance(e, sqlite3.Error) and any(m in str(e).lower() for m in _ENVIRONMENTAL)


class _TransactionLost(Exception):
    """SQLite rolled back the whole batch transaction (an interrupted write statement does that):
    the batch is replayed with the offending command marked failed."""
_catalog_tokens = itertools.count(1)


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str  # user | service | dba | system


@dataclass
class Prepared:
    sql: str
    statements: list[st.Statement]
    params: list
    namespace: str
    principal: Principal
    is_write: bool
    cluster_op: st.ClusterOp | None = None


@dataclass
class Outcome:
    results: list[dict] = field(default_factory=list)
    error: KalamError | None = None


class _ExecContext:
    """One request being executed: which connection, whose rows, which fixed inputs."""

    def __init__(self, conn, state: FnState, principal: Principal, namespace: str, params: list, writing: bool):
        self.conn = conn
        self.state = state
        self.principal = principal
        self.namespace = namespace
        self.params = params
        self.writing = writing
        self.ddl_done = False


class Database:
    def __init__(self, data_dir: str | Path, *, node_id: int = 1, durable: bool = True,
                 root_password: str | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "state.sqlite"
        self.node_id = node_id
        self.durable = durable
        self._root_password = root_password
        self.users_version = 0  # bumped whenever applied commands change users (auth caches watch it)
        self._parse_cache = ParseCache()
        self._compile_cache: OrderedDict[tuple, Compiled] = OrderedDict()
        self._compile_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._local_tables: dict[str, tuple[list[tuple[str, str]], Callable[[], list[tuple]]]] = {}
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._tls = threading.local()
        self._closed = False

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

    def _reader(self) -> tuple[sqlite3.Connection, FnState]:
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
        meta = dict(self._wconn.execute("SELECT key, value FROM _kdb_meta"))
        self._applied_index = int(meta["applied_index"])
        self._last_snowflake = int(meta["last_snowflake"])
        self._reload_catalog()
        self._wconn.execute("BEGIN IMMEDIATE")
        try:
            cat.ensure_row_views(self._wconn, self._catalog)
        finally:
            self._wconn.execute("COMMIT")
        self._published = self._catalog

    def _reload_catalog(self) -> None:
        loaded = cat.load_catalog(self._wconn)
        self._catalog = cat.Catalog(next(_catalog_tokens), loaded.namespaces, loaded.tables)

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def parse_cache(self) -> ParseCache:
        return self._parse_cache

    # ------------------------------------------------------------------ prepare

    def prepare(self, sql: str, params: list | None, namespace: str | None, principal: Principal) -> Prepared:
        if not isinstance(sql, str) or not sql.strip():
            raise KalamError("EMPTY_SQL", "SQL statement is empty")
        if len(sql) > MAX_SQL_BYTES or len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
            raise KalamError("INVALID_SQL", f"SQL is larger than {MAX_SQL_BYTES} bytes")
        params = list(params or [])
        if len(params) > MAX_PARAMS:
            raise KalamError("INVALID_PARAMETER", f"Too many parameters: {len(params)} (at most {MAX_PARAMS})")
        for i, p in enumerate(params, 1):
            if p is not None and not isinstance(p, (bool, int, float, str, bytes)):
                raise KalamError("INVALID_PARAMETER", f"Parameter ${i} must be a scalar (string, number, "
                                 f"boolean or null), got {type(p).__name__}")
            if isinstance(p, int) and not -(2**63) <= p < 2**63:
                raise KalamError("INVALID_PARAMETER", f"Parameter ${i} does not fit in 64 bits")
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
                _require_admin(principal, "CLUSTER commands")
                cluster_op = s.op
            elif isinstance(s, (st.CreateNamespace, st.DropNamespace)):
                _require_admin(principal, "Namespace DDL")
            elif isinstance(s, (st.CreateUser, st.DropUser)):
                _require_admin(principal, "User management")
        is_write = any(s.is_write for s in statements)
        return Prepared(sql, statements, params, ns, principal, is_write, cluster_op)

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
        conn, _ = self._reader()
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
        with self._write_lock:
            failed: dict[int, KalamError] = {}
            while True:
                try:
                    return self._apply_batch_once(items, failed)
                except _TransactionLost as lost:
                    failed[lost.args[0]] = KalamError(
                        "SQL_EXECUTION_ERROR", "Statement exceeded its execution budget and was stopped")

    def _apply_batch_once(self, items: list[tuple[int, bytes]], failed: dict[int, KalamError]) -> list[Outcome]:
        conn = self._wconn
        outcomes: list[Outcome] = []
        start_index, start_seq = self._applied_index, self._last_snowflake
        conn.execute("BEGIN IMMEDIATE")
        try:
            for index, command in items:
                if index <= self._applied_index:
                    outcomes.append(Outcome([], None))
                    continue
                if index in failed:
                    outcome = Outcome([], failed[index])
                else:
                    conn.execute("SAVEPOINT kdb_cmd")
                    try:
                        outcome = self._apply_one(command)
                        conn.execute("RELEASE kdb_cmd")
                    except Exception as e:
                        if _environmental(e) or not conn.in_transaction:
                            raise _TransactionLost(index) if not conn.in_transaction else e from e
                        conn.execute("ROLLBACK TO kdb_cmd")
                        conn.execute("RELEASE kdb_cmd")
                        self._reload_catalog()
                        err = e if isinstance(e, KalamError) else KalamError(
                            "INTERNAL_ERROR", f"Command could not be applied: {type(e).__name__}: {e}")
                        outcome = Outcome([], err)
                self._applied_index = index
                outcomes.append(outcome)
            conn.execute("UPDATE _kdb_meta SET value = ? WHERE key = 'applied_index'", (self._applied_index,))
            conn.execute("UPDATE _kdb_meta SET value = ? WHERE key = 'last_snowflake'", (self._last_snowflake,))
            conn.execute("COMMIT")
        except BaseException:
            # the transaction did not commit (disk error, interrupt): forget everything it did
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._applied_index, self._last_snowflake = start_index, start_seq
            self._reload_catalog()
            self._published = self._catalog
            raise
        self._published = self._catalog
        return outcomes

    def _apply_one(self, command: bytes) -> Outcome:
        cmd = msgpack.unpackb(command, raw=False)
        if not isinstance(cmd, dict) or cmd.get("v") != COMMAND_VERSION:
            raise KalamError("INTERNAL_ERROR", "Unsupported command format")
        if cmd.get("kind") == "noop":  # log entries that only advance the applied index
            return Outcome([], None)
        state = self._wstate
        state.reset(int(cmd["now"]), int(cmd.get("seed", 0)))
        state.node_id = int(cmd.get("node", self.node_id))
        if cmd["kind"] == "expire":
            return self._apply_expiry(state.now_us)
        user_id, username, role = cmd["user"]
        principal = Principal(user_id, username, role)
        stmts = [self._from_wire(w) for w in cmd["stmts"]]
        ctx = _ExecContext(self._wconn, state, principal, cmd["ns"], cmd.get("params") or [], True)
        results, error = self._run(ctx, stmts)
        return Outcome(results, error)

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
        total = 0
        for info in self._catalog.tables.values():
            if info.table_type == "STREAM":
                cutoff = now_us - int(info.options["TTL_SECONDS"]) * 1_000_000
                cur = self._wconn.execute(f"DELETE FROM {cat.quote_ident(info.storage)} WHERE _ts < ?", (cutoff,))
                total += cur.rowcount
        return Outcome([{"row_count": total, "message": f"Expired {total} row(s)"}], None)

    # ------------------------------------------------------------------ reads

    def execute_read(self, prepared: Prepared) -> list[dict]:
        if prepared.is_write:
            raise KalamError("INTERNAL_ERROR", "execute_read called with a write request")
        conn, state = self._reader()
        state.reset(time.time_ns() // 1000, None)
        ctx = _ExecContext(conn, state, prepared.principal, prepared.namespace, prepared.params, False)
        conn.execute("BEGIN")
        try:
            results, error = self._run(ctx, prepared.statements)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        if error is not None:
            raise error
        return results

    # ------------------------------------------------------------------ statement loop

    def _run(self, ctx: _ExecContext, stmts: list[st.Statement]) -> tuple[list[dict], KalamError | None]:
        """Run statements in order: each in a savepoint (a failing one leaves nothing behind), BEGIN
        opens a savepoint that COMMIT releases and ROLLBACK (or an error, or the end of the request)
        undoes."""
        conn = ctx.conn
        results: list[dict] = []
        in_txn = False
        error: KalamError | None = None
        for i, s in enumerate(stmts, 1):
            if isinstance(s, st.Begin):
                if in_txn:
                    error = KalamError("SQL_EXECUTION_ERROR", f"Statement {i} failed: a transaction is already open")
                    break
                if ctx.writing:
                    conn.execute("SAVEPOINT kdb_txn")
                in_txn = True
                results.append(self._message("Transaction started", ctx))
                continue
            if isinstance(s, (st.Commit, st.Rollback)):
                if not in_txn:
                    results.append(self._message("No transaction in progress", ctx))
                    continue
                if ctx.writing:
                    if isinstance(s, st.Rollback):
                        conn.execute("ROLLBACK TO kdb_txn")
                    conn.execute("RELEASE kdb_txn")
                    if isinstance(s, st.Rollback) and ctx.ddl_done:
                        self._reload_catalog()
                in_txn = False
                results.append(self._message(
                    "Transaction committed" if isinstance(s, st.Commit) else "Transaction rolled back", ctx))
                continue
            if ctx.writing:
                conn.execute("SAVEPOINT kdb_stmt")
            try:
                results.append(self._execute(ctx, s))
                if ctx.writing:
                    conn.execute("RELEASE kdb_stmt")
            except KalamError as e:
                error = KalamError(e.code, f"Statement {i} failed: {e.message}", details=e.details)
            except Exception as e:
                if _environmental(e):
                    raise  # not the command's fault: abort the batch, nothing of it commits
                error = KalamError("INTERNAL_ERROR", f"Statement {i} failed: {type(e).__name__}: {e}")
            if error is not None:
                if ctx.writing:
                    conn.execute("ROLLBACK TO kdb_stmt")
                    conn.execute("RELEASE kdb_stmt")
                    if in_txn:
                        conn.execute("ROLLBACK TO kdb_txn")
                        conn.execute("RELEASE kdb_txn")
                    if ctx.ddl_done:
                        self._reload_catalog()
                in_txn = False
                break
        if in_txn:
            if ctx.writing:
                conn.execute("ROLLBACK TO kdb_txn")
                conn.execute("RELEASE kdb_txn")
                if ctx.ddl_done:
                    self._reload_catalog()
            error = KalamError("SQL_EXECUTION_ERROR", "Transaction was not committed: the request ended "
                               "inside BEGIN without COMMIT, so it was rolled back")
        return results, error

    def _catalog_for(self, ctx: _ExecContext) -> cat.Catalog:
        return self._catalog if ctx.writing else self._published

    def _message(self, message: str, ctx: _ExecContext, row_count: int = 0) -> dict:
        return {"row_count": row_count, "message": message, "as_user": ctx.principal.username}

    def _execute(self, ctx: _ExecContext, s: st.Statement) -> dict:
        if isinstance(s, st.Query):
            return self._execute_query(ctx, s, owner=None)
        if isinstance(s, st.ExecuteAs):
            return self._execute_as(ctx, s)
        if isinstance(s, st.UseNamespace):
            if s.name not in self._catalog_for(ctx).namespaces:
                raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' does not exist")
            ctx.namespace = s.name
            return self._message(f"Using namespace '{s.name}'", ctx)
        if isinstance(s, st.ShowNamespaces):
            return self._internal_select(
                ctx, 'SELECT namespace_id, name, created_at, table_count FROM "system.namespaces" ORDER BY name',
                (), cat.SYSTEM_VIEWS["namespaces"])
        if isinstance(s, st.ShowTables):
            ns = s.namespace
            if ns is not None and ns not in self._catalog_for(ctx).namespaces:
                raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{ns}' does not exist")
            where = "WHERE namespace_id = ?" if ns else ""
            return self._internal_select(
                ctx, f'SELECT namespace_id, table_name, table_type, created_at FROM "system.tables" {where} '
                "ORDER BY namespace_id, table_name", (ns,) if ns else (), cat.SYSTEM_VIEWS["tables"])
        if isinstance(s, st.DescribeTable):
            return self._describe(ctx, s)
        if isinstance(s, st.ClusterStatement):
            raise KalamError("SQL_EXECUTION_ERROR", "CLUSTER statements are executed by the node layer")
        if not ctx.writing:
            raise KalamError("INTERNAL_ERROR", f"{type(s).__name__} needs the write path")
        ctx.ddl_done = True
        handler = {
            st.CreateNamespace: self._create_namespace, st.DropNamespace: self._drop_namespace,
            st.CreateTable: self._create_table, st.DropTable: self._drop_table,
            st.AlterTableAddColumn: self._alter_add, st.AlterTableDropColumn: self._alter_drop,
            st.CreateUser: self._create_user, st.AlterUser: self._alter_user, st.DropUser: self._drop_user,
        }[type(s)]
        return handler(ctx, s)

    # ------------------------------------------------------------------ queries

    def _compiled(self, q: st.Query, ctx: _ExecContext) -> Compiled:
        catalog = self._catalog_for(ctx)
        local = {name: cols for name, (cols, _) in self._local_tables.items()}
        key = (q.sql, ctx.namespace, catalog.version, tuple(local))
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

    def _execute_as(self, ctx: _ExecContext, s: st.ExecuteAs) -> dict:
        target = self._find_user(ctx.conn, s.username)
        if target is None:
            raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' does not exist")
        me = ctx.principal
        allowed = {"system": ("user", "service", "dba", "system"), "dba": ("user", "service", "dba"),
                   "service": ("user", "service")}.get(me.role, ())
        if not (target.role in allowed or target.user_id == me.user_id):
            raise KalamError("PERMISSION_DENIED", f"Role '{me.role}' may not execute as user '{s.username}'")
        assert isinstance(s.inner, st.Query)
        return self._execute_query(ctx, s.inner, owner=target)

    def _execute_query(self, ctx: _ExecContext, q: st.Query, owner: Principal | None) -> dict:
        if q.kind != "select" and not ctx.writing:
            raise KalamError("INTERNAL_ERROR", "write statement on the read path")
        compiled = self._compiled(q, ctx)
        me = ctx.principal
        for info, name, mode in compiled.tables:
            if info is None:
                if name == "system.users" and me.role not in ADMIN_ROLES:
                    raise KalamError("PERMISSION_DENIED", "Reading system.users requires role dba or system")
                continue
            if info.table_type == "SHARED":
                if owner is not None:
                    raise KalamError("SQL_EXECUTION_ERROR",
                                     f"EXECUTE AS USER is not allowed on SHARED table {info.full_name}")
                if me.role == "user" and (mode == "w" or info.options.get("ACCESS_LEVEL") != "PUBLIC"):
                    raise KalamError("PERMISSION_DENIED", f"Role 'user' may not "
                                     f"{'write' if mode == 'w' else 'read'} SHARED table {info.full_name}")
        params = q.params if q.params is not None else ctx.params
        if compiled.max_param > len(params):
            raise KalamError("INVALID_PARAMETER", f"Statement uses ${compiled.max_param} but "
                             f"{len(params)} parameter(s) were given")
        who = owner or me
        binds = {f"p{i}": v for i, v in enumerate(params, 1)}
        binds["_owner"] = who.user_id
        state = ctx.state
        state.username = who.username
        state.owner = who.user_id
        state.last_error = None
        for name in compiled.local_tables:
            self._materialise_local(ctx.conn, name)
        binds["_seq_before"] = self._last_snowflake
        if ctx.writing:
            state.start_statement(steps=limits.WRITE_STEP_BUDGET)
        else:
            state.start_statement(seconds=limits.READ_SECONDS_BUDGET)
        target = compiled.target.storage if compiled.target is not None else None
        try:
            with authorizer.UserScope(state.guard, compiled.allow, target):
                cur = ctx.conn.execute(compiled.sql, binds)
                rows = cur.fetchall() if q.kind == "select" else None
        except sqlite3.Error as e:
            if _environmental(e):
                raise
            if ctx.writing and not ctx.conn.in_transaction:
                raise _TransactionLost() from e
            if q.kind == "insert" and isinstance(e, sqlite3.IntegrityError) and "UNIQUE" in str(e):
                raise self._pk_violation(ctx, compiled, binds, duplicate_in_request=True) from None
            raise self._sql_error(e, ctx, compiled) from None
        finally:
            state.end_statement()
        if q.kind == "select":
            return self._select_result(cur, compiled.types, who.username, rows)
        count = cur.rowcount
        if q.kind == "insert":
            if compiled.row_count >= 0 and count < compiled.row_count:
                raise self._pk_violation(ctx, compiled, binds)
            verb = "Inserted"
        else:
            verb = "Updated" if q.kind == "update" else "Deleted"
        return {"row_count": count, "message": f"{verb} {count} row(s)", "as_user": who.username}

    def _pk_violation(self, ctx: _ExecContext, compiled: Compiled, binds: dict,
                      duplicate_in_request: bool = False) -> KalamError:
        info = compiled.target
        pk = info.primary_key if info else None
        values = []
        for v in compiled.pk_values:
            if v is None:
                values.append(None)
            elif v[0] == "lit":
                values.append(v[1])
            else:
                values.append(binds.get(f"p{v[1]}"))
        shown = None
        seen = set()
        for v in values:  # a key repeated inside the request itself
            if v is not None and v in seen:
                shown = v
                break
            seen.add(v)
        if shown is None and pk is not None:
            # the conflicting live row existed before this statement: rows it wrote have a newer _seq
            owned = info.table_type in cat.OWNED_TYPES
            owner_clause = " AND _owner = ?" if owned else ""
            for v in values:
                if v is None:
                    continue
                args = (v, binds["_seq_before"], binds["_owner"]) if owned else (v, binds["_seq_before"])
                row = ctx.conn.execute(
                    f"SELECT 1 FROM {cat.quote_ident(info.storage)} WHERE {cat.quote_ident(pk)} = ? "
                    f"AND _deleted = 0 AND _seq <= ?{owner_clause}", args).fetchone()
                if row is not None:
                    shown = v
                    break
        shown = "?" if shown is None else shown
        return KalamError("SQL_EXECUTION_ERROR",
                          f"Primary key violation: value '{shown}' already exists in column '{pk}'")

    def _sql_error(self, e: sqlite3.Error, ctx: _ExecContext, compiled: Compiled | None) -> KalamError:
        if ctx.state.last_error is not None:
            return ctx.state.last_error
        msg = str(e)
        if msg.startswith("not authorized") or (msg.startswith("access to ") and msg.endswith(" is prohibited")):
            what = ctx.state.guard.denied if ctx.state.guard is not None else None
            if what and what.startswith("function "):
                return KalamError("INVALID_SQL", f"Function {what[9:]} is not supported")
            return KalamError("PERMISSION_DENIED", f"Statement may not access {what or 'that object'} "
                              "directly; query tables by their namespace.table name")
        if msg in ("string or blob too big", "LIKE or GLOB pattern too complex"):
            return KalamError("SQL_EXECUTION_ERROR", f"{msg}: a value may be at most "
                              f"{limits.MAX_INTERMEDIATE_BYTES} bytes and a LIKE pattern "
                              f"{limits.MAX_LIKE_PATTERN} characters")
        if msg == "interrupted":
            return KalamError("SQL_EXECUTION_ERROR", "Statement exceeded its execution budget and was stopped")
        m = re.match(r"no such column: (.+)", msg)
        if m:
            return KalamError("SQL_EXECUTION_ERROR", f"Column '{m.group(1)}' does not exist")
        m = re.match(r"no such table: (.+)", msg)
        if m:
            return KalamError("TABLE_NOT_FOUND", f"Table '{m.group(1)}' not found")
        m = re.match(r"NOT NULL constraint failed: (.+)", msg)
        if m:
            return KalamError("SQL_EXECUTION_ERROR", f"Column '{m.group(1).rsplit('.', 1)[-1]}' cannot be NULL")
        m = re.match(r"cannot store (\w+) value in (\w+) column (.+)", msg)
        if m:
            col = m.group(3).rsplit(".", 1)[-1]
            return KalamError("SQL_EXECUTION_ERROR", f"Invalid value for column '{col}': "
                              f"a {m.group(1)} value does not fit a {m.group(2)} column")
        if "UNIQUE constraint failed" in msg and compiled is not None and compiled.target is not None:
            return KalamError("SQL_EXECUTION_ERROR", "Primary key violation: the new value already exists "
                              f"in column '{compiled.target.primary_key}'")
        return KalamError("SQL_EXECUTION_ERROR", msg)

    def _select_result(self, cur: sqlite3.Cursor, types: list, username: str, rows=None) -> dict:
        names = [d[0] for d in cur.description or ()]
        if rows is None:
            rows = cur.fetchall()
        col_types = list(types) if len(types) == len(names) else [None] * len(names)
        for j, t in enumerate(col_types):
            if t is None:
                sample = next((r[j] for r in rows if r[j] is not None), None)
                col_types[j] = infer_type(sample) if sample is not None else "Text"
        out_rows = [[encode_cell(v, col_types[j]) for j, v in enumerate(r)] for r in rows]
        return {"schema": [{"name": n, "data_type": t, "index": j} for j, (n, t) in enumerate(zip(names, col_types))],
                "rows": out_rows, "row_count": len(out_rows), "as_user": username}

    def _internal_select(self, ctx: _ExecContext, sql: str, args: tuple, types: dict) -> dict:
        cur = ctx.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return self._select_result(cur, [types.get(n) for n in names], ctx.principal.username)

    def _describe(self, ctx: _ExecContext, s: st.DescribeTable) -> dict:
        ns = s.namespace or ctx.namespace
        info = self._catalog_for(ctx).tables.get((ns, s.name))
        if info is None:
            raise KalamError("TABLE_NOT_FOUND", f"Table '{ns}.{s.name}' not found")
        rows = []
        for i, c in enumerate(info.columns, 1):
            default = None
            if c.default is not None:
                lit = c.default.get("lit")
                if c.data_type == "Boolean" and lit is not None:
                    lit = bool(lit)
                default = f"{c.default['fn']}()" if "fn" in c.default else json.dumps(lit)
            rows.append([c.name, c.data_type, not c.not_null, c.name == info.primary_key, default, i])
        schema = [("column_name", "Text"), ("data_type", "Text"), ("is_nullable", "Boolean"),
                  ("is_primary_key", "Boolean"), ("column_default", "Text"), ("ordinal_position", "Int")]
        return {"schema": [{"name": n, "data_type": t, "index": j} for j, (n, t) in enumerate(schema)],
                "rows": rows, "row_count": len(rows), "as_user": ctx.principal.username}

    # ------------------------------------------------------------------ DDL

    def _bump_catalog(self, ctx: _ExecContext) -> None:
        ctx.conn.execute("UPDATE _kdb_meta SET value = value + 1 WHERE key = 'catalog_version'")
        self._reload_catalog()

    def _create_namespace(self, ctx: _ExecContext, s: st.CreateNamespace) -> dict:
        _require_admin(ctx.principal, "Namespace DDL")
        if s.name == "system":
            raise KalamError("SQL_EXECUTION_ERROR", "Namespace 'system' is reserved")
        if s.name in self._catalog.namespaces:
            if s.if_not_exists:
                return self._message(f"Namespace '{s.name}' already exists", ctx)
            raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' already exists")
        ctx.conn.execute("INSERT INTO _kdb_namespaces VALUES (?, ?, '{}')", (s.name, ctx.state.now_us))
        self._bump_catalog(ctx)
        return self._message(f"Namespace '{s.name}' created successfully", ctx)

    def _drop_namespace(self, ctx: _ExecContext, s: st.DropNamespace) -> dict:
        _require_admin(ctx.principal, "Namespace DDL")
        if s.name not in self._catalog.namespaces:
            if s.if_exists:
                return self._message(f"Namespace '{s.name}' does not exist", ctx)
            raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' does not exist")
        if s.name == "default":
            raise KalamError("SQL_EXECUTION_ERROR", "Namespace 'default' cannot be dropped")
        tables = [t for (ns, _), t in self._catalog.tables.items() if ns == s.name]
        if tables and not s.cascade:
            raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' is not empty ({len(tables)} "
                             "table(s)); use DROP NAMESPACE ... CASCADE")
        for t in sorted(tables, key=lambda t: t.name):
            for sql in cat.drop_table_sql(t):
                ctx.conn.execute(sql)
        ctx.conn.execute("DELETE FROM _kdb_tables WHERE namespace = ?", (s.name,))
        ctx.conn.execute("DELETE FROM _kdb_namespaces WHERE name = ?", (s.name,))
        self._bump_catalog(ctx)
        return self._message(f"Namespace '{s.name}' dropped successfully", ctx)

    def _create_table(self, ctx: _ExecContext, s: st.CreateTable) -> dict:
        ns = s.namespace or ctx.namespace
        if ctx.principal.role == "user" and s.table_type == "SHARED":
            raise KalamError("PERMISSION_DENIED", "Role 'user' may create USER and STREAM tables only")
        if ns == "system":
            raise KalamError("PERMISSION_DENIED", "Tables cannot be created in namespace 'system'")
        if ns not in self._catalog.namespaces:
            raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{ns}' does not exist")
        full = f"{ns}.{s.name}"
        if (ns, s.name) in self._catalog.tables:
            if s.if_not_exists:
                return self._message(f"Table {full} already exists (IF NOT EXISTS)", ctx)
            raise KalamError("SQL_EXECUTION_ERROR", f"Table {full} already exists")
        columns = [_normalise_default(c) for c in s.columns]
        options = dict(s.options)
        if s.table_type == "SHARED":
            options.setdefault("ACCESS_LEVEL", "PRIVATE")
        info = cat.make_table_info(ns, s.name, s.table_type, columns, s.primary_key, options,
                                   ctx.state.now_us, 1)
        for sql in cat.create_table_sql(info):
            ctx.conn.execute(sql)
        ctx.conn.execute("INSERT INTO _kdb_tables VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                         (ns, s.name, s.table_type, ctx.state.now_us, cat.columns_json(columns), s.primary_key,
                          json.dumps(options, sort_keys=True)))
        self._bump_catalog(ctx)
        return self._message(f"{s.table_type.title()} table {full} created successfully", ctx)

    def _existing_table(self, ctx: _ExecContext, ns: str | None, name: str) -> cat.TableInfo | None:
        return self._catalog.tables.get((ns or ctx.namespace, name))

    def _drop_table(self, ctx: _ExecContext, s: st.DropTable) -> dict:
        ns = s.namespace or ctx.namespace
        info = self._existing_table(ctx, ns, s.name)
        if info is None:
            if s.if_exists:
                return self._message(f"Table {ns}.{s.name} does not exist", ctx)
            raise KalamError("TABLE_NOT_FOUND", f"Table '{ns}.{s.name}' not found")
        if s.table_type and s.table_type != info.table_type:
            raise KalamError("SQL_EXECUTION_ERROR", f"Table {info.full_name} is a {info.table_type} table, "
                             f"not {s.table_type}")
        if ctx.principal.role == "user":
            raise KalamError("PERMISSION_DENIED", "Role 'user' may not drop tables")
        for sql in cat.drop_table_sql(info):
            ctx.conn.execute(sql)
        ctx.conn.execute("DELETE FROM _kdb_tables WHERE namespace = ? AND name = ?", (ns, s.name))
        self._bump_catalog(ctx)
        return self._message(f"Table {info.full_name} dropped successfully", ctx)

    def _alter_common(self, ctx: _ExecContext, ns: str | None, name: str) -> cat.TableInfo:
        info = self._existing_table(ctx, ns, name)
        if info is None:
            raise KalamError("TABLE_NOT_FOUND", f"Table '{ns or ctx.namespace}.{name}' not found")
        if ctx.principal.role == "user":
            raise KalamError("PERMISSION_DENIED", "Role 'user' may not alter tables")
        return info

    def _save_columns(self, ctx: _ExecContext, info: cat.TableInfo, columns: list) -> None:
        ctx.conn.execute("UPDATE _kdb_tables SET columns = ?, schema_version = schema_version + 1 "
                         "WHERE namespace = ? AND name = ?", (cat.columns_json(columns), info.namespace, info.name))
        self._bump_catalog(ctx)

    def _alter_add(self, ctx: _ExecContext, s: st.AlterTableAddColumn) -> dict:
        info = self._alter_common(ctx, s.namespace, s.name)
        col = _normalise_default(s.column)
        if col.name in info.by_name:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' already exists in {info.full_name}")
        literal = col.default is not None and "lit" in col.default and col.default["lit"] is not None
        if col.not_null and not literal:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' is NOT NULL and needs a literal "
                             "DEFAULT to fill existing rows")
        ddl = f"ALTER TABLE {cat.quote_ident(info.storage)} ADD COLUMN {cat.column_sql(col)}"
        if literal:
            ddl += f" DEFAULT {cat.sql_literal(col.default['lit'])}"
        ctx.conn.execute(ddl)
        self._save_columns(ctx, info, [*info.columns, col])
        return self._message(f"Table {info.full_name} altered: column '{col.name}' added", ctx)

    def _alter_drop(self, ctx: _ExecContext, s: st.AlterTableDropColumn) -> dict:
        info = self._alter_common(ctx, s.namespace, s.name)
        if s.column not in info.by_name:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{s.column}' does not exist in {info.full_name}")
        if s.column == info.primary_key:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{s.column}' is the primary key and cannot be dropped")
        ctx.conn.execute(f"ALTER TABLE {cat.quote_ident(info.storage)} DROP COLUMN {cat.quote_ident(s.column)}")
        self._save_columns(ctx, info, [c for c in info.columns if c.name != s.column])
        return self._message(f"Table {info.full_name} altered: column '{s.column}' dropped", ctx)

    # ------------------------------------------------------------------ users

    def _find_user(self, conn, username: str) -> Principal | None:
        row = conn.execute("SELECT user_id, username, role FROM _kdb_users WHERE username = ? AND deleted_at IS NULL",
                           (username,)).fetchone()
        return Principal(*row) if row else None

    def _create_user(self, ctx: _ExecContext, s: st.CreateUser) -> dict:
        self.users_version += 1  # credentials caches on this node must re-check
        _require_admin(ctx.principal, "User management")
        if s.role == "system" and ctx.principal.role != "system":
            raise KalamError("PERMISSION_DENIED", "Only role system may create system users")
        if s.password_hash is None:
            raise KalamError("INTERNAL_ERROR", "CREATE USER command without a password hash")
        if self._find_user(ctx.conn, s.username) is not None:
            raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' already exists")
        self._last_snowflake = next_snowflake(self._last_snowflake, ctx.state.now_us // 1000, ctx.state.node_id)
        user_id = f"u_{self._last_snowflake}"
        ctx.conn.execute("INSERT INTO _kdb_users VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                         (user_id, s.username, s.role, s.email, s.password_hash, ctx.state.now_us, ctx.state.now_us))
        return self._message(f"User '{s.username}' created successfully", ctx)

    def _alter_user(self, ctx: _ExecContext, s: st.AlterUser) -> dict:
        self.users_version += 1  # credentials caches on this node must re-check
        target = self._find_user(ctx.conn, s.username)
        if target is None:
            raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' does not exist")
        me = ctx.principal
        if s.role is not None:
            _require_admin(me, "Changing a role")
            if target.user_id == cat.ROOT_USER_ID:
                raise KalamError("SQL_EXECUTION_ERROR", "The role of 'root' cannot be changed")
            if "system" in (s.role, target.role) and me.role != "system":
                raise KalamError("PERMISSION_DENIED", "Only role system may grant or revoke role system")
            ctx.conn.execute("UPDATE _kdb_users SET role = ?, updated_at = ? WHERE user_id = ?",
                             (s.role, ctx.state.now_us, target.user_id))
        else:
            if target.user_id != me.user_id and me.role not in ADMIN_ROLES:
                raise KalamError("PERMISSION_DENIED", "Only dba or system may change another user's password")
            if target.role == "system" and me.role != "system":
                raise KalamError("PERMISSION_DENIED", "Only role system may change a system user's password")
            if s.password_hash is None:
                raise KalamError("INTERNAL_ERROR", "ALTER USER command without a password hash")
            ctx.conn.execute("UPDATE _kdb_users SET password_hash = ?, updated_at = ? WHERE user_id = ?",
                             (s.password_hash, ctx.state.now_us, target.user_id))
        return self._message(f"User '{s.username}' altered successfully", ctx)

    def _drop_user(self, ctx: _ExecContext, s: st.DropUser) -> dict:
        self.users_version += 1  # credentials caches on this node must re-check
        _require_admin(ctx.principal, "User management")
        target = self._find_user(ctx.conn, s.username)
        if target is None:
            if s.if_exists:
                return self._message(f"User '{s.username}' does not exist", ctx)
            raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' does not exist")
        if target.user_id == cat.ROOT_USER_ID or target.user_id == ctx.principal.user_id:
            raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' cannot be dropped")
        if target.role == "system" and ctx.principal.role != "system":
            raise KalamError("PERMISSION_DENIED", "Only role system may drop a system user")
        ctx.conn.execute("UPDATE _kdb_users SET deleted_at = ?, updated_at = ? WHERE user_id = ?",
                         (ctx.state.now_us, ctx.state.now_us, target.user_id))
        return self._message(f"User '{s.username}' dropped successfully", ctx)

    def authenticate(self, username: str, password: str) -> Principal:
        conn, _ = self._reader()
        row = conn.execute("SELECT user_id, username, role, password_hash FROM _kdb_users "
                           "WHERE username = ? AND deleted_at IS NULL", (username,)).fetchone()
        bad = KalamError("INVALID_CREDENTIALS", "Invalid username or password")
        if row is None or not isinstance(password, str):
            raise bad
        user_id, name, role, stored = row
        if stored is None:
            # root without a replicated password: the node's configured root password (not replicated)
            if user_id != cat.ROOT_USER_ID:
                raise bad
            expected = self._root_password or ""
            if not hmac.compare_digest(expected.encode(), password.encode()):
                raise bad
        elif not verify_password(stored, password):
            raise bad
        return Principal(user_id, name, role)

    def principal_for(self, user_id: str) -> Principal | None:
        conn, _ = self._reader()
        row = conn.execute("SELECT user_id, username, role FROM _kdb_users WHERE user_id = ? AND deleted_at IS NULL",
                           (user_id,)).fetchone()
        return Principal(*row) if row else None

    # ------------------------------------------------------------------ node-local system tables

    def register_system_table(self, name: str, columns: list[tuple[str, str]], rows: Callable[[], list[tuple]]):
        name = name.lower()
        if not re.fullmatch(r"[a-z0-9_]+", name) or name in cat.SYSTEM_VIEWS:
            raise ValueError(f"invalid or reserved system table name {name!r}")
        typed = [(c.lower(), TYPE_ALIASES.get(t.upper(), t)) for c, t in columns]
        self._local_tables[name] = (typed, rows)

    def _materialise_local(self, conn: sqlite3.Connection, name: str) -> None:
        cols, rows_fn = self._local_tables[name]
        table = cat.quote_ident(f"system.{name}")
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({', '.join(cat.quote_ident(c) for c, _ in cols)})")
        conn.execute(f"DELETE FROM temp.{table}")
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
        conn, _ = self._reader()
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


def _require_admin(principal: Principal, what: str) -> None:
    if principal.role not in ADMIN_ROLES:
        raise KalamError("PERMISSION_DENIED", f"{what} requires role dba or system")


def _normalise_default(col: st.ColumnDef) -> st.ColumnDef:
    """Check a literal DEFAULT against the column type once, at DDL time, and store it normalised."""
    if col.default is None or "lit" not in col.default or col.default["lit"] is None:
        return col
    from kalamdb.sql.types import COERCE_FN

    fn = COERCE_FN.get(col.data_type)
    value = col.default["lit"]
    if fn is not None:
        value = COERCERS[fn](value)
    elif col.data_type in ("BigInt",) and not isinstance(value, int):
        raise KalamError("SQL_EXECUTION_ERROR", f"DEFAULT {value!r} is not a valid BigInt")
    elif col.data_type in ("Float", "Double") and not isinstance(value, (int, float)):
        raise KalamError("SQL_EXECUTION_ERROR", f"DEFAULT {value!r} is not a valid {col.data_type}")
    return st.ColumnDef(col.name, col.data_type, col.not_null, {"lit": value}, col.primary_key, col.type_args)
