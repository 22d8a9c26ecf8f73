"""SQLite's authorizer as the last line of isolation: SQL derived from a user's text may touch only
what its compilation declared, so a reference the syntax-tree rewrite missed fails closed.

The rewrite (engine/compile.py) decides what a statement *means*: which tables it reads, whose
rows, which functions it calls. This module decides what SQLite lets it *touch*, and it does so
where SQLite resolves names, so no trick of quoting, scoping or aliasing in the text can reach
around it:

- Reads: a statement may read only the objects in its allowlist (the per-table row views
  `"ns.t@v"` and system views it was compiled against, and node-local `system.*` tables). A storage
  table (`"ns.t"`) is readable only from inside its own row view, whose body applies the owner
  filter, and the catalog (`_kdb_*`) only from inside the system views; `sqlite_master` never.
  (SQLite names the enclosing view, trigger *or CTE* as the source of a read, so the compiler
  refuses CTE names that are not plain identifiers: no CTE can pose as one of our views.)
- Writes: only to the statement's single declared target table (the two-phase writer writes
  through fixed templates and does not need even that).
- Functions: a fixed allowlist (SQLite's pure built-ins plus ours), so `fts3_tokenizer()`,
  `load_extension()`, `random()` (non-deterministic on replicas) and the like are refused.
- Everything else (PRAGMA, ATTACH, DDL, transactions, virtual tables) is denied.

The policy applies only while user-derived SQL is being prepared (`UserScope`); the engine's own
fixed statements (catalog upkeep, the write templates, digests) run with the guard lowered. SQLite
calls the authorizer when a statement is prepared, so a cached statement keeps the decision of its
first prepare; that is sound because a given text is only ever run in one of the two modes (user
SQL comes out of the compiler and never uses `?` placeholders, which every internal statement does).
"""

from __future__ import annotations

import re
import sqlite3

from kalamdb.engine.catalog import VIEW_SUFFIX
from kalamdb.sql.types import COERCERS

# SQLite's deterministic built-ins that read nothing but their arguments (core, date/time, math,
# JSON, aggregates, windows). Not here: random/randomblob/changes/total_changes/last_insert_rowid
# (differ between replicas), load_extension, fts3_tokenizer, sqlite_* introspection, printf/format
# (one call can run for many seconds outside the progress handler: we register a bounded one).
SAFE_FUNCTIONS = frozenset(["abs", "char", "coalesce", "concat", "concat_ws", "glob", "hex", "ifnull", "iif", "instr", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min", "nullif", "octet_length", "quote", "replace", "round", "rtrim", "sign", "substr", "substring", "trim", "typeof", "unhex", "unicode", "unlikely", "upper", "zeroblob", "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff", "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc", "json", "json_array", "json_array_length", "json_extract", "json_insert", "json_object", "json_patch", "json_remove", "json_replace", "json_set", "json_type", "json_valid", "json_quote", "json_group_array", "json_group_object", "jsonb", "jsonb_array", "jsonb_extract", "jsonb_insert", "jsonb_object", "jsonb_patch", "jsonb_remove", "jsonb_replace", "jsonb_set", "jsonb_group_array", "jsonb_group_object", "json_error_position", "json_pretty", "avg", "count", "group_concat", "string_agg", "sum", "total", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value"])

# Functions the engine registers itself (engine/functions.py), all deterministic given the
# command's fixed inputs.
KDB_FUNCTIONS = frozenset({"kdb_seq", "kdb_snowflake", "kdb_now", "kdb_random", "kdb_uuid7", "kdb_ulid",
                           "kdb_current_user", "kdb_owner", "kdb_printf"}) | frozenset(COERCERS)

ALLOWED_FUNCTIONS = SAFE_FUNCTIONS | KDB_FUNCTIONS

_OK, _DENY = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY
_READ, _SELECT, _FUNCTION, _RECURSIVE = (sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION,
                                         sqlite3.SQLITE_RECURSIVE)
_WRITES = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)


RESERVED_PREFIXES = ("_kdb", "sqlite_")
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_cte_name(name: str | None) -> bool:
    """Whether a name can only be a CTE's. SQLite does not always say which (a COUNT(*) over a real
    table is reported with no database name, like a CTE), so names decide: every stored object has
    a '.' or '@' in its name or a reserved prefix, and the compiler refuses CTE names that do."""
    return name is not None and _PLAIN.fullmatch(name) is not None and not name.lower().startswith(RESERVED_PREFIXES)


class Guard:
    """One connection's authorizer. `allow` is the current statement's allowlist while user SQL is
    prepared; None means the engine's own statements are running (no restriction)."""

    __slots__ = ("allow", "denied", "view_bases", "write_target")

    def __init__(self, view_bases: dict[str, frozenset[str]]):
        self.allow: frozenset[str] | None = None
        self.write_target: str | None = None
        #: our views by name -> the tables a bare COUNT(*) over them may be flattened onto
        self.view_bases = view_bases
        self.denied: str | None = None  # what the last refusal was about (for the error message)

    def __call__(self, action: int, arg1, arg2, db_name, source) -> int:
        allow = self.allow
        if allow is None:
            return _OK
        if action == _SELECT or action == _RECURSIVE:
            return _OK
        if action == _READ:
            if arg1 in allow or arg1 == self.write_target:
                return _OK  # declared by the compiled statement (read directly or inside its CTEs)
            if db_name is None:
                if is_cte_name(arg1):
                    return _OK  # a CTE's own rows; what its body read was authorized as it was read
                if arg2 == "" and arg1 in self._count_bases(allow):
                    return _OK  # COUNT(*) over an allowed view SQLite flattened onto its base table
            if source is not None and (source == arg1 + VIEW_SUFFIX or arg1 in self.view_bases.get(source, ())):
                return _OK  # the body of one of our own views (user CTE names cannot take these
                # names: the compiler refuses any CTE name that is not a plain identifier)
            return self._deny(f"table {arg1}")
        if action == _FUNCTION:
            if arg2 is not None and arg2.lower() in ALLOWED_FUNCTIONS:
                return _OK
            return self._deny(f"function {arg2}()")
        if action in _WRITES and source is None and arg1 is not None and arg1 == self.write_target:
            return _OK
        return self._deny(f"operation {action} on {arg1}")

    def _count_bases(self, allow: frozenset[str]) -> set[str]:
        """Catalog tables whose COUNT(*) an allowed system view may expose. (Row views never flatten
        to a bare count: the compiler always reads them with a WHERE.)"""
        bases: set[str] = set()
        for name in allow:
            bases.update(self.view_bases.get(name, ()))
        return bases

    def _deny(self, what: str) -> int:
        self.denied = what
        return _DENY


class UserScope:
    """`with UserScope(guard, allow, target):` around preparing and running user-derived SQL."""

    __slots__ = ("_allow", "_guard", "_target")

    def __init__(self, guard: Guard, allow: frozenset[str], write_target: str | None = None):
        self._guard, self._allow, self._target = guard, allow, write_target

    def __enter__(self) -> Guard:
        g = self._guard
        g.allow, g.write_target, g.denied = self._allow, self._target, None
        return g

    def __exit__(self, *exc) -> None:
        self._guard.allow = None
        self._guard.write_target = None


def install(conn: sqlite3.Connection, view_bases: dict[str, frozenset[str]]) -> Guard:
    """`view_bases`: the system views by name, each with the catalog tables it reads."""
    guard = Guard(view_bases)
    conn.set_authorizer(guard)
    return guard
