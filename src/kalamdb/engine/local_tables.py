"""The node-local views (system.stats, system.settings, information_schema.columns, ...): rows each
node computes for itself, never replicated. Registered by name with their columns and a function
that returns their rows; a statement that reads one gets it materialised as a TEMP table on its own
connection, so WHERE, ORDER BY and joins work as on any table. Writes may not read them
(engine/compile.py): replicas would disagree."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from kalamdb.engine import catalog as cat
from kalamdb.sql.types import SQL_NAMES, TYPE_ALIASES

Rows = Callable[[], list[tuple]]


class LocalTables:
    def __init__(self) -> None:
        self._tables: dict[str, tuple[list[tuple[str, str]], Rows]] = {}
        #: the views' columns by name (replaced, never changed in place: compilers read it unlocked),
        #: and a number that changes with them (part of the compile cache key)
        self.columns: dict[str, list[tuple[str, str]]] = {}
        self.version = 0

    def register(self, full_name: str, columns: list[tuple[str, str]], rows: Rows) -> None:
        """A node-local view by its full name (`system.x`, `information_schema.x`); replaces an
        earlier one of the same name."""
        typed = [(c.lower(), TYPE_ALIASES.get(t.upper(), t)) for c, t in columns]
        self._tables[full_name] = (typed, rows)
        self.columns = {name: cols for name, (cols, _) in self._tables.items()}
        self.version += 1

    def sql_columns(self) -> dict[str, list[tuple[str, str]]]:
        """Each view's columns with their SQL type names."""
        return {name: [(c, SQL_NAMES.get(t, t.upper())) for c, t in cols] for name, (cols, _) in self._tables.items()}

    def materialise(self, conn: sqlite3.Connection, name: str) -> None:
        """Fill `temp.<name>` on `conn` with the view's current rows."""
        cols, rows_fn = self._tables[name]
        table = cat.quote_ident(name)
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
        conn.execute(f"CREATE TEMP TABLE {table} ({', '.join(cat.quote_ident(c) for c, _ in cols)})")
        rows = [tuple(r) for r in rows_fn()]
        if rows:
            marks = ", ".join("?" for _ in cols)
            conn.executemany(f"INSERT INTO temp.{table} VALUES ({marks})", rows)
