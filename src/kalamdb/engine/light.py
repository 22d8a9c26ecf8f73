"""Which committed commands are light: cheap to apply, with a cost bounded by their size and known
without running them.

A node applies committed entries on its apply thread, because a command's cost is not bounded by
its size (`DELETE FROM big`, `INSERT … SELECT`, `randomblob(1e9)`). For the commonest write, a
plain `INSERT … VALUES` of parameters and literals, the hand-off to that thread and back costs more
than the apply itself, so the node may apply a batch of light commands on its request loop instead
(node/apply_router.py). Light means, for every command of the batch:

- a no-op (Raft's own entries), or
- an SQL command of at most `MAX_COMMAND_BYTES` whose statements are all INSERT with a VALUES list
  of parameters and literals only: no function call, no subquery, no ON CONFLICT clause;

and for the batch: at most `MAX_ENTRIES` commands of at most `MAX_BATCH_BYTES` together (the apply
time of plain inserts grows with their rows, so with their bytes), no topic route anywhere (a route turns rows into
topic messages and prunes partitions), and no change-log prune or WAL checkpoint due in it (both are
the engine's periodic upkeep, of a cost that grows with history). A statement text counts only once
the parse cache holds its tree: a first parse can take tens of milliseconds.
"""

from __future__ import annotations

from collections import OrderedDict

from sqlglot import exp

from kalamdb.engine import commands
from kalamdb.errors import KalamError
from kalamdb.sql.parse_cache import ParseCache

MAX_COMMAND_BYTES = 4096
MAX_ENTRIES = 256
MAX_BATCH_BYTES = 32768  # ~170 one-row inserts, ~1-3 ms of apply on the request loop
CAPACITY = 4096  # statement texts remembered

NOOP = {"kind": "noop"}  # what a no-op command decodes to, as far as applying it goes

_PLAIN_VALUES = (exp.Parameter, exp.Placeholder, exp.Literal, exp.Null, exp.Boolean)


def plain_values_insert(tree: exp.Expr) -> bool:
    """`INSERT INTO t [(cols)] VALUES (…), …` whose values are parameters, literals or negated
    literals, with no ON CONFLICT (RETURNING is allowed: it reads the rows just written)."""
    if not isinstance(tree, exp.Insert) or tree.args.get("conflict") is not None:
        return False
    values = tree.expression
    if not isinstance(values, exp.Values):
        return False
    for row in values.expressions:
        if not isinstance(row, exp.Tuple):
            return False
        for v in row.expressions:
            if isinstance(v, exp.Neg):
                v = v.this
            if not isinstance(v, _PLAIN_VALUES):
                return False
    return True


class LightCommands:
    """The light-command test, with its verdict per statement text remembered."""

    def __init__(self, parse_cache: ParseCache, *, capacity: int = CAPACITY):
        self._parse_cache = parse_cache
        self._capacity = capacity
        self._texts: OrderedDict[str, bool] = OrderedDict()

    def check(self, command: bytes, noop: bytes) -> dict | None:
        """The decoded command when it is light (the apply reuses it instead of decoding again),
        None when it is not."""
        if command == noop:
            return NOOP
        if len(command) > MAX_COMMAND_BYTES:
            return None
        try:
            cmd = commands.decode_command(command)
        except (KalamError, ValueError, TypeError):
            return None  # applying it records the error: the apply thread does that
        kind = cmd.get("kind")
        if kind == "noop":
            return cmd
        if kind != "sql":
            return None
        stmts = cmd.get("stmts")
        if not isinstance(stmts, list) or not stmts:
            return None
        for w in stmts:
            if not isinstance(w, dict) or w.get("k") != "q" or w.get("kind") != "insert":
                return None
            sql = w.get("sql")
            if not isinstance(sql, str) or not self._text(sql):
                return None
        return cmd

    def _text(self, sql: str) -> bool:
        verdict = self._texts.get(sql)
        if verdict is not None:
            return verdict
        tree = self._parse_cache.peek(sql)
        if tree is None:
            return False  # not parsed yet: not remembered either, the apply thread will parse it
        verdict = plain_values_insert(tree)
        self._texts[sql] = verdict
        if len(self._texts) > self._capacity:
            self._texts.popitem(last=False)
        return verdict
