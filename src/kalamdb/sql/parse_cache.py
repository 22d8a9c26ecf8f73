"""The sqlglot parse of SELECT/INSERT/UPDATE/DELETE, cached by statement text: a parse costs ~120 us
and every replica parses the same texts again on apply (commands carry templates, so few distinct
texts recur). Parse errors become INVALID_SQL with sqlglot's first line."""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from kalamdb.errors import KalamError
from kalamdb.sql.dialects import POSTGRES

# sqlglot warns on stderr for every statement it cannot parse fully; our callers get a KalamError
logging.getLogger("sqlglot").setLevel(logging.ERROR)


class ParseCache:
    """LRU of sqlglot parse results by statement text. Every caller gets the same tree: never modify
    it (the compiler works on a copy). Parsed with the preloaded dialect (sql/dialects.py): a tree
    parsed wrong would be served for that text for as long as the process lives."""

    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self._items: OrderedDict[str, exp.Expr] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def peek(self, sql: str) -> exp.Expr | None:
        """The cached tree of `sql`, or None when it is not cached (never parses: a parse can take
        tens of milliseconds)."""
        with self._lock:
            return self._items.get(sql)

    def parse(self, sql: str) -> exp.Expr:
        with self._lock:
            cached = self._items.get(sql)
            if cached is not None:
                self._items.move_to_end(sql)
                self.hits += 1
                return cached
            self.misses += 1
        try:
            ast = sqlglot.parse_one(_space_params(sql), read=POSTGRES)
        except (ParseError, TokenError) as e:
            raise KalamError("INVALID_SQL", f"Syntax error: {_first_line(str(e))}") from None
        except Exception as e:  # noqa: BLE001 - sqlglot raises assorted errors on hostile input
            raise KalamError("INVALID_SQL", f"Syntax error: {_first_line(str(e))}") from None
        with self._lock:
            self._items[sql] = ast
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return ast


_PARAM_OR_QUOTED = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|\$\d+""")


def _space_params(sql: str) -> str:
    """sqlglot's tokenizer reads `$1,$2` as the start of a dollar-quoted string; a space after each
    `$n` (outside quotes) avoids that without changing the statement."""
    if "$" not in sql:
        return sql
    return _PARAM_OR_QUOTED.sub(lambda m: m.group(0) + " " if m.group(0)[0] == "$" else m.group(0), sql)


def _first_line(s: str) -> str:
    s = re.sub(r"\x1b\[[0-9;]*m", "", s)
    return s.strip().splitlines()[0] if s.strip() else "invalid statement"
