"""What a subscription may ask for, as upstream allows it: exactly one `SELECT *|columns FROM
namespace.table [WHERE ...]`, refused otherwise with upstream's code (INVALID_SQL) and message.

The accepted query is kept as its parts (table, projected columns, WHERE tree) so the live layer
can build the SQL of each initial-data page itself (`page_sql`) and send it through the engine like
any other SELECT, whose compiled-query checks decide scoping and permissions. Our additions to
upstream's rules, each refused with INVALID_SQL: parameters, subqueries in WHERE, and projections
that are not plain column names (upstream accepts them and then delivers rows without them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from kalamdb.live import protocol as p

log = logging.getLogger("kalamdb.live")
logging.getLogger("sqlglot").setLevel(logging.ERROR)

SYSTEM_COLUMNS = ("_seq", "_deleted")
_ONLY = "Only SELECT ... FROM ... [WHERE ...] is supported."
_SUPPORTS_ONLY = "Subscription query supports only SELECT ... FROM ... [WHERE ...]."


class LiveError(Exception):
    """A subscription refused or failed: an upstream error code and its message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(detail: str) -> LiveError:
    """Upstream's LiveError::InvalidSql(QueryParseError::InvalidSql(detail)): the prefix twice."""
    return LiveError(p.INVALID_SQL, f"Invalid SQL: Invalid SQL: {detail}")


@dataclass(frozen=True)
class SubscriptionQuery:
    sql: str
    namespace: str
    table: str
    projection: tuple[str, ...] | None  # None: SELECT *
    where: exp.Expression | None  # the WHERE condition, column qualifiers removed

    @property
    def table_id(self) -> str:
        return f"{self.namespace}.{self.table}"

    @property
    def where_columns(self) -> list[str]:
        return [] if self.where is None else sorted({c.name.lower() for c in self.where.find_all(exp.Column)})

    @property
    def where_sql(self) -> str | None:
        return None if self.where is None else self.where.sql(dialect="postgres")


