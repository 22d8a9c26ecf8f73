"""ALTER TABLE as upstream KalamDB does it: one operation per statement, who may alter what
(system/dba any table; service USER, SHARED and STREAM tables; user USER and STREAM tables), the
schema version bumped only when something changed, and upstream's messages:
"Table ns.t altered successfully: <op> (version N)" or "Table ns.t unchanged: <op> (version N -
no changes needed)".

Column types and NOT NULL are enforced by the engine's own coercion on every write
(engine/values.py), so most operations change only the catalog. A type change whose SQLite storage
class differs (INT -> TEXT) rebuilds the table, keeping every row's rowid, `_seq` and owner; every
stored value is converted by the new type's rules first, and one that does not convert fails the
statement with nothing changed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kalamdb.engine import catalog as cat
from kalamdb.engine.types import ExecContext, message
from kalamdb.engine.users import audit
from kalamdb.engine.values import coerce_column
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.types import STORAGE, sql_name

if TYPE_CHECKING:
    from kalamdb.engine.database import Database

_ALTERABLE = {"system": ("USER", "SHARED", "STREAM"), "dba": ("USER", "SHARED", "STREAM"),
              "service": ("USER", "SHARED", "STREAM"), "user": ("USER", "STREAM")}
_LEVEL_NAMES = {"PUBLIC": "Public", "PRIVATE": "Private", "RESTRICTED": "Restricted", "DBA": "Dba"}


def table_for_alter(db: Database, ctx: ExecContext, ns: str | None, name: str) -> cat.TableInfo:
    ns = ns or ctx.namespace
    info = db.writer_catalog.tables.get((ns, name))
    if info is None:
        raise KalamError("TABLE_NOT_FOUND", f"Table '{name}' not found in namespace '{ns}'")
    if info.table_type not in _ALTERABLE.get(ctx.principal.role, ()):
        raise KalamError("PERMISSION_DENIED", "Unauthorized: Insufficient privileges to alter table")
    return info


def default_sql(default: dict | None) -> str:
    """A column default as upstream prints it (ColumnDefault::to_sql)."""
    if default is None:
        return ""
    if "fn" in default:
        return f"{default['fn']}()"
    lit = default.get("lit")
    if lit is None:
        return "NULL"
    if isinstance(lit, bool):
        return str(lit).upper()
    if isinstance(lit, (int, float)):
        return str(lit)
    return "'" + str(lit).replace("'", "''") + "'"


def altered(db: Database, ctx: ExecContext, info: cat.TableInfo, desc: str, changed: bool,
            columns: list[st.ColumnDef] | None = None, options: dict | None = None,
            primary_key: str | None = None) -> dict:
    """Save what changed (bumping the schema version) and answer with upstream's message."""
    version = info.schema_version
    if changed:
        version += 1
        ctx.conn.execute(
            "UPDATE _kdb_tables SET columns = ?, options = ?, primary_key = ?, schema_version = ?, updated_at = ? "
            "WHERE namespace = ? AND name = ?",
            (cat.columns_json(columns if columns is not None else info.columns),
             json.dumps(options if options is not None else info.options, sort_keys=True),
             primary_key if primary_key is not None else info.primary_key, version, ctx.state.now_us,
             info.namespace, info.name))
        db.bump_catalog(ctx)
        audit(ctx, "ALTER_TABLE", f"table:{info.full_name}", {"operation": desc, "version": version})
        return message(f"Table {info.full_name} altered successfully: {desc} (version {version})", ctx)
    return message(f"Table {info.full_name} unchanged: {desc} (version {version} - no changes needed)", ctx)


def _column(info: cat.TableInfo, name: str, verb: str) -> st.ColumnDef:
    if name.startswith("_"):
        raise KalamError("SQL_EXECUTION_ERROR", f"Cannot {verb} column '{name}': system column cannot be altered")
    col = info.by_name.get(name)
    if col is None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{name}' does not exist")
    return col


def _given(value: str | None, what: str, s: st.AlterTable) -> str:
    """A part of the statement that the parser always fills for this operation (st.AlterTable
    carries every operation's parts, each optional)."""
    if value is None:
        raise KalamError("INVALID_SQL", f"ALTER TABLE ({s.op}) needs {what}")
    return value


def _replace(info: cat.TableInfo, name: str, new: st.ColumnDef) -> list[st.ColumnDef]:
    return [new if c.name == name else c for c in info.columns]


