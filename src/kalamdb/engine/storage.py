"""STORAGE statements and jobs: CREATE/ALTER/DROP STORAGE, STORAGE FLUSH (TABLE | ALL), STORAGE
COMPACT and KILL JOB, applied like every other command.

How flushing is replicated: **every replica writes its own files while applying the command**.
The command fixes everything that decides the files' contents (the log index names the job and
the batch, the command's clock stamps it), and the rows come from the replicated state at that
log index, so every replica writes the same rows to the same file names. The job row and the
manifest (system.jobs, system.manifest) are ordinary replicated state and are covered by the
digest; the manifest's etag is a hash of the rows written, so replicas can be compared without
reading files. No leader-only job runner, no second round through the log, and every node serves
its own files to local tools. A failure to write a file (disk full, I/O error) is a failure of the
machine, not of the command: it aborts the batch like any SQLite I/O error (never recorded as a
"failed" job on one replica only).

What a flush writes: for each scope (SHARED: the table; USER: each owner) the rows written since
the previous flush, latest version per primary key, tombstones dropped, as `batch-<n>.parquet`
under `<base_directory>/<namespace>/<table>[/<user_id>]` (the storage's templates), with the
scope's manifest as `_manifest.json` (upstream: `manifest.json`; the underscore lets tools read the
directory as one Parquet dataset). SQLite stays
the store of record, so queries, updates and deletes see flushed and unflushed rows alike; the
Parquet files are for other tools (pyarrow, DuckDB, Spark...). STORAGE COMPACT rewrites a scope's
batches as one file holding its current rows."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from kalamdb.engine import catalog as cat
from kalamdb.engine.types import ADMIN_ROLES, ExecContext, message, require_admin
from kalamdb.engine.users import audit
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st

if TYPE_CHECKING:
    from kalamdb.engine.database import Database

FLUSH_CHUNK_ROWS = 50_000  # rows read and written per Parquet row group
#: the scope's manifest beside its batches; the leading '_' makes Arrow/Spark/DuckDB directory reads skip it
MANIFEST_FILE = "_manifest.json"
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,127}")
MAINTENANCE_ROLES = ("service", "dba", "system")


def require_maintenance(ctx: ExecContext, what: str) -> None:
    if ctx.principal.role not in MAINTENANCE_ROLES:
        raise KalamError("PERMISSION_DENIED", f"Unauthorized: {what} requires Service, DBA, or System role")


# ------------------------------------------------------------------------------------ storages


def _storage_row(ctx: ExecContext, storage_id: str):
    return ctx.conn.execute("SELECT storage_id, storage_type, base_directory, shared_tables_template, "
                            "user_tables_template FROM _kdb_storages WHERE storage_id = ?", (storage_id,)).fetchone()


def _check_json_object(text: str | None, what: str) -> None:
    if text is None:
        return
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    if not ok:
        raise KalamError("SQL_EXECUTION_ERROR", f"{what} must be a JSON object")


def _check_base_directory(path: str) -> None:
    if not path or "\x00" in path or any(part == ".." for part in re.split(r"[/\\]", path)):
        raise KalamError("SQL_EXECUTION_ERROR", f"Invalid base directory '{path}': it may not be empty or contain '..'")


def create_storage(db: Database, ctx: ExecContext, s: st.CreateStorage) -> dict:
    require_admin(ctx.principal, "CREATE STORAGE")
    if _storage_row(ctx, s.storage_id) is not None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Storage '{s.storage_id}' already exists")
    _check_json_object(s.credentials, "Credentials")
    _check_json_object(s.config_json, "CONFIG")
    _check_base_directory(s.base_directory)
    _check_templates(s.shared_tables_template, s.user_tables_template)
    now = ctx.state.now_us
    ctx.conn.execute("INSERT INTO _kdb_storages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (s.storage_id, s.storage_name or s.storage_id, s.description, s.storage_type,
                      s.base_directory, s.credentials, s.config_json,
                      s.shared_tables_template or "{namespace}/{tableName}",
                      s.user_tables_template or "{namespace}/{tableName}/{userId}", now, now))
    audit(ctx, "CREATE_STORAGE", f"storage:{s.storage_id}", {"storage_type": s.storage_type})
    return message(f"Storage '{s.storage_id}' created successfully", ctx)


def alter_storage(db: Database, ctx: ExecContext, s: st.AlterStorage) -> dict:
    require_admin(ctx.principal, "ALTER STORAGE")
    if _storage_row(ctx, s.storage_id) is None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Storage '{s.storage_id}' not found")
    _check_json_object(s.config_json, "CONFIG")
    _check_templates(s.shared_tables_template, s.user_tables_template)
    sets = {"storage_name": s.storage_name, "description": s.description,
            "shared_tables_template": s.shared_tables_template, "user_tables_template": s.user_tables_template,
            "config_json": s.config_json}
    for col, value in sets.items():
        if value is not None:
            ctx.conn.execute(f"UPDATE _kdb_storages SET {col} = ? WHERE storage_id = ?", (value, s.storage_id))
    ctx.conn.execute("UPDATE _kdb_storages SET updated_at = ? WHERE storage_id = ?", (ctx.state.now_us, s.storage_id))
    audit(ctx, "ALTER_STORAGE", f"storage:{s.storage_id}", None)
    return message(f"Storage '{s.storage_id}' altered successfully", ctx)


def drop_storage(db: Database, ctx: ExecContext, s: st.DropStorage) -> dict:
    require_admin(ctx.principal, "DROP STORAGE")
    if _storage_row(ctx, s.storage_id) is None:
        if s.if_exists:
            return message(f"Storage '{s.storage_id}' does not exist (skipped)", ctx)
        raise KalamError("SQL_EXECUTION_ERROR", f"Storage '{s.storage_id}' not found")
    using = [t for t in db.writer_catalog.tables.values() if str(t.options.get("STORAGE_ID", "local")) == s.storage_id]
    if using or s.storage_id == "local":
        n = len(using)
        raise KalamError("SQL_EXECUTION_ERROR", f"Cannot drop storage '{s.storage_id}': "
                         + (f"{n} table(s) still using it" if n else "it is the default storage"))
    ctx.conn.execute("DELETE FROM _kdb_storages WHERE storage_id = ?", (s.storage_id,))
    audit(ctx, "DROP_STORAGE", f"storage:{s.storage_id}", None)
    return message(f"Storage '{s.storage_id}' dropped successfully", ctx)


# ------------------------------------------------------------------------------------ jobs


def _job_id(prefix: str, ctx: ExecContext, table: str) -> str:
    """A job id every replica computes alike: the command's log index and the table name it is for."""
    digest = hashlib.sha256(f"{ctx.index}:{ctx.state.now_us}:{table}".encode()).hexdigest()
    return f"{prefix}-{digest[:12]}"