def analyze(sql: str) -> SubscriptionQuery:
    if not isinstance(sql, str) or not sql.strip():
        raise invalid("Empty SQL statement")
    if len(sql.encode("utf-8", "surrogatepass")) > p.MAX_MESSAGE_BYTES:
        raise invalid("SQL is larger than the message limit")
    try:
        statements = [s for s in sqlglot.parse(sql, read="postgres") if s is not None]
    except (ParseError, TokenError) as exc:
        raise LiveError(p.INVALID_SQL, f"Invalid SQL: Parse error: Failed to parse SQL: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - sqlglot raises assorted errors on hostile input
        raise LiveError(p.INVALID_SQL, f"Invalid SQL: Parse error: Failed to parse SQL: {_first_line(exc)}") from None
    if not statements:
        raise invalid("Empty SQL statement")
    if len(statements) != 1:
        raise invalid("Subscription query must contain exactly one SELECT statement")
    tree = statements[0]
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        raise invalid("Subscription query supports only simple SELECT statements.")
    if not isinstance(tree, exp.Select):
        raise invalid("Only SELECT queries are supported for subscriptions")
    _check_clauses(tree)
    source = tree.args["from_"].this if tree.args.get("from_") else None
    if not isinstance(source, exp.Table) or not source.name:
        raise invalid("Subscription query requires a direct table reference in FROM.")
    if source.args.get("catalog") or not source.db:
        raise LiveError(p.INVALID_SQL, "Invalid SQL: Query must use namespace.table format")
    namespace, table = source.db.lower(), source.name.lower()
    names = {table, (source.alias or table).lower()}
    projection = _projection(tree, names)
    where = tree.args.get("where")
    condition = _check_where(where.this, names) if where is not None else None
    return SubscriptionQuery(sql, namespace, table, projection, condition)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _check_clauses(select: exp.Select) -> None:
    a = select.args
    if a.get("with_"):
        raise invalid(f"Subscription query does not support WITH clauses. {_ONLY}")
    if a.get("order"):
        raise invalid(f"Subscription query does not support ORDER BY. {_ONLY}")
    if any(a.get(k) for k in ("limit", "offset", "fetch", "locks", "settings", "format", "into", "sample")):
        raise invalid(_SUPPORTS_ONLY)
    if any(a.get(k) for k in ("distinct", "having", "qualify", "windows", "kind", "hint", "laterals",
                              "connect", "prewhere", "cluster", "distribute", "sort", "pivots", "exclude",
                              "operation_modifiers")):
        raise invalid(_SUPPORTS_ONLY)
    if a.get("group"):
        raise invalid(f"Subscription query does not support GROUP BY. {_ONLY}")
    if not a.get("from_"):
        raise invalid("Subscription query requires exactly one table in the FROM clause.")
    for join in a.get("joins") or []:
        comma = not any(join.args.get(k) for k in ("on", "using", "kind", "side", "method"))
        if comma:
            raise invalid("Subscription query requires exactly one table in the FROM clause.")
        raise invalid(f"Subscription query does not support JOIN clauses. {_ONLY}")


def _projection(select: exp.Select, names: set[str]) -> tuple[str, ...] | None:
    columns: list[str] = []
    for e in select.expressions:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
            return None  # upstream: any wildcard means every column
        name = e.alias_or_name if isinstance(e, (exp.Column, exp.Alias)) else e.sql()
        inner = e.this if isinstance(e, exp.Alias) else e
        base = (inner.name if isinstance(inner, exp.Column) else name).lower()
        if base in SYSTEM_COLUMNS:
            raise invalid("Subscription query cannot project system columns '_seq' or '_deleted'.")
        if not isinstance(e, exp.Column) or (e.table and e.table.lower() not in names):
            raise invalid(f"Subscription query projections must be column names of the table; "
                          f"'{e.sql()[:80]}' is not")
        if base not in columns:
            columns.append(base)
    return tuple(columns)


# WHERE: the node types a filter may contain (evaluated by filter.py the same way as SQLite does)
_ALLOWED = (
    exp.Column, exp.Identifier, exp.Literal, exp.Null, exp.Boolean, exp.Paren, exp.Tuple,
    exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In,
    exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.DPipe,
    exp.Cast, exp.DataType, exp.DataTypeParam, exp.CurrentUser, exp.Lower, exp.Upper, exp.Length,
    exp.Abs, exp.Coalesce, exp.Nullif, exp.Substring, exp.Trim, exp.Round, exp.If, exp.Case,
    exp.NullSafeEQ, exp.NullSafeNEQ, exp.Var,
)
_ANON_ALLOWED = {"CURRENT_USER", "LOWER", "UPPER", "LENGTH", "ABS", "COALESCE", "IFNULL", "NULLIF",
                 "SUBSTR", "SUBSTRING", "TRIM", "LTRIM", "RTRIM", "ROUND", "INSTR", "REPLACE"}


def _check_where(condition: exp.Expression, names: set[str]) -> exp.Expression:
    condition = condition.copy()
    for node in condition.walk():
        if isinstance(node, (exp.Select, exp.Subquery, exp.Exists, exp.Union)):
            raise invalid("Subscription query does not support subqueries in WHERE.")
        if isinstance(node, (exp.Parameter, exp.Placeholder)):
            raise invalid("Subscription query cannot use parameters: write the value into the SQL.")
        if isinstance(node, exp.Anonymous):
            if str(node.this).upper() not in _ANON_ALLOWED:
                raise invalid(f"Function {str(node.this).upper()}() is not supported in a subscription's WHERE.")
            continue
        if isinstance(node, exp.Func) and not isinstance(node, _ALLOWED):
            fname = node.sql_name() if hasattr(node, "sql_name") else type(node).__name__
            raise invalid(f"Function {fname}() is not supported in a subscription's WHERE.")
        if not isinstance(node, _ALLOWED) and not isinstance(node, exp.Anonymous):
            raise invalid(f"'{node.sql()[:80]}' is not supported in a subscription's WHERE.")
        if isinstance(node, exp.Column) and node.table and node.table.lower() not in names:
            raise invalid(f"Unknown table qualifier '{node.table}' in WHERE")
    for col in list(condition.find_all(exp.Column)):
        bare = exp.column(col.name.lower(), quoted=True)
        if col is condition:
            condition = bare
        else:
            col.replace(bare)
    return condition


def page_sql(q: SubscriptionQuery, columns: list[str], *, after: int, limit: int, newest_first: bool = False) -> str:
    """The SELECT of one initial-data page: the projected columns with `_seq` and `_deleted`, rows
    with `_seq` > `after`, oldest first (newest first for `last_rows`), at most `limit` rows; then,
    read in the same transaction, the newest `_seq` of the table's visible rows (the subscriber's
    own rows of a USER table), which bounds where the snapshot sits in the change log."""
    cols = ", ".join(exp.to_identifier(c, quoted=True).sql(dialect="postgres") for c in columns)
    select = f"{cols}, _seq, _deleted" if cols else "_seq, _deleted"
    where = f"_seq > {int(after)}"
    if q.where is not None:
        where = f"({q.where_sql}) AND {where}"
    order = "DESC" if newest_first else "ASC"
    table = exp.table_(q.table, db=q.namespace, quoted=True).sql(dialect="postgres")
    return (f"SELECT {select} FROM {table} WHERE {where} ORDER BY _seq {order} LIMIT {int(limit)}; "
            f"SELECT MAX(_seq) FROM {table}")
