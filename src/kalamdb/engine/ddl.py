"""Namespace and table DDL, DESCRIBE and SHOW, applied like any other command: the catalog change
commits in the same transaction as the tables it creates or drops, and the in-memory catalog is
reloaded from it (engine/catalog.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kalamdb.engine import catalog as cat
from kalamdb.engine.changes import TableDropped
from kalamdb.engine.storage import drop_table_files
from kalamdb.engine.types import ExecContext, may_access_shared, message, require_admin
from kalamdb.engine.users import audit
from kalamdb.engine.values import coerce_column
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.types import encode_cell

if TYPE_CHECKING:
    from kalamdb.engine.database import Database

#: namespace names no one may create (upstream's list)
RESERVED_NAMESPACES = frozenset({"system", "sys", "root", "kalamdb", "kalam", "main", "default", "sql", "admin",
                                 "internal", "information_schema", "pg_catalog", "datafusion"})


def describe(db: Database, ctx: ExecContext, s: st.DescribeTable) -> dict:
    """DESCRIBE TABLE as upstream's describe view: one row per column, types as SQL spells them."""
    from kalamdb.engine.alter import default_sql

    ns = s.namespace or ctx.namespace
    info = db.catalog_for(ctx).tables.get((ns, s.name))
    if info is None:
        raise KalamError("TABLE_NOT_FOUND", f"Table '{s.name}' not found in namespace '{ns}'")
    if info.table_type == "SHARED" and not may_access_shared(ctx.principal.role, info.options.get("ACCESS_LEVEL"), write=False):
        raise KalamError("TABLE_NOT_FOUND", f"Table '{s.name}' not found in namespace '{ns}'")
    rows = []
    for i, c in enumerate(info.columns, 1):
        default = default_sql(c.default) or None
        rows.append([c.name, i, i, c.sql_type, not c.not_null, c.name == info.primary_key, default, None,
                     info.schema_version])
    schema = [("column_name", "Text"), ("ordinal_position", "Int"), ("column_id", "BigInt"), ("data_type", "Text"),
              ("is_nullable", "Boolean"), ("is_primary_key", "Boolean"), ("column_default", "Text"),
              ("column_comment", "Text"), ("schema_version", "Int")]
    rows = [[encode_cell(v, t) for v, (_, t) in zip(r, schema, strict=True)] for r in rows]
    return {"schema": [{"name": n, "data_type": t, "index": j} for j, (n, t) in enumerate(schema)],
            "rows": rows, "row_count": len(rows), "as_user": ctx.principal.username}


def create_namespace(db: Database, ctx: ExecContext, s: st.CreateNamespace) -> dict:
    require_admin(ctx.principal, "Namespace DDL")
    if s.name in RESERVED_NAMESPACES and not (s.if_not_exists and s.name in db.writer_catalog.namespaces):
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' is reserved and cannot be used")
    if s.name in db.writer_catalog.namespaces:
        if s.if_not_exists:
            return message(f"Namespace '{s.name}' already exists", ctx)
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' already exists")
    ctx.conn.execute("INSERT INTO _kdb_namespaces VALUES (?, ?, '{}')", (s.name, ctx.state.now_us))
    db.bump_catalog(ctx)
    audit(ctx, "CREATE_NAMESPACE", f"namespace:{s.name}", None)
    return message(f"Namespace '{s.name}' created successfully", ctx)


def drop_namespace(db: Database, ctx: ExecContext, s: st.DropNamespace) -> dict:
    require_admin(ctx.principal, "Namespace DDL")
    if s.name not in db.writer_catalog.namespaces:
        if s.if_exists:
            return message(f"Namespace '{s.name}' does not exist", ctx)
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' does not exist")
    if s.name == "default":
        raise KalamError("SQL_EXECUTION_ERROR", "Namespace 'default' cannot be dropped")
    tables = [t for (ns, _), t in db.writer_catalog.tables.items() if ns == s.name]
    if tables and not s.cascade:
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{s.name}' is not empty ({len(tables)} "
                         "table(s)); use DROP NAMESPACE ... CASCADE")
    for t in sorted(tables, key=lambda t: t.name):
        _drop_storage(ctx, t)
        drop_table_files(db, ctx, t)
    ctx.conn.execute("DELETE FROM _kdb_tables WHERE namespace = ?", (s.name,))
    ctx.conn.execute("DELETE FROM _kdb_namespaces WHERE name = ?", (s.name,))
    db.bump_catalog(ctx)
    audit(ctx, "DROP_NAMESPACE", f"namespace:{s.name}", {"cascade": s.cascade, "tables": len(tables)})
    return message(f"Namespace '{s.name}' dropped successfully", ctx)


