"""The replicated state machine: SQL requests are prepared on the node that receives them, turned
into one deterministic command, and applied in log order on every replica's SQLite file.

This module is the engine's facade: the connections, the catalog as writers and readers see it, the
compile cache, the apply batch (one transaction, publishing) and reads. The work itself lives by
concept beside it: prepare.py (a request's checks before the log), commands.py (the command
format), executor.py (the statement loop, SELECT), writes.py (two-phase INSERT/UPDATE/DELETE),
ddl.py, users.py, changes.py (the feed) and change_log.py (the durable change log), compile.py +
authorizer.py (what a statement means, and what it may touch), local_tables.py (node-local views),
snapshots.py (digests, snapshots).

Threads: apply/apply_batch run on ONE writer thread with the writer connection; execute_read,
digest and authenticate use per-thread reader connections (WAL mode, so reads never block writes)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from kalamdb.engine import (
    authorizer,
    change_log,
    commands,
    executor,
    localviews,
    snapshots,
    sysviews,
    topics,
    users,
)
from kalamdb.engine import catalog as cat
from kalamdb.engine.changes import (
    CHANGES_SQL,
    Applied,
    Change,
    ChangeFeed,
    FeedEvent,
    Reset,
    prunes_at,
)
from kalamdb.engine.compile import Compiled, compile_query
from kalamdb.engine.functions import FnState, register
from kalamdb.engine.ids import next_snowflake
from kalamdb.engine.light import MAX_BATCH_BYTES as MAX_LIGHT_BATCH_BYTES
from kalamdb.engine.light import MAX_ENTRIES as MAX_LIGHT_ENTRIES
from kalamdb.engine.light import LightCommands
from kalamdb.engine.local_tables import LocalTables
from kalamdb.engine.prepare import prepare as prepare_request
from kalamdb.engine.types import ExecContext, Outcome, Prepared, Principal
from kalamdb.engine.writes import TemplateCache
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.parser import ParseCache
from kalamdb.sql.types import SQL_NAMES

_catalog_tokens = iter(range(1, 1 << 62))

__all__ = ["Database", "Outcome", "Prepared", "Principal"]

CHECKPOINT_COMMITS = 256  # a WAL checkpoint after this many write transactions ...
CHECKPOINT_CHANGES = 4096  # ... or this many changed rows, whichever comes first
# where a batch leaves the replica (its applied index and last snowflake), in one statement
_SAVE_POSITION = ("UPDATE _kdb_meta SET value = CASE key WHEN 'applied_index' THEN ?1 ELSE ?2 END "
                  "WHERE key IN ('applied_index', 'last_snowflake')")


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
        self._light = LightCommands(self._parse_cache)
        self._noop = commands.noop_command()
        self._commits_since_checkpoint = 0
        self._changes_at_checkpoint = 0  # the writer's total_changes when the WAL was last checkpointed
        self._decoded: dict[int, tuple[bytes, dict]] = {}  # by index: commands `light_batch` decoded
        self._compile_cache: OrderedDict[tuple, Compiled] = OrderedDict()
        self._compile_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._local = LocalTables()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._tls = threading.local()
        self._closed = False
        self._reads_stopped = threading.Event()
        self._applied_index = 0  # loaded from the file by _load_state
        self._last_snowflake = 0

        self._wconn = self._connect()
        # The writer checkpoints the WAL itself, at the start of a batch (`_checkpoint_if_due`), so
        # a batch applied on a request loop never runs one inside its COMMIT (engine/light.py).
        self._wconn.execute("PRAGMA wal_autocheckpoint=0")
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
            state = FnState(None, self.node_id, self._reads_stopped)
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
        """Parse and check a request on the node that received it (engine/prepare.py): everything
        that can be refused without applying is refused here, before any costly work or log entry."""
        return prepare_request(self, sql, params, namespace, principal)

    def compiled(self, q: st.Query, ctx: ExecContext) -> Compiled:
        catalog = self.catalog_for(ctx)
        local = self._local.columns
        key = (q.sql, ctx.namespace, catalog.version, self._local.version)
        memo = q.compiled_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        with self._compile_lock:
            hit = self._compile_cache.get(key)
            if hit is not None:
                self._compile_cache.move_to_end(key)
                q.compiled_memo = (key, hit)
                return hit
        if q.ast is None:
            q.ast = self._parse_cache.parse(q.sql)
        compiled = compile_query(q.ast, q.kind, catalog, ctx.namespace, local)
        with self._compile_lock:
            self._compile_cache[key] = compiled
            if len(self._compile_cache) > 2048:
                self._compile_cache.popitem(last=False)
        q.compiled_memo = (key, compiled)
        return compiled

    # ------------------------------------------------------------------ commands (engine/commands.py)

    def to_command(self, prepared: Prepared, *, now_us: int, node_id: int) -> bytes:
        return commands.sql_command(prepared, now_us=now_us, node_id=node_id)

    @staticmethod
    def noop_command() -> bytes:
        """A command that changes nothing but the applied index (Raft no-op and config entries)."""
        return commands.noop_command()

    def expiry_command(self, now_us: int) -> bytes | None:
        conn, _ = self.reader()
        return commands.expiry_command(conn, self._published, now_us)

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, command: bytes) -> Outcome:
        return self.apply_batch([(index, command)])[0]

    def light_batch(self, items: list[tuple[int, bytes]]) -> bool:
        """True when applying these commands is cheap, with a cost bounded by their size and known
        without running them (engine/light.py), so a node may apply them on its request loop. Call
        it from one thread only (the verdicts it remembers are not locked)."""
        if len(items) > MAX_LIGHT_ENTRIES or self.topics.routes or self._checkpoint_due():
            return False
        noop = self._noop
        light = self._light
        last = self._applied_index
        size = 0
        decoded: dict[int, tuple[bytes, dict]] = {}
        for index, command in items:
            if index <= last:
                continue
            size += len(command)
            cmd = None if size > MAX_LIGHT_BATCH_BYTES or prunes_at(index) else light.check(command, noop)
            if cmd is None:
                return False
            decoded[index] = (command, cmd)
        self._decoded = decoded  # for the apply that follows on this thread: no second decode
        return True

    def _checkpoint_due(self) -> bool:
        return (self._commits_since_checkpoint >= CHECKPOINT_COMMITS
                or self._wconn.total_changes - self._changes_at_checkpoint >= CHECKPOINT_CHANGES)

    def _checkpoint_if_due(self) -> None:
        """(writer, between transactions) Copy the WAL into the database file, as SQLite's own
        autocheckpoint would after ~1,000 pages; PASSIVE: readers are never blocked."""
        if self._checkpoint_due():
            self._wconn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._commits_since_checkpoint, self._changes_at_checkpoint = 0, self._wconn.total_changes

    def apply_batch(self, items: list[tuple[int, bytes]]) -> list[Outcome]:
        """Apply commands in log order in ONE transaction; then publish their changes in order."""
        with self._write_lock:
            self._checkpoint_if_due()
            self._commits_since_checkpoint += 1
            failed: dict[int, KalamError] = {}
            while True:
                try:
                    outcomes, events = self._apply_batch_once(items, failed)
                    break
                except executor.TransactionLost as lost:
                    failed[lost.args[0]] = KalamError(
                        "SQL_EXECUTION_ERROR", "Statement exceeded its execution budget and was stopped")
        self._decoded = {}
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
                    outcome, ctx = self._apply_command(index, command)
                if ctx is not None:
                    pending.extend(ctx.changes)
                    logged.extend(ctx.changes)
                    if ctx.events:
                        events.append(Applied(first, index, tuple(pending)))
                        pending, first = [], 0
                        events.extend(ctx.events)
                if prunes_at(index):
                    change_log.append(conn, logged)
                    change_log.prune(conn)
                self._applied_index = index
                outcomes.append(outcome)
            change_log.append(conn, logged)
            conn.execute(_SAVE_POSITION, (self._applied_index, self._last_snowflake))
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

    def _apply_command(self, index: int, command: bytes) -> tuple[Outcome, ExecContext | None]:
        """(writer, inside the batch transaction) One command, leaving nothing behind if it fails.
        A command of several statements (or an expiry) runs in a savepoint of its own. A command of
        one statement needs none: the executor undoes a failed statement itself (its statement
        savepoint, or SQLite's own statement rollback), and decoding writes nothing. Savepoints are
        not free: each is a SQLite call that releases and retakes the GIL (docs/PERFORMANCE.md)."""
        conn = self._wconn
        guarded = False
        try:
            pre = self._decoded.pop(index, None)
            cmd = pre[1] if pre is not None and pre[0] is command else commands.decode_command(command)
            kind = cmd.get("kind")
            if kind == "noop":  # log entries that only advance the applied index
                return Outcome([], None), None
            stmts = [self._from_wire(w) for w in cmd["stmts"]] if kind != "expire" else []
            guarded = len(stmts) != 1
            if guarded:
                conn.execute("SAVEPOINT kdb_cmd")
            outcome, ctx = self._apply_one(index, cmd, stmts)
            if guarded:
                conn.execute("RELEASE kdb_cmd")
            return outcome, ctx
        except Exception as e:
            if executor.environmental(e) or not conn.in_transaction:
                raise executor.TransactionLost(index) if not conn.in_transaction else e from e
            if guarded:
                conn.execute("ROLLBACK TO kdb_cmd")
                conn.execute("RELEASE kdb_cmd")
            self.reload_catalog()
            err = e if isinstance(e, KalamError) else KalamError(
                "INTERNAL_ERROR", f"Command could not be applied: {type(e).__name__}: {e}")
            return Outcome([], err), None

    def _apply_one(self, index: int, cmd: dict, stmts: list[st.Statement]) -> tuple[Outcome, ExecContext | None]:
        state = self._wstate
        state.reset(int(cmd["now"]), int(cmd.get("seed", 0)))
        state.node_id = int(cmd.get("node", self.node_id))
        if cmd["kind"] == "expire":
            return commands.apply_expiry(self._wconn, self._catalog, state.now_us), None
        user_id, username, role = cmd["user"]
        principal = Principal(user_id, username, role)
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
        return change_log.read_since(conn, table, owner, after_seq, limit)

    # ------------------------------------------------------------------ users

    def authenticate(self, username: str, password: str) -> Principal:
        return users.authenticate(self, username, password)

    def principal_for(self, user_id: str) -> Principal | None:
        return users.principal_for(self, user_id)

    # ------------------------------------------------------------------ node-local views (engine/local_tables.py)

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
        self._local.register(full_name, columns, rows)

    def system_columns(self) -> dict[str, list[tuple[str, str]]]:
        """Every system view's columns with their SQL type names, by full name (information_schema)."""
        out = {f"system.{name}": [(c, SQL_NAMES.get(t, t.upper())) for c, t in types.items()]
               for name, types in cat.SYSTEM_VIEWS.items()}
        out.update(self._local.sql_columns())
        return dict(sorted(out.items()))

    def materialise_local(self, conn: sqlite3.Connection, name: str) -> None:
        self._local.materialise(conn, name)

    # ------------------------------------------------------------------ digest and snapshots (engine/snapshots.py)

    def digest(self) -> str:
        """SHA-256 over every replicated table (schema and rows in rowid order) and view."""
        return self.digest_with_index()[1]

    def digest_with_index(self) -> tuple[int, str]:
        """(applied index, digest) read in ONE read transaction, so the pair is consistent even
        while the writer keeps applying."""
        conn, _ = self.reader()
        return snapshots.digest_with_index(conn)

    def snapshot_to(self, path) -> int:
        with self._write_lock:
            return snapshots.backup_to(self._wconn, Path(path))

    def restore_from(self, path) -> None:
        self.users_version += 1
        with self._write_lock:
            snapshots.restore_into(self._wconn, Path(path))
            with self._compile_lock:
                self._compile_cache.clear()
            self._load_state()
        self.feed.publish(Reset(self._applied_index))

    def stop_reads(self) -> None:
        """Shutting down: reads running now stop at their next progress check (within
        PROGRESS_EVERY VM steps) and answer 503, so a stop never waits for a long query."""
        self._reads_stopped.set()

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

