"""The replicated command format: what a proposer writes to the log and every replica applies. A
command is a msgpack map with a version; `sql` carries a request's statements and the fixed inputs
that make it deterministic, `noop` only advances the applied index, and `expire` deletes STREAM rows
past their TTL at one log index on every replica."""

from __future__ import annotations

import random
import sqlite3

import msgpack

from kalamdb.engine.catalog import Catalog, quote_ident
from kalamdb.engine.passwords import hash_password
from kalamdb.engine.types import Outcome, Prepared
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st

COMMAND_VERSION = 1


def decode_command(command: bytes) -> dict:
    """A log entry's command, checked for a version this build applies."""
    cmd = msgpack.unpackb(command, raw=False)
    if not isinstance(cmd, dict) or cmd.get("v") != COMMAND_VERSION:
        raise KalamError("INTERNAL_ERROR", "Unsupported command format")
    return cmd


def sql_command(prepared: Prepared, *, now_us: int, node_id: int) -> bytes:
    """A request as the command every replica applies: its statements (passwords as hashes), who
    asked, and the fixed inputs of its non-deterministic functions (time, seed, node id)."""
    wire = []
    for s in prepared.statements:
        w = s.to_wire()  # never contains a plaintext password (the field is not on the wire)
        if isinstance(s, (st.CreateUser, st.AlterUser)) and s.password is not None:
            w["password_hash"] = hash_password(s.password)
        wire.append(w)
    p = prepared.principal
    cmd = {"v": COMMAND_VERSION, "kind": "sql", "now": int(now_us), "node": int(node_id),
           "seed": random.getrandbits(63), "user": [p.user_id, p.username, p.role],
           "ns": prepared.namespace, "params": prepared.params, "stmts": wire}
    return msgpack.packb(cmd, use_bin_type=True)


def noop_command() -> bytes:
    """A command that changes nothing but the applied index (Raft no-op and config entries)."""
    return msgpack.packb({"v": COMMAND_VERSION, "kind": "noop"})


def expiry_command(conn: sqlite3.Connection, catalog: Catalog, now_us: int) -> bytes | None:
    """An `expire` command when some STREAM table (of the published catalog) holds rows past their
    TTL, else None: the node proposes it, and every replica deletes the same rows."""
    for info in catalog.tables.values():
        if info.table_type != "STREAM":
            continue
        cutoff = now_us - int(info.options["TTL_SECONDS"]) * 1_000_000
        try:
            row = conn.execute(f"SELECT 1 FROM {quote_ident(info.storage)} WHERE _ts < ? LIMIT 1",
                               (cutoff,)).fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            return msgpack.packb({"v": COMMAND_VERSION, "kind": "expire", "now": int(now_us)})
    return None


def apply_expiry(conn: sqlite3.Connection, catalog: Catalog, now_us: int) -> Outcome:
    """STREAM rows past their TTL go, on every replica at the same log index (expiry is not a
    change subscribers are told about, as upstream)."""
    total = 0
    for info in catalog.tables.values():
        if info.table_type == "STREAM":
            cutoff = now_us - int(info.options["TTL_SECONDS"]) * 1_000_000
            cur = conn.execute(f"DELETE FROM {quote_ident(info.storage)} WHERE _ts < ?", (cutoff,))
            total += cur.rowcount
    return Outcome([{"row_count": total, "message": f"Expired {total} row(s)"}], None)
