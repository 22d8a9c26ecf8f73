"""Rewrite a parsed SELECT/INSERT/UPDATE/DELETE into SQLite SQL against the catalog, on the syntax
tree (never by pasting strings): table names map to storage tables, USER tables get the owner filter
and owner column, every read hides soft-deleted rows, DELETE becomes a soft delete, writes get a new
`_seq`, and non-deterministic functions become functions fed by the command's fixed inputs.

The compiled SQL binds the owner, the clock and request parameters as named parameters, so one
compilation serves every user and every request with the same text (cached by the caller)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from kalamdb.engine.authorizer import RESERVED_PREFIXES, is_cte_name
from kalamdb.engine.catalog import OWNED_TYPES, SYSTEM_VIEWS, Catalog, TableInfo
from kalamdb.errors import KalamError
from kalamdb.sql.dialects import SQLITE

HIDDEN = ("_seq", "_deleted")
SYSTEM_NAMESPACES = ("system", "information_schema")
ROWID = "_kdb_rowid"  # the row views' name for the storage table's rowid (writes address rows by it)


@dataclass
class Compiled:
    """A statement compiled against one catalog version. For SELECT, `sql` is the query. For
    writes it is phase 1 (see engine/writes.py): the SELECT (or VALUES) that finds or computes
    the rows to write; `sql` is empty when an INSERT's rows are all literals and parameters
    (`pure_rows`)."""

    kind: str  # select | insert | update | delete
    sql: str
    types: list[str | None] = field(default_factory=list)  # select: data_type per output column
    tables: list[tuple[TableInfo | None, str, str]] = field(default_factory=list)  # (info, name, r|w)
    target: TableInfo | None = None
    local_tables: set[str] = field(default_factory=set)  # node-local system tables to materialise
    max_param: int = 0
    row_count: int = 0  # insert: rows in VALUES (-1: INSERT ... SELECT)
    uses_owner: bool = False
    #: insert: the target columns the rows give values for; update: the SET columns, in order
    columns: list[str] = field(default_factory=list)
    #: insert: VALUES rows of ("v", value) / ("p", parameter number) cells, evaluated without SQL
    pure_rows: list[list[tuple[str, object]]] | None = None
    #: the executor's per-statement plan, built on first use (engine/writes.py)
    plan: object = None
    #: the SQLite objects this statement may read directly (row views, system views, node-local
    #: tables): the authorizer's allowlist, so a reference the rewrite missed fails closed
    allow: frozenset[str] = frozenset()


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _param(name: str) -> exp.Placeholder:
    return exp.Placeholder(this=name)


def rewrite_tree(root: exp.Expression, fn) -> exp.Expression:
    """Apply `fn` to every node (pre-order; a replaced node is not descended into, as with
    sqlglot's `transform`) and return the new root. Linear in the tree: sqlglot's `transform` re-parents a whole argument list for
    every replaced element, which made a 10,000-item IN list cost seconds."""
    new_root = fn(root)
    if new_root is not root:
        return new_root
    stack = [root]
    lists: dict[tuple[int, str], tuple[exp.Expression, str, dict[int, exp.Expression]]] = {}
    singles: list[tuple[exp.Expression, str, exp.Expression]] = []
    while stack:
        node = stack.pop()
        for key, value in node.args.items():
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, exp.Expression):
                        new = fn(child)
                        if new is not child:
                            lists.setdefault((id(node), key), (node, key, {}))[2][i] = new
                        else:
                            stack.append(child)
            elif isinstance(value, exp.Expression):
                new = fn(value)
                if new is not value:
                    singles.append((node, key, new))
                else:
                    stack.append(value)
    for node, key, new in singles:
        node.set(key, new)
    for node, key, replaced in lists.values():
        items = list(node.args[key])
        for i, new in replaced.items():
            items[i] = new
        node.set(key, items)  # one re-parenting pass per list
    return new_root


def cte_in_scope(table: exp.Table) -> bool:
    """Whether SQLite resolves this table reference to a CTE: an unqualified name defined by the
    WITH of an enclosing query (lexical scope; a CTE defined in a sibling or inner query does not
    hide a table of the same name out here)."""
    if table.db:
        return False
    name = table.name.lower()
    node = table.parent
    while node is not None:
        with_ = node.args.get("with_")
        if with_ is not None and any(cte.alias_or_name.lower() == name for cte in with_.expressions):
            return True
        node = node.parent
    return False


class _Compiler:
    def __init__(self, catalog: Catalog, namespace: str, local_tables: dict[str, list[tuple[str, str]]]):
        self.catalog = catalog
        self.namespace = namespace
        self.local = local_tables
        self.out = Compiled(kind="select", sql="")
        self.known: dict[int, TableInfo | dict[str, str]] = {}  # id(new source node) -> columns info
        self.ctes: dict[str, exp.CTE] = {}
        self.allow: set[str] = set()
        #: `SELECT *` shows `_seq` and `_deleted` (upstream); not in INSERT ... SELECT *
        self.star_hidden = True
        #: a SELECT whose WHERE mentions `_deleted` sees tombstones too (upstream's rule)
        self.show_deleted = False

    # ------------------------------------------------------------------ helpers

    def resolve(self, table: exp.Table) -> tuple[str, str]:
        if table.args.get("catalog"):
            raise KalamError("INVALID_SQL", f"Invalid table reference '{table.sql()}'")
        ns = (table.db or self.namespace).lower()
        return ns, table.name.lower()

    def lookup(self, ns: str, name: str) -> TableInfo:
        info = self.catalog.tables.get((ns, name))
        if info is None:
            if ns not in self.catalog.namespaces:
                raise KalamError("TABLE_NOT_FOUND", f"Table '{ns}.{name}' not found: "
                                 f"Namespace '{ns}' does not exist")
            raise KalamError("TABLE_NOT_FOUND", f"Table '{ns}.{name}' not found")
        return info

    def visible_source(self, info: TableInfo, alias: str, *, with_rowid: bool = False) -> exp.Subquery:
        """The rows a statement sees: the table's row view (which applies the owner filter of USER
        and STREAM tables), without soft-deleted rows and the internal columns."""
        cols = [exp.column(c.name, quoted=True) for c in info.columns] + [exp.column(h) for h in HIDDEN]
        if with_rowid:
            cols.insert(0, exp.column(ROWID))
        if info.table_type in OWNED_TYPES:
            self.out.uses_owner = True
        self.allow.add(info.row_view)
        inner = exp.select(*cols).from_(exp.Table(this=exp.to_identifier(info.row_view, quoted=True)))
        if not (self.show_deleted and not with_rowid):
            inner = inner.where(exp.EQ(this=exp.column("_deleted"), expression=exp.Literal.number(0)))
        return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias)))

    def rewrite_functions(self, root: exp.Expression) -> exp.Expression:
        def fix(node):
            if isinstance(node, (exp.CurrentTimestamp, exp.CurrentDatetime)):
                return _fn("kdb_now")
            if isinstance(node, exp.Rand):
                return _fn("kdb_random")
            if isinstance(node, (exp.CurrentDate, exp.CurrentTime)):
                seconds = exp.Div(this=_fn("kdb_now"), expression=exp.Literal.number(1_000_000))
                return _fn("DATE" if isinstance(node, exp.CurrentDate) else "TIME", seconds,
                           exp.Literal.string("unixepoch"))
            if isinstance(node, exp.Func) and any(
                isinstance(a, exp.Literal) and a.is_string and a.this.strip().lower() == "now"
                for a in node.iter_expressions()
            ):
                raise KalamError("INVALID_SQL", f"{node.sql()} reads the local clock, which replicas would "
                                 "disagree on: use NOW() or CURRENT_TIMESTAMP")
            if isinstance(node, exp.CurrentUser):
                return _fn("kdb_current_user")
            if isinstance(node, exp.Format):  # format(): a printf bounded in width (functions.py)
                return _fn("kdb_printf", node.this, *node.expressions)
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
                    return _fn(mapped, *node.expressions)
            if isinstance(node, exp.Parameter):
                try:
                    n = int(node.name)
                except ValueError:
                    raise KalamError("INVALID_SQL", f"Invalid parameter '{node.sql()}'") from None
                if n < 1:
                    raise KalamError("INVALID_PARAMETER", "Parameters are numbered from $1")
                self.out.max_param = max(self.out.max_param, n)
                return _param(f"p{n}")
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

        return rewrite_tree(root, fix)

    def rewrite_sources(self, root: exp.Expression, skip: exp.Table | None = None) -> None:
        """Replace every table reference (except `skip`, a DML target) by its visible rows."""
        for cte in root.find_all(exp.CTE):
            name = cte.alias_or_name
            if not is_cte_name(name):
                raise KalamError("INVALID_SQL", f"CTE name '{name}' is not allowed: use letters, digits and _ "
                                 f"(not starting with {' or '.join(RESERVED_PREFIXES)})")
            self.ctes[name.lower()] = cte
        for table in list(root.find_all(exp.Table)):
            if table is skip or not table.name:
                continue
            if isinstance(table.parent, (exp.Schema,)) and table.parent.parent is None:
                continue
            if cte_in_scope(table):
                continue
            ns, name = self.resolve(table)
            alias = table.alias or table.name
            if ns in SYSTEM_NAMESPACES:
                new = self.system_source(ns, name, alias)
            else:
                info = self.lookup(ns, name)
                self.out.tables.append((info, info.full_name, "r"))
                new = self.visible_source(info, alias)
                self.known[id(new)] = info
            target: exp.Expression = table
            while isinstance(target.parent, exp.Subquery) and target.parent.this is target and not target.parent.alias:
                target = target.parent  # FROM (ns.t): the parentheses go with the table
            target.replace(new)

    def system_source(self, ns: str, name: str, alias: str) -> exp.Expression:
        full = f"{ns}.{name}"
        if ns == "system" and name in SYSTEM_VIEWS:
            cols = SYSTEM_VIEWS[name]
        elif full in self.local:
            cols = dict(self.local[full])
            self.out.local_tables.add(full)
        else:
            raise KalamError("TABLE_NOT_FOUND", f"Table '{full}' not found")
        self.out.tables.append((None, full, "r"))
        self.allow.add(full)
        new = exp.Table(this=exp.to_identifier(full, quoted=True),
                        alias=exp.TableAlias(this=exp.to_identifier(alias)))
        self.known[id(new)] = cols
        return new

    def source_columns(self, src) -> list[tuple[str, str | None]] | None:
        info = self.known.get(id(src))
        if info is None:
            inner = None
            if isinstance(src, exp.Subquery):
                inner = src.this
            elif isinstance(src, exp.Table) and not src.db and src.name.lower() in self.ctes:
                inner = self.ctes[src.name.lower()].this
            if not isinstance(inner, exp.Select):
                return None
            if any(isinstance(e, exp.Star) or isinstance(e.this, exp.Star) for e in inner.expressions):
                return None
            return [(e.alias_or_name, t) for e, t in zip(inner.expressions, self.output_types(inner))]
        if isinstance(info, TableInfo):
            cols = [(c.name, c.data_type) for c in info.columns]
            if self.star_hidden:
                cols += [("_seq", "BigInt"), ("_deleted", "Boolean")]
            return cols
        return list(info.items())

    def expand_stars(self, root: exp.Expression) -> None:
        for select in reversed(list(root.find_all(exp.Select))):  # inner selects first
            sources = []
            frm = select.args.get("from_")
            if frm is not None:
                sources.append(frm.this)
            sources += [j.this for j in select.args.get("joins") or []]
            new_exprs = []
            changed = False
            for e in select.expressions:
                if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
                    qualifier = e.table if isinstance(e, exp.Column) else None
                    picked = [s for s in sources if not qualifier or s.alias_or_name == qualifier]
                    found = [self.source_columns(s) for s in picked]
                    cols = [c for c in found if c is not None]
                    if picked and len(cols) == len(found):
                        for s, cs in zip(picked, cols):
                            for cname, _ in cs:
                                new_exprs.append(exp.column(cname, table=s.alias_or_name or None, quoted=True))
                        changed = True
                        continue
                new_exprs.append(e)
            if changed:
                select.set("expressions", new_exprs)

    def output_types(self, root: exp.Expression) -> list[str | None]:
        select: Any = root  # narrowed to exp.Select below
        while isinstance(select, (exp.Union, exp.Intersect, exp.Except)):
            select = select.this
        if isinstance(select, exp.Subquery):
            select = select.unnest()
        if not isinstance(select, exp.Select):
            return []
        sources = []
        frm = select.args.get("from_")
        if frm is not None:
            sources.append(frm.this)
        sources += [j.this for j in select.args.get("joins") or []]
        out = []
        for e in select.expressions:
            inner = e.this if isinstance(e, exp.Alias) else e
            out.append(self.expr_type(inner, sources))
        return out

    def expr_type(self, e: exp.Expression, sources) -> str | None:
        if isinstance(e, exp.Column) and not isinstance(e.this, exp.Star):
            name = e.name.lower()
            for s in sources:
                if e.table and s.alias_or_name != e.table:
                    continue
                if name in HIDDEN and isinstance(self.known.get(id(s)), TableInfo):
                    return "BigInt" if name == "_seq" else "Boolean"
                cols = self.source_columns(s)
                if cols:
                    for cname, ctype in cols:
                        if cname == name:
                            return ctype
            return None
        if isinstance(e, exp.Count):
            return "BigInt"
        if isinstance(e, (exp.Boolean, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
            return "Boolean"
        if isinstance(e, (exp.Max, exp.Min)):
            return self.expr_type(e.this, sources)
        if isinstance(e, exp.Cast):
            return None
        return None


def compile_query(ast: exp.Expression, kind: str, catalog: Catalog, namespace: str,
                  local_tables: dict[str, list[tuple[str, str]]]) -> Compiled:
    """Compile a copy of `ast` (the caller's tree is not modified)."""
    ast = ast.copy()
    c = _Compiler(catalog, namespace, local_tables)
    c.out.kind = kind
    if kind == "select":
        _name_expressions(ast)
    # user-written functions and parameters first, before the compiler adds its own kdb_* calls
    ast = c.rewrite_functions(ast)
    if kind == "select":
        c.show_deleted = any(col.name.lower() == "_deleted" for where in ast.find_all(exp.Where)
                             for col in where.find_all(exp.Column))
        c.rewrite_sources(ast)
        c.expand_stars(ast)
        c.out.types = c.output_types(ast)
        c.out.sql = ast.sql(SQLITE)
    elif kind == "insert":
        assert isinstance(ast, exp.Insert)
        _compile_insert(c, ast)
    elif kind in ("update", "delete"):
        _compile_update_delete(c, ast, kind)
    else:
        raise KalamError("INVALID_SQL", f"Unsupported statement kind {kind}")
    if kind != "select" and c.out.local_tables:
        # node-local views differ between replicas: a write that read them would diverge
        names = ", ".join(sorted(c.out.local_tables))
        raise KalamError("INVALID_SQL", f"{names} is node-local (each node has its own rows) and cannot be read by "
                         "INSERT, UPDATE or DELETE; read it with SELECT")
    c.out.allow = frozenset(c.allow)
    return c.out


def _name_expressions(ast: exp.Expression) -> None:
    """Result columns of computed expressions are named by the text the user wrote (SQLite would
    otherwise name them after the rewritten SQL, e.g. KDB_NOW())."""
    select = ast
    while isinstance(select, (exp.Union, exp.Intersect, exp.Except)):
        select = select.this
    if not isinstance(select, exp.Select):
        return
    named = []
    for e in select.expressions:
        if not isinstance(e, (exp.Alias, exp.Column, exp.Star)):
            e = exp.Alias(this=e, alias=exp.to_identifier(e.sql(), quoted=True))
        named.append(e)
    select.set("expressions", named)


def _target(c: _Compiler, table: exp.Table, verb: str) -> TableInfo:
    if not isinstance(table, exp.Table):
        raise KalamError("INVALID_SQL", f"{verb} needs a table name")
    ns, name = c.resolve(table)
    if ns in SYSTEM_NAMESPACES:
        raise KalamError("PERMISSION_DENIED", f"Cannot {verb} system table '{ns}.{name}'")
    info = c.lookup(ns, name)
    c.out.target = info
    c.out.tables.append((info, info.full_name, "w"))
    return info


def _check_column(info: TableInfo, name: str) -> str:
    name = name.lower()
    if name in HIDDEN or name.startswith("_"):
        raise KalamError("SQL_EXECUTION_ERROR", f"System column '{name}' cannot be written")
    if name not in info.by_name:
        raise KalamError("SQL_EXECUTION_ERROR", f"Column '{name}' does not exist in table {info.full_name}")
    return name


def _pure_cell(v: exp.Expression) -> tuple[str, object] | None:
    """A VALUES cell that needs no SQL to evaluate: ("v", value) or ("p", parameter number)."""
    if isinstance(v, exp.Literal):
        return ("v", v.this if v.is_string else v.to_py())
    if isinstance(v, exp.Null):
        return ("v", None)
    if isinstance(v, exp.Boolean):
        return ("v", bool(v.this))
    if isinstance(v, exp.Placeholder) and v.name.startswith("p") and v.name[1:].isdigit():
        return ("p", int(v.name[1:]))
    if isinstance(v, exp.Neg) and isinstance(v.this, exp.Literal) and not v.this.is_string:
        value = v.this.to_py()
        if isinstance(value, (int, float)):
            return ("v", -value)
    return None


def _compile_insert(c: _Compiler, ast: exp.Insert) -> None:
    """Phase 1 of an INSERT: the rows to insert, as raw values in `columns` order. VALUES of
    literals and parameters need no SQL at all (`pure_rows`); anything else becomes a VALUES or
    SELECT statement that reads only through row views. Defaults, coercion, `_seq` and the write
    itself happen in the executor (engine/writes.py), from Python values."""
    if ast.args.get("conflict") or ast.args.get("returning"):
        raise KalamError("INVALID_SQL", "INSERT ... ON CONFLICT / RETURNING is not supported")
    target = ast.this
    given: list[str] | None = None
    if isinstance(target, exp.Schema):
        given = [i.name.lower() for i in target.expressions]
        target = target.this
    info = _target(c, target, "insert into")
    if given is None:
        cols = [col.name for col in info.columns]
    else:
        cols = [_check_column(info, g) for g in given]
        if len(set(cols)) != len(cols):
            raise KalamError("SQL_EXECUTION_ERROR", "A column appears twice in the INSERT column list")
    for col in info.columns:
        if col.name not in cols and col.not_null and col.default is None:
            raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col.name}' cannot be NULL (no value and no DEFAULT)")
    c.out.columns = cols
    if info.table_type in OWNED_TYPES:
        c.out.uses_owner = True
    source = ast.expression
    if isinstance(source, exp.Values):
        rows: list[list[exp.Expression]] = []
        for tup in source.expressions:
            values = tup.expressions if isinstance(tup, exp.Tuple) else [tup]
            if len(values) != len(cols):
                raise KalamError("SQL_EXECUTION_ERROR", f"INSERT has {len(cols)} column(s) but a row has "
                                 f"{len(values)} value(s)")
            rows.append(values)
        c.out.row_count = len(rows)
        cells = [[_pure_cell(v) for v in row] for row in rows]
        pure = [[cell for cell in row if cell is not None] for row in cells]
        if all(len(p) == len(r) for p, r in zip(pure, cells)):
            c.out.pure_rows = pure
            return
        for row in rows:
            for v in row:
                c.rewrite_sources(v)  # a subquery in VALUES reads through row views like any other
        c.out.sql = exp.Values(expressions=[exp.Tuple(expressions=row) for row in rows]).sql(SQLITE)
    elif isinstance(source, (exp.Select, exp.Union)):
        c.star_hidden = False
        c.rewrite_sources(source)
        c.expand_stars(source)
        c.out.sql = source.sql(SQLITE)
        c.out.row_count = -1
    else:
        raise KalamError("INVALID_SQL", "INSERT needs VALUES or SELECT")