def record_job(ctx: ExecContext, job_id: str, job_type: str, params: dict, status: str, msg: str,
                trace: str | None = None) -> None:
    now = ctx.state.now_us
    ctx.conn.execute(
        "INSERT INTO _kdb_jobs (job_id, job_type, status, leader_status, parameters, message, exception_trace, "
        "idempotency_key, queue, priority, retry_count, max_retries, memory_used, cpu_used, created_at, updated_at, "
        "started_at, finished_at, node_id, leader_node_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'default', 0, 0, 3, "
        "NULL, NULL, ?, ?, ?, ?, ?, ?)",
        (job_id, job_type, status, status, json.dumps(params, sort_keys=True), msg, trace,
         f"{job_type}-{params.get('namespace_id')}-{params.get('table_name')}", now, now, now, now,
         str(ctx.state.node_id), str(ctx.state.node_id)))


def kill_job(db: Database, ctx: ExecContext, s: st.KillJob) -> dict:
    require_admin(ctx.principal, "KILL JOB")
    row = ctx.conn.execute("SELECT status FROM _kdb_jobs WHERE job_id = ?", (s.job_id,)).fetchone()
    if row is None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Job '{s.job_id}' not found")
    if row[0] not in ("new", "queued", "running", "retrying"):
        raise KalamError("SQL_EXECUTION_ERROR", f"Cannot cancel job {s.job_id}: it is already {row[0]}")
    now = ctx.state.now_us
    ctx.conn.execute("UPDATE _kdb_jobs SET status = 'cancelled', leader_status = 'cancelled', updated_at = ?, "
                     "finished_at = ? WHERE job_id = ?", (now, now, s.job_id))
    audit(ctx, "KILL_JOB", f"job:{s.job_id}", None)
    return message(f"Job {s.job_id} killed: cancelled", ctx)


