"""Phase 1 of INSERT, UPDATE and DELETE (engine/writes.py is phase 2): the rewrite of a write into
the read that finds or computes its rows, through row views and under the authorizer like any
SELECT. User SQL never writes: the executor writes those rows with fixed templates. Also the checks
that need only the catalog: the target is a user table, each named column exists and is not a system
column, every row has a value per column."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from kalamdb.engine.catalog import OWNED_TYPES, TableInfo
from kalamdb.engine.rowview_names import HIDDEN, ROWID, SYSTEM_NAMESPACES
from kalamdb.errors import KalamError
from kalamdb.sql.dialects import SQLITE

if TYPE_CHECKING:
    from kalamdb.engine.compile import Compiler


def _target(c: Compiler, table: exp.Table, verb: str) -> TableInfo:
    if not isinstance(table, exp.Table):
        raise KalamError("INVALID_SQL", f"{verb} needs a table name")
    ns, name = c.resolve(table)
    if ns in SYSTEM_NAMESPACES:
        raise KalamError("PERMISSION_DENIED", f"Cannot {verb} system table '{ns}.{name}'")
    info = c.lookup(ns, name)
    c.out.target = info
    c.out.tables.append((info, info.full_name, "w"))
    return info


def _check_column(info: TableInfo, name: str) -> str:
    name = name.lower()
    if name in HIDDEN or name.startswith("_"):
        raise KalamError("SQL_EXECUTION_ERROR", f"System column '{name}' cannot be written")
    if name not in info.by_name:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{name}' does not exist in table {info.full_name}")
    return name


def _pure_cell(v: exp.Expression) -> tuple[str, object] | None:
    """A VALUES cell that needs no SQL to evaluate: ("v", value) or ("p", parameter number)."""
    if isinstance(v, exp.Literal):
        return ("v", v.this if v.is_string else v.to_py())
    if isinstance(v, exp.Null):
        return ("v", None)
    if isinstance(v, exp.Boolean):
        return ("v", bool(v.this))
    if isinstance(v, exp.Placeholder) and v.name.startswith("p") and v.name[1:].isdigit():
        return ("p", int(v.name[1:]))
    if isinstance(v, exp.Neg) and isinstance(v.this, exp.Literal) and not v.this.is_string:
        value = v.this.to_py()
        if isinstance(value, (int, float)):
            return ("v", -value)
    return None


def compile_insert(c: Compiler, ast: exp.Insert) -> None:
    """Phase 1 of an INSERT: the rows to insert, as raw values in `columns` order. VALUES of
    literals and parameters need no SQL at all (`pure_rows`); anything else becomes a VALUES or
    SELECT statement that reads only through row views. Defaults, coercion, `_seq` and the write
    itself happen in the executor (engine/writes.py), from Python values."""
    if ast.args.get("conflict") or ast.args.get("returning"):
        raise KalamError("INVALID_SQL", "INSERT ... ON CONFLICT / RETURNING is not supported")
    target = ast.this
    given: list[str] | None = None
    if isinstance(target, exp.Schema):
        given = [i.name.lower() for i in target.expressions]
        target = target.this
    info = _target(c, target, "insert into")
    if given is None:
        cols = [col.name for col in info.columns]
    else:
        cols = [_check_column(info, g) for g in given]
        if len(set(cols)) != len(cols):
            raise KalamError("SQL_EXECUTION_ERROR", "A column appears twice in the INSERT column list")
    for col in info.columns:
        if col.name not in cols and col.not_null and col.default is None:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' cannot be NULL (no value and no DEFAULT)")
    c.out.columns = cols
    if info.table_type in OWNED_TYPES:
        c.out.uses_owner = True
    source = ast.expression
    if isinstance(source, exp.Values):
        rows: list[list[exp.Expression]] = []
        for tup in source.expressions:
            values = tup.expressions if isinstance(tup, exp.Tuple) else [tup]
            if len(values) != len(cols):
                raise KalamError("SQL_EXECUTION_ERROR", f"INSERT has {len(cols)} column(s) but a row has "
                                 f"{len(values)} value(s)")
            rows.append(values)
        c.out.row_count = len(rows)
        cells = [[_pure_cell(v) for v in row] for row in rows]
        pure = [[cell for cell in row if cell is not None] for row in cells]
        if all(len(p) == len(r) for p, r in zip(pure, cells)):
            c.out.pure_rows = pure
            return
        for row in rows:
            for v in row:
                c.rewrite_sources(v)  # a subquery in VALUES reads through row views like any other
        c.out.sql = exp.Values(expressions=[exp.Tuple(expressions=row) for row in rows]).sql(SQLITE)
    elif isinstance(source, (exp.Select, exp.Union)):
        c.star_hidden = False
        c.rewrite_sources(source)
        c.expand_stars(source)
        c.out.sql = source.sql(SQLITE)
        c.out.row_count = -1
    else:
        raise KalamError("INVALID_SQL", "INSERT needs VALUES or SELECT")


def compile_update_delete(c: Compiler, ast: exp.Expression, kind: str) -> None:
    """Phase 1 of UPDATE/DELETE: a SELECT over the target's row view that returns, per matching
    row, its rowid, every column, its `_seq`, and (UPDATE) the new value of each SET column. The
    executor writes those rows with fixed templates, so user SQL itself never writes."""
    table = ast.this
    info = _target(c, table, "update" if kind == "update" else "delete from")
    alias = table.alias or table.name
    if kind == "update" and info.table_type == "STREAM":
        raise KalamError("SQL_EXECUTION_ERROR", f"UPDATE is not supported on STREAM table {info.full_name}")
    where = ast.args.get("where")
    cond = where.this if where is not None else None
    for src in ("from_", "joins", "using"):
        if ast.args.get(src):
            raise KalamError("INVALID_SQL", f"{kind.upper()} ... {src.strip('_').upper()} is not supported")
    if ast.args.get("returning"):
        raise KalamError("INVALID_SQL", "RETURNING is not supported")
    if cond is not None:
        c.rewrite_sources(cond)
    projection = [exp.column(ROWID, table=alias)]
    projection += [exp.column(col.name, table=alias, quoted=True) for col in info.columns]
    projection.append(exp.column("_seq", table=alias))
    if kind == "update":
        set_cols = []
        for e in ast.expressions:
            if not isinstance(e, exp.EQ) or not isinstance(e.this, exp.Column):
                raise KalamError("INVALID_SQL", "UPDATE SET needs column = value")
            col = _check_column(info, e.this.name)
            if col in set_cols:
                raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col}' is assigned twice in UPDATE SET")
            value = e.expression
            c.rewrite_sources(value)
            set_cols.append(col)
            projection.append(value)
        c.out.columns = set_cols
    if info.table_type in OWNED_TYPES:
        c.out.uses_owner = True
    source = c.visible_source(info, alias, with_rowid=True)
    select = exp.select(*projection).from_(source)
    if cond is not None:
        select = select.where(cond)
    c.out.sql = select.sql(SQLITE)
