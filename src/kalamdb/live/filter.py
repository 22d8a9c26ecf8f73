"""A subscription's WHERE tested on one changed row, with SQLite's own semantics (the initial rows
were selected by SQLite too, so a row and its later changes are judged alike): the condition is
compiled once into `SELECT CASE WHEN <condition> THEN 1 ELSE 0 END` over named parameters, one per
column, and run on a private in-memory connection that may read nothing (an authorizer allows only
the functions the condition was checked to use).

Compiled filters are shared by every subscription with the same condition text (and the same
CURRENT_USER()), so a change is tested once per distinct filter, not once per subscriber."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from sqlglot import exp

_FUNCTIONS = frozenset({"lower", "upper", "length", "abs", "coalesce", "ifnull", "nullif", "substr",
                        "substring", "trim", "ltrim", "rtrim", "round", "instr", "replace", "like", "glob"})


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action == sqlite3.SQLITE_SELECT:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _FUNCTIONS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class Filter:
    """One compiled condition: `matches(row)` for a row dict of storage values."""

    __slots__ = ("_conn", "_names", "_sql", "key")

    def __init__(self, conn: sqlite3.Connection, condition: exp.Expression, current_user: str,
                 affinity: Mapping[str, str]):
        names: list[str] = []
        index: dict[str, int] = {}

        def rewrite(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Column):
                name = node.name.lower()
                if name not in index:
                    index[name] = len(names)
                    names.append(name)
                value = exp.Placeholder(this=f"c{index[name]}")
                storage = affinity.get(name)
                if storage is None:
                    return value
                # a bound value has no affinity, a column has: the CAST gives it the column's, so
                # `id = '5'` matches a BIGINT 5 here as it does in the table (STRICT tables hold
                # exactly their storage type, so the CAST never changes a stored value)
                return exp.Cast(this=value, to=exp.DataType.build(storage))
            if isinstance(node, exp.CurrentUser) or (
                    isinstance(node, exp.Anonymous) and str(node.this).upper() == "CURRENT_USER"):
                return exp.Literal.string(current_user)
            return node

        compiled = condition.copy().transform(rewrite)
        self._sql = f"SELECT CASE WHEN {compiled.sql(dialect='sqlite')} THEN 1 ELSE 0 END"
        self._names = tuple(names)
        self._conn = conn
        self.key = self._sql
        conn.execute(self._sql, {f"c{i}": None for i in range(len(names))}).fetchone()  # fails early

    def matches(self, row: Mapping[str, Any]) -> bool:
        binds = {}
        for i, name in enumerate(self._names):
            v = row.get(name)
            binds[f"c{i}"] = int(v) if isinstance(v, bool) else v
        try:
            return self._conn.execute(self._sql, binds).fetchone()[0] == 1
        except sqlite3.Error:
            return False  # e.g. a value SQLite cannot compare: the row does not match, as in a SELECT


class FilterCache:
    """Compiled filters by (table, condition text, current user); used on the event loop's thread."""

    def __init__(self, capacity: int = 4096):
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False,
                                     cached_statements=capacity)
        self._conn.set_authorizer(_authorize)
        self._filters: dict[tuple[str, str, str], Filter] = {}
        self._capacity = capacity

    def get(self, table: str, condition: exp.Expression | None, condition_sql: str | None, current_user: str,
            affinity: Mapping[str, str]) -> Filter | None:
        """`affinity`: column -> SQLite storage type (INTEGER, REAL, TEXT, BLOB) of `table`."""
        if condition is None or condition_sql is None:
            return None
        key = (table, condition_sql, current_user)
        f = self._filters.get(key)
        if f is None:
            if len(self._filters) >= self._capacity:
                self._filters.clear()  # rare: more distinct filters than capacity; recompile on demand
            f = Filter(self._conn, condition, current_user, affinity)
            self._filters[key] = f
        return f

    def close(self) -> None:
        self._conn.close()