# ------------------------------------------------------------------------------------ flush


def _table(db: Database, ctx: ExecContext, ns: str | None, name: str | None, verb: str) -> cat.TableInfo:
    if name is None:  # the parser names the table unless the statement says ALL
        raise KalamError("INVALID_SQL", f"STORAGE {verb} TABLE needs a table name")
    ns = ns or ctx.namespace
    info = db.writer_catalog.tables.get((ns, name))
    if info is None:
        raise KalamError("TABLE_NOT_FOUND", f"Table {ns}.{name} not found")
    if info.table_type == "STREAM":
        raise KalamError("SQL_EXECUTION_ERROR", f"STORAGE {verb} TABLE is not supported for STREAM tables")
    return info


def _tables_in(db: Database, ctx: ExecContext, ns: str | None) -> tuple[str, list[cat.TableInfo]]:
    ns = ns or ctx.namespace
    if ns not in db.writer_catalog.namespaces:
        raise KalamError("SQL_EXECUTION_ERROR", f"Namespace '{ns}' does not exist")
    tables = sorted((t for (n, _), t in db.writer_catalog.tables.items() if n == ns and t.table_type != "STREAM"),
                    key=lambda t: t.name)
    return ns, tables


def storage_flush(db: Database, ctx: ExecContext, s: st.StorageFlush) -> dict:
    require_maintenance(ctx, "STORAGE FLUSH ALL" if s.all else "STORAGE FLUSH TABLE")
    if not s.all:
        info = _table(db, ctx, s.namespace, s.name, "FLUSH")
        job = _flush_table(db, ctx, info, compact=False)
        if job is None:
            return message(f"Storage flush skipped: no pending writes for table '{info.full_name}'", ctx)
        return message(f"Storage flush started for table '{info.full_name}'. Job ID: {job}", ctx)
    ns, tables = _tables_in(db, ctx, s.namespace)
    jobs = [j for j in (_flush_table(db, ctx, t, compact=False) for t in tables) if j is not None]
    if not jobs:
        return message(f"Storage flush skipped: no pending writes in namespace '{ns}'", ctx)
    return message(f"Storage flush started for {len(jobs)} table(s) in namespace '{ns}'. "
                   f"Job IDs: [{', '.join(jobs)}]", ctx)


def storage_compact(db: Database, ctx: ExecContext, s: st.StorageCompact) -> dict:
    require_maintenance(ctx, "STORAGE COMPACT ALL" if s.all else "STORAGE COMPACT TABLE")
    if not s.all:
        info = _table(db, ctx, s.namespace, s.name, "COMPACT")
        job = _flush_table(db, ctx, info, compact=True)
        return message(f"Storage compaction started for table '{info.full_name}'. Job ID: {job}", ctx)
    ns, tables = _tables_in(db, ctx, s.namespace)
    jobs = [_flush_table(db, ctx, t, compact=True) for t in tables]
    return message(f"Storage compaction started for {len(jobs)} table(s) in namespace '{ns}'. "
                   f"Job IDs: [{', '.join(j for j in jobs if j)}]", ctx)


def _path_component(value: str) -> str:
    """A user id as one directory name: kept when it is a plain name, else hex-encoded (so no id
    can climb out of the table's directory or collide with another)."""
    if _SAFE_COMPONENT.fullmatch(value) and value not in (".", ".."):
        return value
    return "u_" + value.encode().hex()


def scope_dir(db: Database, ctx: ExecContext, info: cat.TableInfo, owner: str | None) -> Path:
    storage_id = str(info.options.get("STORAGE_ID", "local"))
    row = _storage_row(ctx, storage_id)
    if row is None:
        raise KalamError("SQL_EXECUTION_ERROR", f"Storage '{storage_id}' of table {info.full_name} not found")
    _, storage_type, base, shared_t, user_t = row
    if storage_type != "filesystem":
        raise KalamError("SQL_EXECUTION_ERROR", f"Storage '{storage_id}' is of type '{storage_type}'; kalamdb "
                         "writes Parquet files to filesystem storages only")
    template = user_t if owner is not None else shared_t
    rel = (template.replace("{namespace}", info.namespace).replace("{tableName}", info.name)
           .replace("{userId}", _path_component(owner or "")).replace("{shard}", "0"))
    parts = [p for p in re.split(r"[/\\]+", rel) if p and p != "."]
    if any(p == ".." for p in parts):
        raise KalamError("SQL_EXECUTION_ERROR", f"Storage template of '{storage_id}' leaves its base directory")
    root = Path(base) if os.path.isabs(base) else db.data_dir / base
    return root.joinpath(*parts)


