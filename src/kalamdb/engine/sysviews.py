"""The replicated system tables as upstream KalamDB shows them (system.users, namespaces, schemas,
tables, storages, jobs, job_nodes, audit_log, manifest): the catalog tables behind them
(`_kdb_*`), the SQLite views that present them with upstream's column names and order, and the
data type of every column (for cell encoding and information_schema).

`upgrade` brings a data directory of any earlier version to the current layout at open: it
creates missing catalog tables and columns and re-creates every system view whose definition
changed. It is a pure function of the file's contents, so every replica (and every snapshot it
restores) ends byte-identical."""

from __future__ import annotations

import sqlite3

GENESIS_US = 1_704_067_200_000_000  # fixed created_at of the objects every replica starts with

#: catalog tables added after the first layout (CREATE ... IF NOT EXISTS on every open)
CATALOG_TABLES = [
    """CREATE TABLE IF NOT EXISTS _kdb_storages (storage_id TEXT PRIMARY KEY, storage_name TEXT NOT NULL,
        description TEXT, storage_type TEXT NOT NULL, base_directory TEXT NOT NULL, credentials TEXT,
        config_json TEXT, shared_tables_template TEXT NOT NULL, user_tables_template TEXT NOT NULL,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT""",
    """CREATE TABLE IF NOT EXISTS _kdb_jobs (job_id TEXT PRIMARY KEY, job_type TEXT NOT NULL,
        status TEXT NOT NULL, leader_status TEXT, parameters TEXT, message TEXT, exception_trace TEXT,
        idempotency_key TEXT, queue TEXT, priority INTEGER, retry_count INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL DEFAULT 3, memory_used INTEGER, cpu_used INTEGER,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
        node_id TEXT NOT NULL, leader_node_id TEXT) STRICT""",
    """CREATE TABLE IF NOT EXISTS _kdb_manifest (cache_key TEXT PRIMARY KEY, namespace_id TEXT NOT NULL,
        table_name TEXT NOT NULL, scope TEXT NOT NULL, etag TEXT, last_refreshed INTEGER NOT NULL,
        last_accessed INTEGER NOT NULL, in_memory INTEGER NOT NULL DEFAULT 0, sync_state TEXT NOT NULL,
        manifest_json TEXT NOT NULL, flushed_seq INTEGER NOT NULL DEFAULT 0) STRICT""",
    """CREATE TABLE IF NOT EXISTS _kdb_audit (audit_id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL,
        actor_user_id TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, details TEXT,
        ip_address TEXT, subject_user_id TEXT) STRICT""",
]

