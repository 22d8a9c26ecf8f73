"""The grammar of storage statements: CREATE/ALTER/DROP STORAGE and STORAGE FLUSH|COMPACT. Execution
is engine/storage.py and engine/parquet.py."""

from __future__ import annotations

import re

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.tokens import Cursor, check_name, qualified

_STORAGE_TYPES = ("filesystem", "s3", "gcs", "azure")
_STORAGE_WORDS = ("TYPE", "NAME", "DESCRIPTION", "PATH", "BASE_DIRECTORY", "BUCKET", "REGION",
                  "SHARED_TABLES_TEMPLATE", "USER_TABLES_TEMPLATE", "CREDENTIALS", "CONFIG")


def storage_id_of(c: Cursor) -> str:
    storage_id = c.name("storage id")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", storage_id):
        raise KalamError("INVALID_SQL", f"Invalid storage id '{storage_id[:80]}': use letters, digits, _ and -")
    return storage_id


def parse_create_storage(c: Cursor) -> st.CreateStorage:
    """After CREATE STORAGE: `id TYPE t PATH '...' [option value]...`."""
    storage_id = storage_id_of(c)
    opts: dict[str, str] = {}
    while not c.done():
        key = c.name("storage option").upper()
        if key not in _STORAGE_WORDS:
            raise KalamError("INVALID_SQL", f"Unknown CREATE STORAGE option {key} (known: {', '.join(_STORAGE_WORDS)})")
        t = c.peek()
        if t is None or t.kind not in ("str", "word"):
            raise KalamError("INVALID_SQL", f"Expected a value after {key}")
        c.i += 1
        opts[key] = str(t.value)
    storage_type = opts.get("TYPE", "").lower()
    if storage_type not in _STORAGE_TYPES:
        raise KalamError("INVALID_SQL", f"Invalid storage type '{storage_type}'. Must be 'filesystem', 's3', "
                         "'gcs', or 'azure'")
    base = opts.get("PATH") or opts.get("BASE_DIRECTORY")
    if storage_type == "s3" and "BUCKET" in opts:
        base = opts["BUCKET"] if opts["BUCKET"].startswith("s3://") else f"s3://{opts['BUCKET']}"
    if not base:
        raise KalamError("INVALID_SQL", "CREATE STORAGE needs PATH or BASE_DIRECTORY '...'")
    return st.CreateStorage(storage_id, storage_type, base, opts.get("NAME"), opts.get("DESCRIPTION"),
                            opts.get("SHARED_TABLES_TEMPLATE"), opts.get("USER_TABLES_TEMPLATE"),
                            opts.get("CREDENTIALS"), opts.get("CONFIG"))


def parse_drop_storage(c: Cursor) -> st.DropStorage:
    """After DROP STORAGE: `[IF EXISTS] id`."""
    ie = c.accept("IF", "EXISTS")
    storage_id = storage_id_of(c)
    c.end()
    return st.DropStorage(storage_id, ie)


def parse_alter_storage(c: Cursor) -> st.AlterStorage:
    """After ALTER STORAGE: `id SET key 'value' [, SET ...]`."""
    storage_id = storage_id_of(c)
    sets: dict[str, str] = {}
    fields = {"NAME": "storage_name", "DESCRIPTION": "description", "SHARED_TABLES_TEMPLATE": "shared_tables_template",
              "USER_TABLES_TEMPLATE": "user_tables_template", "CONFIG": "config_json"}
    while not c.done():
        c.accept_op(",")
        c.expect("SET")
        key = c.name("storage setting").upper()
        if key not in fields:
            raise KalamError("INVALID_SQL", f"ALTER STORAGE can SET {', '.join(fields)}")
        c.accept_op("=")
        sets[fields[key]] = c.string(key)
    if not sets:
        raise KalamError("INVALID_SQL", "ALTER STORAGE needs SET NAME|DESCRIPTION|SHARED_TABLES_TEMPLATE|"
                         "USER_TABLES_TEMPLATE|CONFIG '...'")
    return st.AlterStorage(storage_id, **sets)


def parse_storage_maintenance(c: Cursor) -> st.Statement:
    """STORAGE FLUSH TABLE t | STORAGE FLUSH ALL [IN [NAMESPACE] ns] (and the same for COMPACT)."""
    c.expect("STORAGE")
    if c.accept("FLUSH"):
        cls: type = st.StorageFlush
    elif c.accept("COMPACT"):
        cls = st.StorageCompact
    else:
        raise KalamError("INVALID_SQL", "Expected FLUSH or COMPACT after STORAGE")
    if c.accept("TABLE"):
        ns, name = qualified(c)
        c.end()
        return cls(ns, name, False)
    c.expect("ALL")
    ns = None
    if c.accept("IN"):
        c.accept("NAMESPACE")
        ns = check_name(c.name("namespace name").lower(), "namespace")
    c.end()
    return cls(ns, None, True)