def _flush_table(db: Database, ctx: ExecContext, info: cat.TableInfo, *, compact: bool) -> str | None:
    """Write the table's pending rows (compact: all current rows) per scope; returns the job id,
    or None when a flush has nothing to write."""
    conn = ctx.conn
    q = cat.quote_ident(info.storage)
    owned = info.table_type in cat.OWNED_TYPES
    scopes = [r[0] for r in conn.execute(f"SELECT DISTINCT _owner FROM {q} ORDER BY _owner")] if owned else [None]
    plans = []
    for owner in scopes:
        key = f"{info.namespace}:{info.name}:{owner if owned else 'shared'}"
        prev = conn.execute("SELECT manifest_json, flushed_seq FROM _kdb_manifest WHERE cache_key = ?",
                            (key,)).fetchone()
        flushed = prev[1] if prev else 0
        where, args = ("_owner = ?", [owner]) if owned else ("1", [])
        newest = conn.execute(f"SELECT MAX(_seq) FROM {q} WHERE {where}", args).fetchone()[0]
        if newest is None or (newest <= flushed and not compact):
            continue
        plans.append((owner, key, prev, flushed, newest, where, args))
    if not plans and not compact:
        return None
    job = _job_id("CO" if compact else "FL", ctx, info.full_name)
    total = 0
    for owner, key, prev, flushed, newest, where, args in plans:
        total += _write_scope(db, ctx, info, owner, key, prev, flushed, newest, where, args, compact)
    verb = "Compacted" if compact else "Flushed"
    params = {"namespace_id": info.namespace, "table_name": info.name, "table_type": info.table_type.lower()}
    record_job(ctx, job, "compact" if compact else "flush", params, "completed",
                f"{verb} {total} row(s) of {info.full_name} in {len(plans)} scope(s)")
    return job


def _write_scope(db: Database, ctx: ExecContext, info: cat.TableInfo, owner: str | None, key: str, prev,
                 flushed: int, newest: int, where: str, args: list, compact: bool) -> int:
    import pyarrow as pa  # imported on first flush: pyarrow costs ~0.2 s to import
    import pyarrow.parquet as pq

    from kalamdb.engine.parquet import arrow_schema, to_arrow_columns

    manifest = json.loads(prev[0]) if prev else {"segments": []}
    directory = scope_dir(db, ctx, info, owner)
    directory.mkdir(parents=True, exist_ok=True)
    batch = int(manifest.get("next_batch", len(manifest["segments"])))
    name = f"batch-{batch}.parquet"
    cols = [c.name for c in info.columns]
    select = ", ".join([cat.quote_ident(c) for c in cols] + ["_seq", "_deleted"])
    cond = f"{where} AND _deleted = 0" + ("" if compact else " AND _seq > ?")
    order = cat.quote_ident(info.primary_key) if info.primary_key else "_seq"
    cur = ctx.conn.execute(f"SELECT {select} FROM {cat.quote_ident(info.storage)} WHERE {cond} ORDER BY {order}",
                           args + ([] if compact else [flushed]))
    schema = arrow_schema(info)
    digest = hashlib.sha256()
    rows = 0
    tmp = directory / f".{name}.tmp"
    with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
        while True:
            chunk = cur.fetchmany(FLUSH_CHUNK_ROWS)
            if not chunk and rows:
                break
            digest.update(repr(chunk).encode())
            writer.write_table(pa.Table.from_arrays(to_arrow_columns(info, chunk), schema=schema))
            rows += len(chunk)
            if not chunk:
                break  # an empty scope still gets a file with the schema
    os.replace(tmp, directory / name)
    segment = {"id": name, "path": name, "row_count": rows, "min_seq": flushed + 1 if not compact else 0,
               "max_seq": newest, "size_bytes": (directory / name).stat().st_size}
    if compact:
        for old in manifest["segments"]:
            if old["path"] != name:
                try:
                    (directory / old["path"]).unlink()
                except FileNotFoundError:
                    pass
        manifest["segments"] = [segment]
    else:
        manifest["segments"].append(segment)
    manifest.update({"table_id": f"{info.namespace}:{info.name}", "scope": owner or "shared",
                     "version": int(manifest.get("version", 0)) + 1, "next_batch": batch + 1,
                     "last_flushed_seq": newest, "updated_at": ctx.state.now_us})
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    (directory / MANIFEST_FILE).write_text(text)
    now = ctx.state.now_us
    ctx.conn.execute(
        "INSERT INTO _kdb_manifest (cache_key, namespace_id, table_name, scope, etag, last_refreshed, last_accessed, "
        "in_memory, sync_state, manifest_json, flushed_seq) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'in_sync', ?, ?) "
        "ON CONFLICT (cache_key) DO UPDATE SET etag = excluded.etag, last_refreshed = excluded.last_refreshed, "
        "last_accessed = excluded.last_accessed, sync_state = 'in_sync', manifest_json = excluded.manifest_json, "
        "flushed_seq = excluded.flushed_seq",
        (key, info.namespace, info.name, owner or "shared", digest.hexdigest()[:32], now, now, text, newest))
    return rows


