"""The catalog: namespaces, tables and users, stored in SQLite next to the data so that a catalog
change commits in the same transaction as everything else, and loaded into an immutable in-memory
view that readers use without locks."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from kalamdb.engine import sysviews
from kalamdb.sql.statements import ColumnDef
from kalamdb.sql.types import STORAGE

GENESIS_US = sysviews.GENESIS_US
ROOT_USER_ID = "root"

SYSTEM_COLUMN_TYPES = {"_seq": "BigInt", "_deleted": "Boolean"}
OWNED_TYPES = ("USER", "STREAM")  # table types whose rows belong to the user who wrote them
VIEW_SUFFIX = "@v"  # a table name never contains '@', so row views cannot collide with tables

BOOTSTRAP_SQL = [
    "CREATE TABLE _kdb_meta (key TEXT PRIMARY KEY, value ANY) STRICT",
    "CREATE TABLE _kdb_namespaces (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL, options TEXT) STRICT",
    """CREATE TABLE _kdb_tables (namespace TEXT NOT NULL, name TEXT NOT NULL, table_type TEXT NOT NULL,
        created_at INTEGER NOT NULL, schema_version INTEGER NOT NULL, columns TEXT NOT NULL,
        primary_key TEXT, options TEXT NOT NULL, PRIMARY KEY (namespace, name)) STRICT""",
    """CREATE TABLE _kdb_users (user_id TEXT PRIMARY KEY, username TEXT NOT NULL, role TEXT NOT NULL,
        email TEXT, password_hash TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        deleted_at INTEGER) STRICT""",
    "CREATE INDEX _kdb_users_by_name ON _kdb_users (username)",
    "INSERT INTO _kdb_meta VALUES ('applied_index', 0), ('last_snowflake', 0), ('catalog_version', 0)",
    f"INSERT INTO _kdb_namespaces VALUES ('default', {GENESIS_US}, '{{}}')",
    (f"INSERT INTO _kdb_users VALUES ('{ROOT_USER_ID}', 'root', 'system', NULL, NULL, {GENESIS_US}, "
    f"{GENESIS_US}, NULL)"),
]

# data types of the replicated system views' columns, and the catalog tables each view reads (the
# authorizer lets a view's body read exactly these)
SYSTEM_VIEWS: dict[str, dict[str, str]] = sysviews.VIEW_TYPES
SYSTEM_VIEW_BASES: dict[str, frozenset[str]] = sysviews.VIEW_BASES


@dataclass(frozen=True)
class TableInfo:
    namespace: str
    name: str
    table_type: str  # USER | SHARED | STREAM
    columns: tuple[ColumnDef, ...]
    primary_key: str | None
    options: dict
    created_at: int
    schema_version: int
    by_name: dict[str, ColumnDef] = field(default_factory=dict, compare=False, repr=False)

    @property
    def storage(self) -> str:
        """The SQLite table name: `ns.t` (a dot cannot occur in either part, so no collisions)."""
        return f"{self.namespace}.{self.name}"

    @property
    def row_view(self) -> str:
        """The view through which user SQL reads this table (see row_view_sql)."""
        return f"{self.namespace}.{self.name}{VIEW_SUFFIX}"

    @property
    def full_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    def column_type(self, name: str) -> str | None:
        col = self.by_name.get(name)
        if col is not None:
            return col.data_type
        return SYSTEM_COLUMN_TYPES.get(name)


@dataclass(frozen=True)
class Catalog:
    version: int
    namespaces: dict[str, int]  # name -> created_at
    tables: dict[tuple[str, str], TableInfo]


def make_table_info(namespace, name, table_type, columns, primary_key, options, created_at, version) -> TableInfo:
    cols = tuple(columns)
    return TableInfo(namespace, name, table_type, cols, primary_key, dict(options), created_at, version,
                     {c.name: c for c in cols})


def load_catalog(conn: sqlite3.Connection) -> Catalog:
    version = conn.execute("SELECT value FROM _kdb_meta WHERE key = 'catalog_version'").fetchone()[0]
    namespaces = dict(conn.execute("SELECT name, created_at FROM _kdb_namespaces"))
    tables = {}
    for ns, name, ttype, created, sv, cols, pk, opts in conn.execute(
        "SELECT namespace, name, table_type, created_at, schema_version, columns, primary_key, options "
        "FROM _kdb_tables"
    ):
        columns = [ColumnDef(**c) for c in json.loads(cols)]
        tables[(ns, name)] = make_table_info(ns, name, ttype, columns, pk, json.loads(opts), created, sv)
    return Catalog(version, namespaces, tables)


def columns_json(columns) -> str:
    return json.dumps([c.__dict__ for c in columns], sort_keys=True, separators=(",", ":"))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def column_sql(col: ColumnDef, *, for_alter: bool = False) -> str:
    out = f"{quote_ident(col.name)} {STORAGE[col.data_type]}"
    if col.not_null and not for_alter:
        out += " NOT NULL"
    return out


def create_table_sql(info: TableInfo) -> list[str]:
    parts = [column_sql(c) for c in info.columns]
    parts += ["_seq INTEGER NOT NULL", "_deleted INTEGER NOT NULL DEFAULT 0"]
    if info.table_type in OWNED_TYPES:
        parts.append("_owner TEXT NOT NULL")
    if info.table_type == "STREAM":
        parts.append("_ts INTEGER NOT NULL")
    if info.primary_key:
        key = [quote_ident(info.primary_key)]
        if info.table_type in OWNED_TYPES:  # keys are per owner: one user's key never collides with another's
            key.insert(0, "_owner")
        parts.append(f"PRIMARY KEY ({', '.join(key)})")
    out = [f"CREATE TABLE {quote_ident(info.storage)} ({', '.join(parts)}) STRICT"]
    if info.table_type in OWNED_TYPES and not info.primary_key:
        out.append(f"CREATE INDEX {quote_ident(info.storage + '._owner')} ON {quote_ident(info.storage)} (_owner)")
    if info.table_type == "STREAM":
        out.append(f"CREATE INDEX {quote_ident(info.storage + '._ts')} ON {quote_ident(info.storage)} (_ts)")
    out.append(row_view_sql(info))
    return out


def row_view_sql(info: TableInfo) -> str:
    """The only way user SQL reaches a table's rows (the authorizer enforces it): every stored row
    of SHARED tables; of USER and STREAM tables only the rows of the statement's owner."""
    where = " WHERE _owner = kdb_owner()" if info.table_type in OWNED_TYPES else ""
    return (f"CREATE VIEW {quote_ident(info.row_view)} AS SELECT rowid AS _kdb_rowid, * "
            f"FROM {quote_ident(info.storage)}{where}")


def drop_table_sql(info: TableInfo) -> list[str]:
    return [f"DROP VIEW IF EXISTS {quote_ident(info.row_view)}", f"DROP TABLE {quote_ident(info.storage)}"]


def ensure_row_views(conn: sqlite3.Connection, catalog: Catalog) -> None:
    """Create the row view of tables made before views existed (data directories of older
    versions; the same on every replica, since they all hold the same tables)."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
    for info in catalog.tables.values():
        if info.row_view in have:
            continue
        cols = {r[1] for r in conn.execute(f"PRAGMA table_info({quote_ident(info.storage)})")}
        if info.table_type in OWNED_TYPES and "_owner" not in cols:
            conn.execute(f"ALTER TABLE {quote_ident(info.storage)} ADD COLUMN _owner TEXT NOT NULL DEFAULT ''")
        conn.execute(row_view_sql(info))
