"""INSERT, UPDATE and DELETE in two phases, so user SQL never writes and every change is explicit.

Phase 1 runs the user's part of the statement as a read, under the authorizer and the write step
budget: the VALUES or SELECT of an INSERT, or for UPDATE/DELETE a SELECT over the target's row
view returning each matching row (rowid, old values, new values). INSERTs of literals and
parameters skip phase 1 (their values are known without SQL). Phase 2 writes the rows with fixed
templates whose only inputs are bound values: no user expression reaches a statement that writes.

Because the executor holds every old and new value, it knows exactly what changed: it skips rows
an UPDATE leaves as they were (upstream reports those as not updated), and records one `Change`
per row for the change log and feed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kalamdb.engine import authorizer, limits
from kalamdb.engine import catalog as cat
from kalamdb.engine.changes import Change
from kalamdb.engine.compile import Compiled
from kalamdb.engine.ids import ulid, uuid_v7
from kalamdb.engine.types import ExecContext, Principal, guard_of
from kalamdb.engine.values import coerce_column, coercer
from kalamdb.errors import KalamError
from kalamdb.sql.statements import ColumnDef

if TYPE_CHECKING:
    from kalamdb.engine.database import Database


class TemplateCache:
    """The phase-2 statements of UPDATE and DELETE, by (storage, schema version, kind, columns)."""

    def __init__(self) -> None:
        self._items: dict[tuple, str] = {}

    def get(self, key: tuple, build) -> str:
        sql = self._items.get(key)
        if sql is None:
            if len(self._items) > 4096:
                self._items.clear()
            sql = self._items[key] = build()
        return sql


def _insert_template(info: cat.TableInfo) -> str:
    names = [c.name for c in info.columns] + ["_seq", "_deleted"]
    if info.table_type in cat.OWNED_TYPES:
        names.append("_owner")
    if info.table_type == "STREAM":
        names.append("_ts")
    q = cat.quote_ident
    sql = (f"INSERT INTO {q(info.storage)} ({', '.join(q(n) for n in names)}) "
           f"VALUES ({', '.join('?' for _ in names)})")
    if info.primary_key:
        key = [q(info.primary_key)]
        if info.table_type in cat.OWNED_TYPES:
            key.insert(0, "_owner")
        sets = ", ".join(f"{q(n)} = excluded.{q(n)}" for n in names if n != "_owner")
        # a soft-deleted row with the same key is replaced; a live one makes the row a no-op, which
        # the executor sees (fewer rows written than given) and reports as a primary key violation
        sql += f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets} WHERE {q(info.storage)}._deleted = 1"
    return sql


def _phase1(ctx: ExecContext, compiled: Compiled, binds: dict, sql_error) -> list[tuple]:
    state = ctx.state
    state.start_statement(steps=limits.WRITE_STEP_BUDGET)
    try:
        with authorizer.UserScope(guard_of(ctx), compiled.allow):
            cur = ctx.conn.execute(compiled.sql, binds)
            rows = cur.fetchmany(limits.MAX_WRITE_ROWS + 1)
    except sqlite3.Error as e:
        raise sql_error(e, ctx, compiled) from None
    finally:
        state.end_statement()
    if len(rows) > limits.MAX_WRITE_ROWS:
        raise too_many_rows(compiled)
    return rows


def _target(compiled: Compiled) -> cat.TableInfo:
    if compiled.target is None:
        raise KalamError("INTERNAL_ERROR", f"{compiled.kind.upper()} compiled without a target table")
    return compiled.target


def too_many_rows(compiled: Compiled) -> KalamError:
    return KalamError("SQL_EXECUTION_ERROR", f"Statement would write more than {limits.MAX_WRITE_ROWS} rows of "
                      f"{compiled.target.full_name if compiled.target else 'its table'}; split it into smaller "
                      "statements (limits: MAX_WRITE_ROWS)")


def _default(db: Database, ctx: ExecContext, col) -> object:
    d = col.default
    if d is None:
        return None
    if "lit" in d:
        return d["lit"]
    state = ctx.state
    fn = d["fn"]
    if fn == "NOW":
        return state.now_us
    if fn == "SNOWFLAKE_ID":
        return db.next_seq(state.now_us // 1000, state.node_id)
    if fn == "UUID_V7":
        return uuid_v7(state.rng, state.now_us // 1000)
    if fn == "ULID":
        return ulid(state.rng, state.now_us // 1000)
    if fn == "CURRENT_USER":
        return state.username
    raise KalamError("INTERNAL_ERROR", f"Unknown DEFAULT function {fn}")


class _InsertPlan:
    """What an INSERT does per row, worked out once per compiled statement: for each table column,
    where its value comes from and how it is coerced; and the phase-2 template."""

    __slots__ = ("columns", "owned", "sql", "stream", "table", "table_type")

    def __init__(self, compiled: Compiled):
        info = _target(compiled)
        given = {name: i for i, name in enumerate(compiled.columns)}
        #: per table column: (name, index in the given values or -1, coercer, default column or value)
        self.columns: list[tuple[str, int, Callable | None, object]] = []
        for col in info.columns:
            i = given.get(col.name)
            if i is not None:
                self.columns.append((col.name, i, coercer(col), None))
            elif col.default is not None and "fn" in col.default:
                self.columns.append((col.name, -1, None, col))  # generated to fit (a snowflake in INT AUTO_INCREMENT)
            else:
                value = coerce_column(col, col.default["lit"] if col.default is not None else None)
                self.columns.append((col.name, -1, None, value))
        self.owned = info.table_type in cat.OWNED_TYPES
        self.stream = info.table_type == "STREAM"
        self.table, self.table_type = info.full_name, info.table_type
        self.sql = _insert_template(info)


def insert(db: Database, ctx: ExecContext, compiled: Compiled, binds: dict, params: list, who: Principal,
           sql_error) -> int:
    info = _target(compiled)
    plan = compiled.plan
    if not isinstance(plan, _InsertPlan):
        plan = compiled.plan = _InsertPlan(compiled)
    raw: Sequence[Sequence]
    if compiled.pure_rows is not None:
        raw = [[v if kind == "v" else params[int(v) - 1] for kind, v in row]  # type: ignore[call-overload]
               for row in compiled.pure_rows]
    else:
        raw = _phase1(ctx, compiled, binds, sql_error)
        width = len(compiled.columns)
        if raw and len(raw[0]) != width:
            raise KalamError("SQL_EXECUTION_ERROR", f"INSERT has {width} column(s) but its SELECT returns "
                             f"{len(raw[0])}")
    if len(raw) > limits.MAX_WRITE_ROWS:
        raise too_many_rows(compiled)
    state = ctx.state
    now_ms = state.now_us // 1000
    tuples = []
    rows = []
    for values in raw:
        row = {}
        for name, i, coerce, default in plan.columns:
            if coerce is not None:
                row[name] = coerce(values[i])
            elif isinstance(default, ColumnDef):
                row[name] = _default(db, ctx, default)
            else:
                row[name] = default
        seq = db.next_seq(now_ms, state.node_id)
        t = [*row.values(), seq, 0]
        if plan.owned:
            t.append(who.user_id)
        if plan.stream:
            t.append(state.now_us)
        tuples.append(t)
        rows.append((seq, row))
    if not tuples:
        return 0
    try:
        if len(tuples) == 1:
            written = ctx.conn.execute(plan.sql, tuples[0]).rowcount
        else:
            written = ctx.conn.executemany(plan.sql, tuples).rowcount
    except sqlite3.IntegrityError as e:
        if "UNIQUE" in str(e):
            raise pk_violation(ctx, info, [r for _, r in rows], who, rows[0][0]) from None
        raise sql_error(e, ctx, compiled) from None
    if written < len(tuples):
        raise pk_violation(ctx, info, [r for _, r in rows], who, rows[0][0])
    owner = who.user_id if plan.owned else None
    changes, index, table, table_type = ctx.changes, ctx.index, plan.table, plan.table_type
    for seq, row in rows:
        row["_seq"] = seq
        row["_deleted"] = False
        changes.append(Change(index, seq, table, table_type, "insert", owner, row, None))
    return len(tuples)


def update(db: Database, ctx: ExecContext, compiled: Compiled, binds: dict, who: Principal, sql_error) -> int:
    info = _target(compiled)
    found = _phase1(ctx, compiled, binds, sql_error)
    names = [c.name for c in info.columns]
    n = len(names)
    set_cols = [info.by_name[c] for c in compiled.columns]
    state = ctx.state
    now_ms = state.now_us // 1000
    tuples = []
    changed_rows = []
    for r in found:
        rowid, old, old_seq = r[0], dict(zip(names, r[1:1 + n], strict=True)), r[1 + n]
        new = {col.name: coerce_column(col, v) for col, v in zip(set_cols, r[2 + n:], strict=True)}
        if all(_same(old[c], v) for c, v in new.items()):
            continue  # nothing changes: not an update (upstream counts it as 0 rows)
        seq = db.next_seq(now_ms, state.node_id)
        tuples.append([*new.values(), seq, rowid])
        changed_rows.append((seq, old, old_seq, new))
    if not tuples:
        return 0
    q = cat.quote_ident
    sets = ", ".join(f"{q(c.name)} = ?" for c in set_cols)
    sql = db.templates.get((info.storage, info.schema_version, "update", tuple(compiled.columns)),
                           lambda: f"UPDATE {q(info.storage)} SET {sets}, _seq = ? WHERE rowid = ?")
    try:
        ctx.conn.executemany(sql, tuples)
    except sqlite3.IntegrityError as e:
        pk = info.primary_key
        if "UNIQUE" in str(e) and pk is not None and pk in compiled.columns:
            keys = [new[pk] for _, _, _, new in changed_rows]
            raise KalamError("SQL_EXECUTION_ERROR", "Primary key violation: value "
                             f"'{_first_taken(ctx, info, keys, who)}' already exists in column "
                             f"'{info.primary_key}'") from None
        raise sql_error(e, ctx, compiled) from None
    owner = who.user_id if info.table_type in cat.OWNED_TYPES else None
    for seq, old, old_seq, new in changed_rows:
        ctx.changes.append(Change(ctx.index, seq, info.full_name, info.table_type, "update", owner,
                                  {**old, **new, "_seq": seq, "_deleted": False},
                                  {**old, "_seq": old_seq, "_deleted": False}))
    return len(tuples)


def delete(db: Database, ctx: ExecContext, compiled: Compiled, binds: dict, who: Principal, sql_error) -> int:
    """USER and SHARED rows become tombstones (`_deleted`, a new `_seq`); STREAM rows are removed."""
    info = _target(compiled)
    found = _phase1(ctx, compiled, binds, sql_error)
    if not found:
        return 0
    names = [c.name for c in info.columns]
    n = len(names)
    state = ctx.state
    now_ms = state.now_us // 1000
    q = cat.quote_ident
    hard = info.table_type == "STREAM"
    seqs = [db.next_seq(now_ms, state.node_id) for _ in found]
    if hard:
        sql = db.templates.get((info.storage, info.schema_version, "delete"),
                               lambda: f"DELETE FROM {q(info.storage)} WHERE rowid = ?")
        ctx.conn.executemany(sql, [(r[0],) for r in found])
    else:
        sql = db.templates.get((info.storage, info.schema_version, "tombstone"),
                               lambda: f"UPDATE {q(info.storage)} SET _deleted = 1, _seq = ? WHERE rowid = ?")
        ctx.conn.executemany(sql, [(seq, r[0]) for seq, r in zip(seqs, found, strict=True)])
    owner = who.user_id if info.table_type in cat.OWNED_TYPES else None
    for seq, r in zip(seqs, found, strict=True):
        old = dict(zip(names, r[1:1 + n], strict=True))
        ctx.changes.append(Change(ctx.index, seq, info.full_name, info.table_type, "delete", owner, None,
                                  {**old, "_seq": r[1 + n], "_deleted": False}))
    return len(found)


def _same(old, new) -> bool:
    return old == new and type(old) is type(new)


def pk_violation(ctx: ExecContext, info: cat.TableInfo, rows: list[dict], who: Principal,
                 first_seq: int) -> KalamError:
    """Name the key that made an INSERT fail: one repeated inside the statement, else one a live row
    already had before the statement (rows the statement wrote have `_seq` >= first_seq)."""
    pk = info.primary_key
    keys = [r.get(pk) for r in rows]
    seen: set = set()
    shown = None
    for k in keys:
        if k is not None and k in seen:
            shown = k
            break
        seen.add(k)
    if shown is None:
        shown = _first_taken(ctx, info, keys, who, before_seq=first_seq)
    return KalamError("SQL_EXECUTION_ERROR", f"Primary key violation: value '{shown}' already exists in column '{pk}'")


def _first_taken(ctx: ExecContext, info: cat.TableInfo, keys: list, who: Principal, before_seq: int | None = None):
    q = cat.quote_ident
    if info.primary_key is None:
        return "?"
    owned = info.table_type in cat.OWNED_TYPES
    sql = f"SELECT 1 FROM {q(info.storage)} WHERE {q(info.primary_key)} = ? AND _deleted = 0"
    if owned:
        sql += " AND _owner = ?"
    if before_seq is not None:
        sql += " AND _seq < ?"
    for k in keys:
        if k is None:
            continue
        args = [k] + ([who.user_id] if owned else []) + ([before_seq] if before_seq is not None else [])
        if ctx.conn.execute(sql, args).fetchone() is not None:
            return k
    return "?"