def drop_table_files(db: Database, ctx: ExecContext, info: cat.TableInfo) -> str:
    """DROP TABLE's cleanup job (upstream's `CL-` job): the table's manifest rows go, and with them
    exactly the files they list (and directories left empty), on every replica while it applies
    the drop. Returns the job id."""
    rows = ctx.conn.execute("SELECT scope, manifest_json FROM _kdb_manifest WHERE namespace_id = ? AND "
                            "table_name = ? ORDER BY cache_key", (info.namespace, info.name)).fetchall()
    ctx.conn.execute("DELETE FROM _kdb_manifest WHERE namespace_id = ? AND table_name = ?",
                     (info.namespace, info.name))
    removed = 0
    for scope, text in rows:
        try:
            directory = scope_dir(db, ctx, info, None if scope == "shared" else scope)
        except KalamError:
            continue  # its storage is gone or not on the filesystem: no files of ours there
        names = [seg["path"] for seg in json.loads(text).get("segments", [])] + [MANIFEST_FILE]
        for name in names:
            path = directory / name
            if path.is_file():
                path.unlink()
                removed += 1
        for d in (directory, directory.parent) if scope != "shared" else (directory,):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    job = _job_id("CL", ctx, info.full_name)
    params = {"namespace_id": info.namespace, "table_name": info.name, "table_type": info.table_type.lower()}
    record_job(ctx, job, "cleanup", params, "completed", f"Removed {removed} file(s) of {info.full_name}")
    return job


def _check_templates(shared: str | None, user: str | None) -> None:
    """Upstream's template rules: shared needs {namespace} before {tableName}; user needs {userId},
    after {tableName} (and {shard}), with {namespace} before {tableName}."""
    def pos(t: str, key: str) -> int | None:
        i = t.find(key)
        return None if i < 0 else i

    if shared:
        ns, tn = pos(shared, "{namespace}"), pos(shared, "{tableName}")
        if ns is None or tn is None:
            raise KalamError("SQL_EXECUTION_ERROR", "Shared table template: both {namespace} and {tableName} are "
                             "required")
        if ns >= tn:
            raise KalamError("SQL_EXECUTION_ERROR", "Shared table template: {namespace} must appear before "
                             "{tableName}")
    if user:
        ns, tn, sh, uid = (pos(user, k) for k in ("{namespace}", "{tableName}", "{shard}", "{userId}"))
        if uid is None:
            raise KalamError("SQL_EXECUTION_ERROR", "User table template: {userId} is required")
        if tn is None:
            raise KalamError("SQL_EXECUTION_ERROR", "User table template: {tableName} is required")
        if ns is not None and ns >= tn:
            raise KalamError("SQL_EXECUTION_ERROR", "User table template: {namespace} must appear before "
                             "{tableName}")
        if (sh is not None and not tn < sh < uid) or tn >= uid:
            raise KalamError("SQL_EXECUTION_ERROR", "User table template: the order must be {namespace}, "
                             "{tableName}, {shard}, {userId}")


def is_maintenance_role(role: str) -> bool:
    return role in MAINTENANCE_ROLES or role in ADMIN_ROLES
