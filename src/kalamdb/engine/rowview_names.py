"""The names the compiler gives to, and keeps from, user SQL: the hidden columns every row carries,
the row views' alias of the storage rowid, and the namespaces of system tables. A module of its own
because both the read rewrite (engine/compile.py) and the write rewrite (engine/compile_writes.py)
need them."""

from __future__ import annotations

HIDDEN = ("_seq", "_deleted")
SYSTEM_NAMESPACES = ("system", "information_schema")
ROWID = "_kdb_rowid"  # the row views' name for the storage table's rowid (writes address rows by it)