def _compile_update_delete(c: _Compiler, ast: exp.Expression, kind: str) -> None:
    """Phase 1 of UPDATE/DELETE: a SELECT over the target's row view that returns, per matching
    row, its rowid, every column, its `_seq`, and (UPDATE) the new value of each SET column. The
    executor writes those rows with fixed templates, so user SQL itself never writes."""
    table = ast.this
    info = _target(c, table, "update" if kind == "update" else "delete from")
    alias = table.alias or table.name
    if kind == "update" and info.table_type == "STREAM":
        raise KalamError("SQL_EXECUTION_ERROR", f"UPDATE is not supported on STREAM table {info.full_name}")
    where = ast.args.get("where")
    cond = where.this if where is not None else None
    for src in ("from_", "joins", "using"):
        if ast.args.get(src):
            raise KalamError("INVALID_SQL", f"{kind.upper()} ... {src.strip('_').upper()} is not supported")
    if ast.args.get("returning"):
        raise KalamError("INVALID_SQL", "RETURNING is not supported")
    if cond is not None:
        c.rewrite_sources(cond)
    projection = [exp.column(ROWID, table=alias)]
    projection += [exp.column(col.name, table=alias, quoted=True) for col in info.columns]
    projection.append(exp.column("_seq", table=alias))
    if kind == "update":
        set_cols = []
        for e in ast.expressions:
            if not isinstance(e, exp.EQ) or not isinstance(e.this, exp.Column):
                raise KalamError("INVALID_SQL", "UPDATE SET needs column = value")
            col = _check_column(info, e.this.name)
            if col in set_cols:
                raise KalamError("SQL_EXECUTION_ERROR", f"Column '{col}' is assigned twice in UPDATE SET")
            value = e.expression
            c.rewrite_sources(value)
            set_cols.append(col)
            projection.append(value)
        c.out.columns = set_cols
    if info.table_type in OWNED_TYPES:
        c.out.uses_owner = True
    source = c.visible_source(info, alias, with_rowid=True)
    select = exp.select(*projection).from_(source)
    if cond is not None:
        select = select.where(cond)
    c.out.sql = select.sql(SQLITE)
