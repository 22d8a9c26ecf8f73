"""Running a request's statements: the statement loop with its savepoints (BEGIN ... COMMIT inside
one request), dispatch by statement kind, SELECT execution under the authorizer and the result
limits, and turning SQLite's errors into the API's."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from kalamdb.engine import alter, authorizer, ddl, limits, logins, storage, topics, users, writes
from kalamdb.engine import catalog as cat
from kalamdb.engine.compile import Compiled
from kalamdb.engine.types import ADMIN_ROLES, ExecContext, Principal, guard_of, may_access_shared, message
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.topics import TopicStatement
from kalamdb.sql.types import encode_cell, infer_type

if TYPE_CHECKING:
    from kalamdb.engine.database import Database

# SQLite failures caused by this machine (not by the command): they must not be recorded as the
# command's deterministic outcome, so they abort the whole batch instead
_ENVIRONMENTAL = ("disk i/o error", "database or disk is full", "database is locked", "readonly database",
                  "unable to open", "out of memory", "file is not a database", "disk image is malformed")


class TransactionLost(Exception):
    """SQLite rolled back the whole batch transaction (an interrupted write statement does that):
    the batch is replayed with the offending command marked failed."""


def environmental(e: BaseException) -> bool:
    if isinstance(e, (TransactionLost, OSError)):
        return True  # OSError: writing a flushed file failed on this machine (engine/storage.py)
    return isinstance(e, sqlite3.Error) and any(m in str(e).lower() for m in _ENVIRONMENTAL)


_DDL: dict[type, Callable[..., dict]] = {
    st.CreateNamespace: ddl.create_namespace, st.DropNamespace: ddl.drop_namespace,
    st.CreateTable: ddl.create_table, st.DropTable: ddl.drop_table,
    st.AlterTableAddColumn: ddl.alter_add, st.AlterTableDropColumn: ddl.alter_drop,
    st.CreateUser: users.create_user, st.AlterUser: users.alter_user, st.DropUser: users.drop_user,
    st.AlterTable: alter.alter_table, st.CreateStorage: storage.create_storage,
    st.AlterStorage: storage.alter_storage, st.DropStorage: storage.drop_storage,
    st.StorageFlush: storage.storage_flush, st.StorageCompact: storage.storage_compact, st.KillJob: storage.kill_job,
}


def run(db: Database, ctx: ExecContext, stmts: list[st.Statement]) -> tuple[list[dict], KalamError | None]:
    """Run statements in order: each in a savepoint (a failing one leaves nothing behind; a one-row
    INSERT needs none, see `one_sqlite_write`), BEGIN opens a savepoint that COMMIT releases and
    ROLLBACK (or an error, or the end of the request) undoes. Row changes and feed events of undone
    statements are dropped with them."""
    conn = ctx.conn
    results: list[dict] = []
    txn_mark: tuple[int, int] | None = None  # (changes, events) recorded when BEGIN ran
    error: KalamError | None = None

    def undo_txn() -> None:
        assert txn_mark is not None
        if ctx.writing:
            conn.execute("ROLLBACK TO kdb_txn")
            conn.execute("RELEASE kdb_txn")
            if ctx.ddl_done:
                db.reload_catalog()
        del ctx.changes[txn_mark[0]:]
        del ctx.events[txn_mark[1]:]

    for i, s in enumerate(stmts, 1):
        if isinstance(s, st.Begin):
            if txn_mark is not None:
                error = KalamError("SQL_EXECUTION_ERROR", f"Statement {i} failed: a transaction is already open")
                break
            if ctx.writing:
                conn.execute("SAVEPOINT kdb_txn")
            txn_mark = (len(ctx.changes), len(ctx.events))
            results.append(message("Transaction started", ctx))
            continue
        if isinstance(s, (st.Commit, st.Rollback)):
            if txn_mark is None:
                results.append(message("No transaction in progress", ctx))
                continue
            if isinstance(s, st.Rollback):
                undo_txn()
            elif ctx.writing:
                conn.execute("RELEASE kdb_txn")
            txn_mark = None
            results.append(message(
                "Transaction committed" if isinstance(s, st.Commit) else "Transaction rolled back", ctx))
            continue
        marks = (len(ctx.changes), len(ctx.events))
        savepoint = ctx.writing and not one_sqlite_write(db, ctx, s)
        if savepoint:
            conn.execute("SAVEPOINT kdb_stmt")
        try:
            if txn_mark is not None:
                _refuse_stream_in_transaction(db, ctx, s)
            results.append(execute(db, ctx, s))
            if ctx.writing:
                topics.publish(db, ctx, marks[0])  # the statement's row changes -> topic messages
            if savepoint:
                conn.execute("RELEASE kdb_stmt")
        except KalamError as e:
            error = KalamError(e.code, f"Statement {i} failed: {e.message}", details=e.details,
                               sensitive=e.sensitive)
        except Exception as e:
            if environmental(e):
                raise  # not the command's fault: abort the batch, nothing of it commits
            error = KalamError("INTERNAL_ERROR", f"Statement {i} failed: {type(e).__name__}: {e}")
        if error is not None:
            del ctx.changes[marks[0]:]
            del ctx.events[marks[1]:]
            if ctx.writing:
                if not conn.in_transaction:
                    raise TransactionLost()
                if savepoint:
                    conn.execute("ROLLBACK TO kdb_stmt")
                    conn.execute("RELEASE kdb_stmt")
                if txn_mark is None and ctx.ddl_done:
                    db.reload_catalog()
            if txn_mark is not None:
                undo_txn()
            txn_mark = None
            break
    if txn_mark is not None:
        undo_txn()
        error = KalamError("SQL_EXECUTION_ERROR", "Transaction was not committed: the request ended "
                           "inside BEGIN without COMMIT, so it was rolled back")
    return results, error


def one_sqlite_write(db: Database, ctx: ExecContext, s: st.Statement) -> bool:
    """Is this statement's whole effect one SQLite statement of one row, with nothing else written
    (an INSERT of a single VALUES row of literals and parameters, no topic route on its table)? If
    it fails, SQLite's own statement rollback (conflict resolution ABORT) has already undone it, so
    it needs no savepoint of ours: two SQLite calls fewer per write, each of which releases and
    retakes the GIL. Anything else, and anything this cannot decide, gets the savepoint."""
    q = s.inner if isinstance(s, st.ExecuteAs) else s
    if not isinstance(q, st.Query) or q.kind != "insert":
        return False
    try:
        compiled = db.compiled(q, ctx)
    except Exception:  # noqa: BLE001 - the statement's own run reports it
        return False
    rows = compiled.pure_rows
    target = compiled.target
    return (rows is not None and len(rows) == 1 and not compiled.local_tables and target is not None
            and target.full_name not in db.topics.routes)


def _refuse_stream_in_transaction(db: Database, ctx: ExecContext, s: st.Statement) -> None:
    """As upstream: STREAM tables are not transactional, so writing one inside BEGIN ... COMMIT is
    refused (and the transaction with it)."""
    q = s.inner if isinstance(s, st.ExecuteAs) else s
    if isinstance(q, st.Query) and q.kind != "select":
        target = db.compiled(q, ctx).target
        if target is not None and target.table_type == "STREAM":
            raise KalamError("SQL_EXECUTION_ERROR", "stream tables are not supported inside explicit transactions")


def execute(db: Database, ctx: ExecContext, s: st.Statement) -> dict:
    if isinstance(s, st.Query):
        return execute_query(db, ctx, s, owner=None)
    if isinstance(s, TopicStatement):
        return topics.execute(db, ctx, s)
    if isinstance(s, logins.LOGIN_STATEMENTS):
        return logins.execute(db, ctx, s)
    if isinstance(s, st.ExecuteAs):
        target = users.execute_as_target(ctx, s.username)
        assert isinstance(s.inner, st.Query)
        return execute_query(db, ctx, s.inner, owner=target)
    if isinstance(s, st.UseNamespace):
        if s.name not in db.catalog_for(ctx).namespaces:
            raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' does not exist")
        ctx.namespace = s.name
        return message(f"Using namespace '{s.name}'", ctx)
    if isinstance(s, st.ShowNamespaces):
        return internal_select(
            ctx, 'SELECT namespace_id, name, created_at, table_count FROM "system.namespaces" ORDER BY name',
            (), cat.SYSTEM_VIEWS["namespaces"])
    if isinstance(s, st.ShowTables):
        ns = s.namespace
        if ns is not None and ns not in db.catalog_for(ctx).namespaces:
            raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{ns}' does not exist")
        where = "WHERE namespace_id = ?" if ns else ""
        return internal_select(
            ctx, f'SELECT namespace_id, table_name, table_type, created_at FROM "system.tables" {where} '
            "ORDER BY namespace_id, table_name", (ns,) if ns else (), cat.SYSTEM_VIEWS["tables"])
    if isinstance(s, st.DescribeTable):
        return ddl.describe(db, ctx, s)
    if isinstance(s, st.ShowStorages):
        if ctx.principal.role not in ADMIN_ROLES:
            raise KalamError("PERMISSION_DENIED", "Unauthorized: SHOW STORAGES requires DBA or System role")
        return internal_select(ctx, 'SELECT * FROM "system.storages" ORDER BY storage_id', (),
                               cat.SYSTEM_VIEWS["storages"])
    if isinstance(s, st.ClusterStatement):
        raise KalamError("SQL_EXECUTION_ERROR", "CLUSTER statements are executed by the node layer")
    if not ctx.writing:
        raise KalamError("INTERNAL_ERROR", f"{type(s).__name__} needs the write path")
    ctx.ddl_done = True
    return _DDL[type(s)](db, ctx, s)


def check_access(compiled: Compiled, me: Principal, owner: Principal | None) -> None:
    """Table-level permissions of a compiled statement (rows are scoped by the row views)."""
    for info, name, mode in compiled.tables:
        if info is None:  # system.* and information_schema.*: as upstream, for dba and system only
            if me.role not in ADMIN_ROLES:
                raise KalamError("PERMISSION_DENIED", f"Access denied: Role '{me.role.title()}' cannot access "
                                 f"table '{name}'. System tables require 'dba' or 'system' role.")
            continue
        if info.table_type == "SHARED":
            if owner is not None:
                raise KalamError("SQL_EXECUTION_ERROR",
                                 f"EXECUTE AS USER is not allowed on SHARED table {info.full_name}")
            if not may_access_shared(me.role, info.options.get("ACCESS_LEVEL"), write=mode == "w"):
                level = str(info.options.get("ACCESS_LEVEL", "PRIVATE")).title()
                raise KalamError("PERMISSION_DENIED", f"Access denied: Role '{me.role.title()}' cannot access table "
                                 f"'{info.full_name}'. Shared table {'write' if mode == 'w' else 'access'} "
                                 f"denied (access_level={level})")


def execute_query(db: Database, ctx: ExecContext, q: st.Query, owner: Principal | None) -> dict:
    if q.kind != "select" and not ctx.writing:
        raise KalamError("INTERNAL_ERROR", "write statement on the read path")
    compiled = db.compiled(q, ctx)
    me = ctx.principal
    check_access(compiled, me, owner)
    params = q.params if q.params is not None else ctx.params
    if compiled.max_param > len(params):
        raise KalamError("INVALID_PARAMETER", f"Statement uses ${compiled.max_param} but "
                         f"{len(params)} parameter(s) were given")
    who = owner or me
    binds = {f"p{i}": v for i, v in enumerate(params, 1)} if compiled.sql else {}
    state = ctx.state
    state.username = who.username
    state.owner = who.user_id
    state.last_error = None
    for name in compiled.local_tables:
        db.materialise_local(ctx.conn, name)
    if q.kind == "select":
        return _select(ctx, compiled, binds, who)
    if q.kind == "insert":
        count = writes.insert(db, ctx, compiled, binds, params, who, sql_error)
        verb = "Inserted"
    elif q.kind == "update":
        count = writes.update(db, ctx, compiled, binds, who, sql_error)
        verb = "Updated"
    else:
        count = writes.delete(db, ctx, compiled, binds, who, sql_error)
        verb = "Deleted"
    return {"row_count": count, "message": f"{verb} {count} row(s)", "as_user": who.username}


def _select(ctx: ExecContext, compiled: Compiled, binds: dict, who: Principal) -> dict:
    state = ctx.state
    if ctx.writing:
        state.start_statement(steps=limits.WRITE_STEP_BUDGET)
    else:
        state.start_statement(seconds=limits.READ_SECONDS_BUDGET)
    try:
        with authorizer.UserScope(guard_of(ctx), compiled.allow):
            cur = ctx.conn.execute(compiled.sql, binds)
            rows = _bounded_fetch(cur)
    except sqlite3.Error as e:
        raise sql_error(e, ctx, compiled) from None
    finally:
        state.end_statement()
    return select_result(cur, compiled.types, who.username, rows)


def _bounded_fetch(cur: sqlite3.Cursor) -> list:
    """All rows, unless the result would pass MAX_RESULT_ROWS or (roughly, as JSON) MAX_RESULT_BYTES."""
    rows: list = []
    size = 0
    while True:
        chunk = cur.fetchmany(1000)
        if not chunk:
            return rows
        rows.extend(chunk)
        for r in chunk:
            for v in r:
                size += len(v) + 2 if isinstance(v, (str, bytes)) else 8
        if len(rows) > limits.MAX_RESULT_ROWS or size > limits.MAX_RESULT_BYTES:
            raise KalamError("SQL_EXECUTION_ERROR", "Result too large: more than "
                             f"{limits.MAX_RESULT_ROWS} rows or {limits.MAX_RESULT_BYTES // (1024 * 1024)} MiB; "
                             "add a LIMIT or a narrower WHERE")


def select_result(cur: sqlite3.Cursor, types: list, username: str, rows=None) -> dict:
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


def internal_select(ctx: ExecContext, sql: str, args: tuple, types: dict) -> dict:
    cur = ctx.conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return select_result(cur, [types.get(n) for n in names], ctx.principal.username)


def sql_error(e: sqlite3.Error, ctx: ExecContext, compiled: Compiled | None) -> Exception:
    """The API error for a SQLite error of a user statement (or the batch-level one to re-raise)."""
    if environmental(e):
        return e
    if ctx.writing and not ctx.conn.in_transaction:
        return TransactionLost()
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
        if not ctx.writing and ctx.state.stopped_by_shutdown():
            return KalamError("CLUSTER_UNAVAILABLE", "The node is shutting down and stopped this read; retry it "
                              "on another node", status=503, details="definite: a read changes nothing")
        return KalamError("SQL_EXECUTION_ERROR", "Statement exceeded its execution budget and was stopped")
    m = re.match(r"no such column: (.+)", msg)
    if m:
        return KalamError("SQL_EXECUTION_ERROR", f"Column '{m.group(1)}' does not exist", sensitive=True)
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
    return KalamError("SQL_EXECUTION_ERROR", msg, sensitive=True)
