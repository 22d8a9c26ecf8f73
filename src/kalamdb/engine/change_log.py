"""The durable change log `_kdb_changes` (engine/changes.py describes it): appended in the apply
transaction, so it is replicated state; pruned by retention only at fixed log indexes and by the
log's own newest time, so every replica prunes identically; read after a `_seq` for resuming."""

from __future__ import annotations

import sqlite3

from kalamdb.engine import changes
from kalamdb.engine.changes import Change, ResumeTooOld


def append(conn: sqlite3.Connection, pending: list[Change]) -> None:
    """Write the batch's changes to the change log (in the batch's transaction) and clear them."""
    if pending:
        conn.executemany("INSERT INTO _kdb_changes VALUES (?, ?, ?, ?, ?, ?)",
                         [(c.seq, c.index, c.table, c.owner or "", c.op, c.encode()) for c in pending])
        pending.clear()


def prune(conn: sqlite3.Connection) -> None:
    """Drop changes past the retention (by the newest change's time, and by count): depends
    only on the log itself, and runs at fixed indexes, so every replica prunes identically.
    The retention is read from engine/changes.py at each call (tests lower it there)."""
    newest = conn.execute("SELECT MAX(seq) FROM _kdb_changes").fetchone()[0]
    if newest is None:
        return
    cutoff = newest - ((changes.CHANGE_RETENTION_S * 1000) << 22)
    row = conn.execute("SELECT seq FROM _kdb_changes ORDER BY seq DESC LIMIT 1 OFFSET ?",
                       (changes.CHANGE_RETENTION_ROWS,)).fetchone()
    if row is not None:
        cutoff = max(cutoff, row[0] + 1)
    gone = conn.execute("SELECT MAX(seq) FROM _kdb_changes WHERE seq < ?", (cutoff,)).fetchone()[0]
    if gone is not None:
        conn.execute("DELETE FROM _kdb_changes WHERE seq <= ?", (gone,))
        conn.execute("UPDATE _kdb_meta SET value = MAX(value, ?) WHERE key = 'changes_pruned_upto'", (gone,))


def read_since(conn: sqlite3.Connection, table: str, owner: str | None, after_seq: int,
               limit: int) -> tuple[int, list[Change]]:
    """(applied index, up to `limit` changes of `table` with `_seq` > after_seq, oldest first) in
    one read transaction on `conn`. Raises ResumeTooOld when changes after `after_seq` may have
    been pruned."""
    conn.execute("BEGIN")
    try:
        meta = dict(conn.execute("SELECT key, value FROM _kdb_meta WHERE key IN "
                                 "('applied_index', 'changes_pruned_upto')"))
        if after_seq < int(meta["changes_pruned_upto"]):
            raise ResumeTooOld(table, after_seq, int(meta["changes_pruned_upto"]))
        rows = conn.execute("SELECT seq, idx, tbl, owner, op, data FROM _kdb_changes WHERE tbl = ? AND owner = ? "
                            "AND seq > ? ORDER BY seq LIMIT ?", (table, owner or "", after_seq, limit)).fetchall()
    finally:
        conn.execute("COMMIT")
    return int(meta["applied_index"]), [Change.decode(*r) for r in rows]