#: columns added to the first layout's catalog tables: (table, column, SQL)
ADDED_COLUMNS = [
    ("_kdb_users", "auth_type", "TEXT NOT NULL DEFAULT 'password'"),
    ("_kdb_users", "auth_data", "TEXT"),
    ("_kdb_users", "storage_mode", "TEXT NOT NULL DEFAULT 'table'"),
    ("_kdb_users", "storage_id", "TEXT"),
    ("_kdb_users", "failed_login_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("_kdb_users", "locked_until", "INTEGER"),
    ("_kdb_users", "last_login_at", "INTEGER"),
    ("_kdb_users", "last_seen", "INTEGER"),
    ("_kdb_tables", "updated_at", "INTEGER"),
]

DEFAULT_STORAGE = ("local", "Local Storage", "Default local filesystem storage", "filesystem", "storage",
                   None, None, "{namespace}/{tableName}", "{namespace}/{tableName}/{userId}", GENESIS_US,
                   GENESIS_US)

# view name -> (its SQL body, the catalog tables it reads)
VIEWS: dict[str, tuple[str, frozenset[str]]] = {
    "system.namespaces": (
        """SELECT n.name AS namespace_id, n.name AS name, n.created_at, n.options,
        (SELECT COUNT(*) FROM _kdb_tables t WHERE t.namespace = n.name) AS table_count FROM _kdb_namespaces n""",
        frozenset({"_kdb_namespaces", "_kdb_tables"})),
    "system.schemas": (
        """SELECT namespace || ':' || name AS table_id, name AS table_name, namespace AS namespace_id,
        lower(table_type) AS table_type, created_at, schema_version, columns,
        json_extract(options, '$.COMMENT') AS table_comment, COALESCE(updated_at, created_at) AS updated_at,
        options, CASE WHEN table_type = 'SHARED'
          THEN lower(COALESCE(json_extract(options, '$.ACCESS_LEVEL'), 'private')) END AS access_level,
        1 AS is_latest, COALESCE(json_extract(options, '$.STORAGE_ID'), 'local') AS storage_id,
        0 AS use_user_storage FROM _kdb_tables""",
        frozenset({"_kdb_tables"})),
    "system.tables": (
        """SELECT namespace AS namespace_id, name AS table_name, lower(table_type) AS table_type,
        COALESCE(json_extract(options, '$.STORAGE_ID'), 'local') AS storage_id, schema_version AS version,
        options, json_extract(options, '$.COMMENT') AS comment, COALESCE(updated_at, created_at) AS updated_at,
        created_at FROM _kdb_tables""",
        frozenset({"_kdb_tables"})),
    "system.users": (
        """SELECT user_id, COALESCE(password_hash, '') AS password_hash, role, email, auth_type, auth_data,
        storage_mode, storage_id, failed_login_attempts, locked_until, last_login_at, created_at, updated_at,
        last_seen, deleted_at FROM _kdb_users""",
        frozenset({"_kdb_users"})),
    "system.storages": (
        """SELECT storage_id, storage_name, description, storage_type, base_directory, credentials, config_json,
        shared_tables_template, user_tables_template, created_at, updated_at FROM _kdb_storages""",
        frozenset({"_kdb_storages"})),
    "system.jobs": (
        """SELECT job_id, job_type, status, leader_status, parameters, message, exception_trace, idempotency_key,
        queue, priority, retry_count, max_retries, memory_used, cpu_used, created_at, updated_at, started_at,
        finished_at, node_id, leader_node_id FROM _kdb_jobs""",
        frozenset({"_kdb_jobs"})),
    "system.job_nodes": (
        """SELECT job_id, node_id, status, CASE WHEN status = 'failed' THEN message END AS error_message,
        created_at, started_at, finished_at, updated_at FROM _kdb_jobs""",
        frozenset({"_kdb_jobs"})),
    "system.audit_log": (
        """SELECT audit_id, timestamp, actor_user_id, action, target, details, ip_address, subject_user_id
        FROM _kdb_audit""",
        frozenset({"_kdb_audit"})),
    "system.manifest": (
        """SELECT cache_key, namespace_id, table_name, scope, etag, last_refreshed, last_accessed, in_memory,
        sync_state, manifest_json FROM _kdb_manifest""",
        frozenset({"_kdb_manifest"})),
}

# the data type of every column of the replicated system views (for cell encoding)
VIEW_TYPES: dict[str, dict[str, str]] = {
    "namespaces": {"namespace_id": "Text", "name": "Text", "created_at": "Timestamp", "options": "Json",
                   "table_count": "Int"},
    "schemas": {"table_id": "Text", "table_name": "Text", "namespace_id": "Text", "table_type": "Text",
                "created_at": "Timestamp", "schema_version": "Int", "columns": "Json", "table_comment": "Text",
                "updated_at": "Timestamp", "options": "Json", "access_level": "Text", "is_latest": "Boolean",
                "storage_id": "Text", "use_user_storage": "Boolean"},
    "tables": {"namespace_id": "Text", "table_name": "Text", "table_type": "Text", "storage_id": "Text",
               "version": "Int", "options": "Text", "comment": "Text", "updated_at": "Timestamp",
               "created_at": "Timestamp"},
    "users": {"user_id": "Text", "password_hash": "Text", "role": "Text", "email": "Text", "auth_type": "Text",
              "auth_data": "Json", "storage_mode": "Text", "storage_id": "Text", "failed_login_attempts": "Int",
              "locked_until": "Timestamp", "last_login_at": "Timestamp", "created_at": "Timestamp",
              "updated_at": "Timestamp", "last_seen": "Timestamp", "deleted_at": "Timestamp"},
    "storages": {"storage_id": "Text", "storage_name": "Text", "description": "Text", "storage_type": "Text",
                 "base_directory": "Text", "credentials": "Json", "config_json": "Json",
                 "shared_tables_template": "Text", "user_tables_template": "Text", "created_at": "Timestamp",
                 "updated_at": "Timestamp"},
    "jobs": {"job_id": "Text", "job_type": "Text", "status": "Text", "leader_status": "Text",
             "parameters": "Json", "message": "Text", "exception_trace": "Text", "idempotency_key": "Text",
             "queue": "Text", "priority": "Int", "retry_count": "SmallInt", "max_retries": "SmallInt",
             "memory_used": "BigInt", "cpu_used": "BigInt", "created_at": "Timestamp", "updated_at": "Timestamp",
             "started_at": "Timestamp", "finished_at": "Timestamp", "node_id": "Text", "leader_node_id": "Text"},
    "job_nodes": {"job_id": "Text", "node_id": "Text", "status": "Text", "error_message": "Text",
                  "created_at": "Timestamp", "started_at": "Timestamp", "finished_at": "Timestamp",
                  "updated_at": "Timestamp"},
    "audit_log": {"audit_id": "Text", "timestamp": "Timestamp", "actor_user_id": "Text", "action": "Text",
                  "target": "Text", "details": "Text", "ip_address": "Text", "subject_user_id": "Text"},
    "manifest": {"cache_key": "Text", "namespace_id": "Text", "table_name": "Text", "scope": "Text",
                 "etag": "Text", "last_refreshed": "Timestamp", "last_accessed": "Timestamp",
                 "in_memory": "Boolean", "sync_state": "Text", "manifest_json": "Json"},
}

VIEW_BASES: dict[str, frozenset[str]] = {name: bases for name, (_, bases) in VIEWS.items()}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring the catalog and the system views to the current layout (inside the caller's
    transaction; idempotent and deterministic)."""
    for sql in CATALOG_TABLES:
        conn.execute(sql)
    for table, column, decl in ADDED_COLUMNS:
        if column not in _columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    conn.execute("INSERT OR IGNORE INTO _kdb_storages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", DEFAULT_STORAGE)
    have = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view' AND name LIKE 'system.%'"))
    for name, (body, _) in VIEWS.items():
        sql = f'CREATE VIEW "{name}" AS {body}'
        if have.get(name) != sql:
            if name in have:
                conn.execute(f'DROP VIEW "{name}"')
            conn.execute(sql)
