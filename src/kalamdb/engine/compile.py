"""Rewrite a parsed SELECT/INSERT/UPDATE/DELETE into SQLite SQL against the catalog, on the syntax
tree (never by pasting strings): table names map to storage tables, USER tables get the owner filter
and owner column, every read hides soft-deleted rows, DELETE becomes a soft delete, writes get a new
`_seq`, and non-deterministic functions become functions fed by the command's fixed inputs.

The compiled SQL binds the owner, the clock and request parameters as named parameters, so one
compilation serves every user and every request with the same text (cached by the caller).

This module is the entry point and the part that decides what each name means: table references to
row views or system views (CTE scoping included), `*` expansion and the output column types. The
function rewrite is engine/compile_functions.py, phase 1 of writes engine/compile_writes.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from kalamdb.engine.authorizer import RESERVED_PREFIXES, is_cte_name
from kalamdb.engine.catalog import OWNED_TYPES, SYSTEM_VIEWS, Catalog, TableInfo
from kalamdb.engine.compile_functions import rewrite_functions
from kalamdb.engine.compile_writes import compile_insert, compile_update_delete
from kalamdb.engine.rowview_names import HIDDEN, ROWID, SYSTEM_NAMESPACES
from kalamdb.errors import KalamError
from kalamdb.sql.dialects import SQLITE


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


class Compiler:
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
            cols: list[tuple[str, str | None]] = [(c.name, c.data_type) for c in info.columns]
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
    c = Compiler(catalog, namespace, local_tables)
    c.out.kind = kind
    if kind == "select":
        _name_expressions(ast)
    # user-written functions and parameters first, before the compiler adds its own kdb_* calls
    ast, c.out.max_param = rewrite_functions(ast)
    if kind == "select":
        c.show_deleted = any(col.name.lower() == "_deleted" for where in ast.find_all(exp.Where)
                             for col in where.find_all(exp.Column))
        c.rewrite_sources(ast)
        c.expand_stars(ast)
        c.out.types = c.output_types(ast)
        c.out.sql = ast.sql(SQLITE)
    elif kind == "insert":
        assert isinstance(ast, exp.Insert)
        compile_insert(c, ast)
    elif kind in ("update", "delete"):
        compile_update_delete(c, ast, kind)
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
