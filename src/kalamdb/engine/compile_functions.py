"""The rewrite that keeps replicas in agreement: functions that read the clock, a random generator or
the session (NOW(), RANDOM(), CURRENT_USER(), ...) become kdb_* functions fed by the command's fixed
inputs (engine/functions.py); functions that would differ between replicas or reach outside the
statement are refused; `$n` parameters become named binds. It runs on the user's tree first, before
the compiler adds its own kdb_* calls (which it would refuse)."""

from __future__ import annotations

from sqlglot import exp

from kalamdb.engine.sqltree import call, placeholder, rewrite_tree
from kalamdb.errors import KalamError


def rewrite_functions(root: exp.Expression) -> tuple[exp.Expression, int]:
    """The tree with the user's functions and parameters rewritten, and the highest parameter number
    it uses (0: none)."""
    max_param = 0

    def fix(node: exp.Expression) -> exp.Expression:
        nonlocal max_param
        if isinstance(node, (exp.CurrentTimestamp, exp.CurrentDatetime)):
            return call("kdb_now")
        if isinstance(node, exp.Rand):
            return call("kdb_random")
        if isinstance(node, (exp.CurrentDate, exp.CurrentTime)):
            seconds = exp.Div(this=call("kdb_now"), expression=exp.Literal.number(1_000_000))
            return call("DATE" if isinstance(node, exp.CurrentDate) else "TIME", seconds,
                       exp.Literal.string("unixepoch"))
        if isinstance(node, exp.Func) and any(
            isinstance(a, exp.Literal) and a.is_string and a.this.strip().lower() == "now"
            for a in node.iter_expressions()
        ):
            raise KalamError("INVALID_SQL", f"{node.sql()} reads the local clock, which replicas would "
                             "disagree on: use NOW() or CURRENT_TIMESTAMP")
        if isinstance(node, exp.CurrentUser):
            return call("kdb_current_user")
        if isinstance(node, exp.Format):  # format(): a printf bounded in width (functions.py)
            return call("kdb_printf", node.this, *node.expressions)
        if isinstance(node, exp.Anonymous):
            name = str(node.this).upper()
            mapped = {"NOW": "kdb_now", "SNOWFLAKE_ID": "kdb_snowflake", "UUID_V7": "kdb_uuid7",
                      "ULID": "kdb_ulid", "CURRENT_USER": "kdb_current_user", "RANDOM": "kdb_random",
                      "RANDOMBLOB": None, "CHANGES": None, "TOTAL_CHANGES": None,
                      "LAST_INSERT_ROWID": None, "UNIXEPOCH": None if not node.expressions else ""}.get(name, "")
            if mapped is None:
                raise KalamError("INVALID_SQL", f"Function {name}() is not supported")
            if name in ("PRINTF", "FORMAT"):
                mapped = "kdb_printf"
            if name.startswith(("KDB_", "PRAGMA_", "SQLITE_")) or name in ("LOAD_EXTENSION", "READFILE",
                                                                       "WRITEFILE"):
                raise KalamError("INVALID_SQL", f"Function {name}() is not supported")
            if mapped:
                return call(mapped, *node.expressions)
        if isinstance(node, exp.Parameter):
            try:
                n = int(node.name)
            except ValueError:
                raise KalamError("INVALID_SQL", f"Invalid parameter '{node.sql()}'") from None
            if n < 1:
                raise KalamError("INVALID_PARAMETER", "Parameters are numbered from $1")
            max_param = max(max_param, n)
            return placeholder(f"p{n}")
        if isinstance(node, exp.Placeholder):
            raise KalamError("INVALID_SQL", "Use $1..$n for parameters")
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and node.this.is_string:
            raise KalamError("SQL_EXECUTION_ERROR", f"Cannot negate the text value {node.this.sql()}")
        if isinstance(node, exp.Column) and node.args.get("db") is not None:
            node = node.copy()
            node.set("db", None)
            node.set("catalog", None)
            return node
        return node

    return rewrite_tree(root, fix), max_param
