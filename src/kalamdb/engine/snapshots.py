"""Digests and snapshots of the replicated state (the whole SQLite file). The digest hashes every
replicated table's schema and rows in rowid order, so equal digests at equal applied indexes mean
byte-identical state (the kit compares them); a snapshot is an online backup of the writer's file,
and restoring one first checks that the file is an intact kalamdb state."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import msgpack

from kalamdb.engine import catalog as cat
from kalamdb.errors import KalamError

APPLIED_INDEX_SQL = "SELECT value FROM _kdb_meta WHERE key = 'applied_index'"


def digest_with_index(conn: sqlite3.Connection) -> tuple[int, str]:
    """(applied index, SHA-256 over every replicated table and view) in ONE read transaction on
    `conn`, so the pair is consistent even while the writer keeps applying."""
    h = hashlib.sha256()
    conn.execute("BEGIN")
    try:
        index = conn.execute(APPLIED_INDEX_SQL).fetchone()[0]
        objects = conn.execute("SELECT type, name, sql FROM main.sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                               "ORDER BY type, name").fetchall()
        for typ, name, sql in objects:
            h.update(msgpack.packb([typ, name, sql]))
            if typ == "table":
                for row in conn.execute(f"SELECT * FROM main.{cat.quote_ident(name)} ORDER BY rowid"):
                    h.update(msgpack.packb(row, use_bin_type=True))
    finally:
        conn.execute("COMMIT")
    return int(index), h.hexdigest()


def backup_to(wconn: sqlite3.Connection, path: Path) -> int:
    """Copy the state behind `wconn` (the caller holds the write lock) to `path`; its applied index."""
    dst = sqlite3.connect(path, isolation_level=None)
    try:
        wconn.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        index = dst.execute(APPLIED_INDEX_SQL).fetchone()[0]
    finally:
        dst.close()
    return int(index)


def restore_into(wconn: sqlite3.Connection, path: Path) -> None:
    """Replace the state behind `wconn` (the caller holds the write lock) by the snapshot at `path`,
    refused with INVALID_INPUT unless it is an intact kalamdb state."""
    if not path.is_file():
        raise KalamError("INVALID_INPUT", f"Snapshot file {path} does not exist")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        try:
            ok = src.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            ok = ok and src.execute(APPLIED_INDEX_SQL).fetchone()
        except sqlite3.Error:
            ok = False
        if not ok:
            raise KalamError("INVALID_INPUT", f"{path} is not a kalamdb snapshot")
        src.backup(wconn)
    finally:
        src.close()