def alter_table(db: Database, ctx: ExecContext, s: st.AlterTable) -> dict:
    info = table_for_alter(db, ctx, s.namespace, s.name)
    op = s.op
    if op == "access_level":
        level = _given(s.level, "an access level", s)
        desc = f"SET ACCESS LEVEL {_LEVEL_NAMES[level]}"
        if info.table_type != "SHARED":
            raise KalamError("SQL_EXECUTION_ERROR", "ACCESS LEVEL can only be set on SHARED tables")
        changed = info.options.get("ACCESS_LEVEL", "PRIVATE") != level
        return altered(db, ctx, info, desc, changed, options={**info.options, "ACCESS_LEVEL": level})
    if op in ("create_index", "drop_index"):
        return _vector_index(db, ctx, info, s)
    if op == "rename":
        return _rename(db, ctx, info, s)
    col = _column(info, _given(s.column, "a column", s), "modify")
    if op in ("set_not_null", "drop_not_null"):
        nullable = op == "drop_not_null"
        desc = f"ALTER COLUMN {col.name} {'DROP NOT NULL' if nullable else 'SET NOT NULL'}"
        if nullable and col.primary_key:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' is a PRIMARY KEY and cannot be nullable")
        if not nullable:
            _no_nulls(ctx, info, col)
        new = st.ColumnDef(col.name, col.data_type, not nullable, col.default, col.primary_key, col.type_args)
        return altered(db, ctx, info, desc, col.not_null == nullable, columns=_replace(info, col.name, new))
    if op == "set_default":
        from kalamdb.engine.ddl import normalise_default

        new = normalise_default(st.ColumnDef(col.name, col.data_type, col.not_null, s.default, col.primary_key,
                                             col.type_args))
        desc = f"ALTER COLUMN {col.name} SET DEFAULT {default_sql(new.default)}"
        return altered(db, ctx, info, desc, new.default != col.default, columns=_replace(info, col.name, new))
    if op == "drop_default":
        new = st.ColumnDef(col.name, col.data_type, col.not_null, None, col.primary_key, col.type_args)
        desc = f"ALTER COLUMN {col.name} DROP DEFAULT"
        return altered(db, ctx, info, desc, col.default is not None, columns=_replace(info, col.name, new))
    if op == "modify":
        return _modify(db, ctx, info, col, s)
    raise KalamError("INVALID_SQL", f"Unsupported ALTER TABLE operation '{op}'")


def _no_nulls(ctx: ExecContext, info: cat.TableInfo, col: st.ColumnDef) -> None:
    q = cat.quote_ident
    row = ctx.conn.execute(f"SELECT 1 FROM {q(info.storage)} WHERE {q(col.name)} IS NULL AND _deleted = 0 "
                           "LIMIT 1").fetchone()
    if row is not None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' contains NULL values; set them first, "
                         "then SET NOT NULL")


def _rename(db: Database, ctx: ExecContext, info: cat.TableInfo, s: st.AlterTable) -> dict:
    old, new = _given(s.column, "a column", s), _given(s.new_name, "a new column name", s)
    if old.startswith("_"):
        raise KalamError("SQL_EXECUTION_ERROR", f"Cannot rename column '{old}': system column cannot be modified")
    if new.startswith("_"):
        raise KalamError("SQL_EXECUTION_ERROR", f"Cannot rename column to '{new}': reserved system column name")
    col = _column(info, old, "rename")
    if new in info.by_name:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{new}' already exists")
    q = cat.quote_ident
    ctx.conn.execute(f"ALTER TABLE {q(info.storage)} RENAME COLUMN {q(old)} TO {q(new)}")
    renamed = st.ColumnDef(new, col.data_type, col.not_null, col.default, col.primary_key, col.type_args)
    pk = new if info.primary_key == old else None
    return altered(db, ctx, info, f"RENAME COLUMN {old} TO {new}", True, columns=_replace(info, old, renamed),
                   primary_key=pk)


def _modify(db: Database, ctx: ExecContext, info: cat.TableInfo, col: st.ColumnDef, s: st.AlterTable) -> dict:
    data_type = _given(s.data_type, "a data type", s)
    new = st.ColumnDef(col.name, data_type, col.not_null if s.nullable is None else not s.nullable,
                       col.default, col.primary_key, s.type_args)
    desc = f"MODIFY COLUMN {col.name} {sql_name(data_type, s.type_args)}"
    if new.primary_key and not new.not_null:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' is a PRIMARY KEY and cannot be nullable")
    type_changed = (new.data_type, new.type_args) != (col.data_type, col.type_args)
    if not type_changed and new.not_null == col.not_null:
        return altered(db, ctx, info, desc, False)
    if new.default is not None and "lit" in new.default:
        from kalamdb.engine.ddl import normalise_default

        new = normalise_default(new)
    columns = _replace(info, col.name, new)
    if new.not_null and not col.not_null:
        _no_nulls(ctx, info, col)
    if type_changed:
        _convert_column(ctx, info, col, new, columns)
    return altered(db, ctx, info, desc, True, columns=columns)