def create_table(db: Database, ctx: ExecContext, s: st.CreateTable) -> dict:
    ns = s.namespace or ctx.namespace
    if ctx.principal.role == "user" and s.table_type == "SHARED":
        raise KalamError("PERMISSION_DENIED", "Role 'user' may create USER and STREAM tables only")
    if ns == "system":
        raise KalamError("PERMISSION_DENIED", "Tables cannot be created in namespace 'system'")
    if ns not in db.writer_catalog.namespaces:
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{ns}' does not exist. Create it first with "
                         f"CREATE NAMESPACE {ns}")
    full = f"{ns}.{s.name}"
    if (ns, s.name) in db.writer_catalog.tables:
        if s.if_not_exists:
            return message(f"Table {full} already exists (IF NOT EXISTS)", ctx)
        raise KalamError("SQL_EXECUTION_ERROR", f"Table {full} already exists")
    columns = [normalise_default(c) for c in s.columns]
    options = dict(s.options)
    if s.table_type == "SHARED":
        options.setdefault("ACCESS_LEVEL", "PRIVATE")
    info = cat.make_table_info(ns, s.name, s.table_type, columns, s.primary_key, options,
                               ctx.state.now_us, 1)
    for sql in cat.create_table_sql(info):
        ctx.conn.execute(sql)
    ctx.conn.execute("INSERT INTO _kdb_tables (namespace, name, table_type, created_at, schema_version, columns, "
                     "primary_key, options, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)",
                     (ns, s.name, s.table_type, ctx.state.now_us, cat.columns_json(columns), s.primary_key,
                      json.dumps(options, sort_keys=True), ctx.state.now_us))
    db.bump_catalog(ctx)
    audit(ctx, "CREATE_TABLE", f"table:{full}", {"table_type": s.table_type.lower()})
    return message(f"{s.table_type.title()} table {full} created successfully", ctx)


def _existing_table(db: Database, ctx: ExecContext, ns: str | None, name: str) -> cat.TableInfo | None:
    return db.writer_catalog.tables.get((ns or ctx.namespace, name))


def drop_table(db: Database, ctx: ExecContext, s: st.DropTable) -> dict:
    ns = s.namespace or ctx.namespace
    info = _existing_table(db, ctx, ns, s.name)
    if info is None:
        if s.if_exists:
            return message(f"Table {ns}.{s.name} does not exist (skipped)", ctx)
        raise KalamError("TABLE_NOT_FOUND", f"Table '{ns}.{s.name}' not found")
    if s.table_type and s.table_type != info.table_type:
        raise KalamError("SQL_EXECUTION_ERROR", f"Table {info.full_name} is a {info.table_type} table, "
                         f"not {s.table_type}")
    if ctx.principal.role not in ("dba", "system"):
        raise KalamError("PERMISSION_DENIED", "Unauthorized: Insufficient privileges to drop table")
    _drop_storage(ctx, info)
    job = drop_table_files(db, ctx, info)
    ctx.conn.execute("DELETE FROM _kdb_tables WHERE namespace = ? AND name = ?", (ns, s.name))
    db.bump_catalog(ctx)
    audit(ctx, "DROP_TABLE", f"table:{info.full_name}", None)
    return message(f"Table {info.full_name} dropped successfully. Cleanup job: {job}", ctx)


def _drop_storage(ctx: ExecContext, info: cat.TableInfo) -> None:
    """The table, its row view and its change log go; subscribers hear of it after the commit."""
    for sql in cat.drop_table_sql(info):
        ctx.conn.execute(sql)
    ctx.conn.execute("DELETE FROM _kdb_changes WHERE tbl = ?", (info.full_name,))
    ctx.events.append(TableDropped(ctx.index, info.full_name))


def alter_add(db: Database, ctx: ExecContext, s: st.AlterTableAddColumn) -> dict:
    from kalamdb.engine.alter import altered, table_for_alter

    info = table_for_alter(db, ctx, s.namespace, s.name)
    col = normalise_default(s.column)
    if col.name in info.by_name:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' already exists")
    lit = col.default.get("lit") if col.default is not None else None
    literal = lit is not None
    if col.not_null and not literal:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' is NOT NULL and needs a literal "
                         "DEFAULT to fill existing rows")
    ddl = f"ALTER TABLE {cat.quote_ident(info.storage)} ADD COLUMN {cat.column_sql(col)}"
    if literal:
        ddl += f" DEFAULT {cat.sql_literal(lit)}"
    ctx.conn.execute(ddl)
    return altered(db, ctx, info, f"ADD COLUMN {col.name} {col.sql_type}", True, columns=[*info.columns, col])


def alter_drop(db: Database, ctx: ExecContext, s: st.AlterTableDropColumn) -> dict:
    from kalamdb.engine.alter import altered, table_for_alter

    info = table_for_alter(db, ctx, s.namespace, s.name)
    if s.column.startswith("_"):
        raise KalamError("SQL_EXECUTION_ERROR", f"Cannot drop column '{s.column}': system column cannot be modified")
    if s.column not in info.by_name:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{s.column}' does not exist")
    if s.column == info.primary_key:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{s.column}' is the primary key and cannot be dropped")
    ctx.conn.execute(f"ALTER TABLE {cat.quote_ident(info.storage)} DROP COLUMN {cat.quote_ident(s.column)}")
    return altered(db, ctx, info, f"DROP COLUMN {s.column}", True,
                   columns=[c for c in info.columns if c.name != s.column])


def normalise_default(col: st.ColumnDef) -> st.ColumnDef:
    """Check a literal DEFAULT against the column type once, at DDL time, and store it normalised."""
    if col.default is None or "lit" not in col.default or col.default["lit"] is None:
        return col
    value = col.default["lit"]
    if col.data_type in ("BigInt", "Float", "Double") and (isinstance(value, (str, bool)) or value is None):
        raise KalamError("SQL_EXECUTION_ERROR", f"DEFAULT {value!r} is not a valid {col.data_type}")
    try:
        value = coerce_column(col, value)
    except KalamError as e:
        raise KalamError(e.code, f"Invalid DEFAULT: {e.message}") from None
    return st.ColumnDef(col.name, col.data_type, col.not_null, {"lit": value}, col.primary_key, col.type_args)