def _convert_column(ctx: ExecContext, info: cat.TableInfo, old: st.ColumnDef, new: st.ColumnDef,
                    columns: list[st.ColumnDef]) -> None:
    """Every stored value of the column (tombstones too) converted by the new type's rules; the
    table is rebuilt when the SQLite storage class changes."""
    q = cat.quote_ident
    conn = ctx.conn
    relaxed = st.ColumnDef(new.name, new.data_type, False, None, False, new.type_args)
    converted = []
    for rowid, value in conn.execute(f"SELECT rowid, {q(old.name)} FROM {q(info.storage)}"):
        if value is None:
            converted.append((rowid, None))
            continue
        try:
            converted.append((rowid, coerce_column(relaxed, _portable(old, value))))
        except KalamError:
            raise KalamError("SQL_EXECUTION_ERROR", f"Cannot change column '{old.name}' to "
                             f"{sql_name(new.data_type, new.type_args)}: stored value {value!r} does not "
                             "convert") from None
    if STORAGE[new.data_type] == STORAGE[old.data_type]:
        conn.executemany(f"UPDATE {q(info.storage)} SET {q(old.name)} = ? WHERE rowid = ?",
                         [(v, r) for r, v in converted])
        return
    rebuilt = cat.make_table_info(info.namespace, info.name, info.table_type, columns, info.primary_key,
                                  info.options, info.created_at, info.schema_version)
    _rebuild(ctx, info, rebuilt, old.name, dict(converted))


def _portable(col: st.ColumnDef, value):
    """A stored value as the input its own type would accept (booleans stored as 0/1 stay bools)."""
    if col.data_type == "Boolean":
        return bool(value)
    return value


def _rebuild(ctx: ExecContext, old: cat.TableInfo, new: cat.TableInfo, column: str, values: dict) -> None:
    """Recreate the storage table with new column types, rows (rowids included) carried over."""
    q = cat.quote_ident
    conn = ctx.conn
    tmp = "_kdb_rebuild"
    for (index,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                 "AND sql IS NOT NULL", (old.storage,)).fetchall():
        conn.execute(f"DROP INDEX {q(index)}")
    conn.execute(f"DROP VIEW IF EXISTS {q(old.row_view)}")
    conn.execute(f"ALTER TABLE {q(old.storage)} RENAME TO {tmp}")
    for sql in cat.create_table_sql(new):
        conn.execute(sql)
    names = [r[1] for r in conn.execute(f"PRAGMA table_info({tmp})")]
    cols = ", ".join(q(n) for n in names)
    conn.execute(f"INSERT INTO {q(new.storage)} (rowid, {cols}) SELECT rowid, {cols} FROM {tmp}")
    conn.executemany(f"UPDATE {q(new.storage)} SET {q(column)} = ? WHERE rowid = ?",
                     [(v, r) for r, v in values.items()])
    conn.execute(f"DROP TABLE {tmp}")


def _vector_index(db: Database, ctx: ExecContext, info: cat.TableInfo, s: st.AlterTable) -> dict:
    """Vector indexes are recorded (system.schemas options VECTOR_INDEXES) for upstream
    compatibility; kalamdb has no vector search, so the index serves no query yet."""
    if info.table_type not in ("USER", "SHARED"):
        raise KalamError("SQL_EXECUTION_ERROR", "Vector indexing is only supported for USER/SHARED tables")
    col = info.by_name.get(_given(s.column, "a column", s))
    if col is None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{s.column}' does not exist")
    if col.data_type != "Embedding":
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{s.column}' is not an EMBEDDING column")
    indexes = dict(info.options.get("VECTOR_INDEXES", {}))
    metric = {"COSINE": "Cosine", "L2": "L2", "DOT": "Dot"}.get(s.metric or "", "Cosine")
    if s.op == "create_index":
        indexes[col.name] = metric
        text = f"Vector index enabled on {info.full_name}.{col.name} ({metric})"
    else:
        indexes.pop(col.name, None)
        text = f"Vector index disabled on {info.full_name}.{col.name}"
    options = {**info.options, "VECTOR_INDEXES": indexes}
    if not indexes:
        options.pop("VECTOR_INDEXES")
    ctx.conn.execute("UPDATE _kdb_tables SET options = ?, updated_at = ? WHERE namespace = ? AND name = ?",
                     (json.dumps(options, sort_keys=True), ctx.state.now_us, info.namespace, info.name))
    db.bump_catalog(ctx)
    audit(ctx, "ALTER_TABLE", f"table:{info.full_name}", {"operation": text})
    return message(text, ctx)
