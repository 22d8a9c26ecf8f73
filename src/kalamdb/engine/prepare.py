"""Prepare: the checks a request passes on the node that received it, before it costs anything or
reaches the log: sizes and parameters, syntax, the permissions that depend only on who asks, and
for writes a dry run of phase 1 against the current state (budgets, row limits, access). Everything
refused here would be refused identically by apply; what depends on data is left to apply, where
every replica decides it the same way."""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from kalamdb.engine import authorizer, executor, limits, topics, users
from kalamdb.engine.compile import Compiled
from kalamdb.engine.types import ExecContext, Prepared, Principal, guard_of, require_admin
from kalamdb.engine.writes import too_many_rows
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.parser import parse_statement
from kalamdb.sql.splitter import split_statements
from kalamdb.sql.topics import TopicStatement

if TYPE_CHECKING:
    from kalamdb.engine.database import Database

MAX_SQL_BYTES = limits.MAX_SQL_BYTES
MAX_PARAMS = limits.MAX_PARAMS
_USER_DDL = (st.CreateUser, st.AlterUser, st.DropUser)


def prepare(db: Database, sql: str, params: list | None, namespace: str | None, principal: Principal) -> Prepared:
    """Parse and check a request on the node that received it. Everything that can be refused
    without applying is refused here, before any costly work or any log entry: sizes, syntax,
    permissions that do not depend on data, and writes that would exceed their budgets."""
    if not isinstance(sql, str) or not sql.strip():
        raise KalamError("EMPTY_SQL", "SQL statement is empty")
    if len(sql) > MAX_SQL_BYTES or len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
        raise KalamError("INVALID_SQL", f"SQL is larger than {MAX_SQL_BYTES} bytes")
    params = list(params or [])
    if len(params) > MAX_PARAMS:
        raise KalamError("INVALID_PARAMETER", "Statement 1 failed: Parameter count exceeded: maximum "
                         f"{MAX_PARAMS} parameters allowed, got {len(params)}")
    for i, p in enumerate(params, 1):
        if p is not None and not isinstance(p, (bool, int, float, str, bytes)):
            raise KalamError("INVALID_PARAMETER", f"Parameter ${i} must be a scalar (string, number, "
                             f"boolean or null), got {type(p).__name__}")
        if isinstance(p, int) and not -(2**63) <= p < 2**63:
            raise KalamError("INVALID_PARAMETER", f"Parameter ${i} does not fit in 64 bits")
        size = len(p) if isinstance(p, bytes) else (len(p.encode("utf-8", "surrogatepass"))
                                                     if isinstance(p, str) and len(p) * 4 > limits.MAX_PARAM_BYTES
                                                     else len(p) if isinstance(p, str) else 0)
        if size > limits.MAX_PARAM_BYTES:
            raise KalamError("INVALID_PARAMETER", f"Statement 1 failed: Parameter size exceeded: parameter at "
                             f"index {i - 1} is {size} bytes (max {limits.MAX_PARAM_BYTES} bytes)")
    texts = split_statements(sql)
    if not texts:
        raise KalamError("EMPTY_SQL", "SQL statement is empty")
    if params and len(texts) > 1:
        raise KalamError("PARAMS_WITH_BATCH", "Parameters are not allowed with multiple statements")
    statements = []
    for i, text in enumerate(texts, 1):
        try:
            statements.append(parse_statement(text, db.parse_cache))
        except KalamError as e:
            if len(texts) == 1:
                raise
            raise KalamError(e.code, f"Statement {i} failed: {e.message}", details=e.details) from None
    ns = (namespace or "default").lower()
    if not re.fullmatch(r"[a-z0-9_]+", ns):
        raise KalamError("INVALID_INPUT", f"Invalid namespace_id '{namespace}'")
    cluster_op = None
    for s in statements:
        if isinstance(s, st.ClusterStatement):
            if len(statements) != 1:
                raise KalamError("INVALID_SQL", "A CLUSTER statement must be sent alone")
            require_admin(principal, "CLUSTER commands")
            cluster_op = s.op
        else:
            _check_statement_permission(s, principal)
    is_write = any(s.is_write for s in statements)
    touches = any(isinstance(s.inner if isinstance(s, st.ExecuteAs) else s, _USER_DDL) for s in statements)
    prepared = Prepared(sql, statements, params, ns, principal, is_write, cluster_op, touches)
    if is_write:
        _admit_write(db, prepared)
    return prepared


def _admit_write(db: Database, prepared: Prepared) -> None:
    """Check a write's queries against the current state before it is proposed: permissions,
    and the step and row budgets (phase 1 run as a read), so a write that would exceed them
    never reaches the log and replicas never spend the budget. Only budget, permission and
    structural (INVALID_SQL: e.g. a write reading a node-local view) failures refuse here; any
    other error is left to apply, where it is decided identically on
    every replica. Requests with DDL are not checked (their tables may not exist yet)."""
    if any(not isinstance(s, (st.Query, st.ExecuteAs, st.Begin, st.Commit, st.Rollback))
           for s in prepared.statements):
        return
    conn, state = db.reader()
    ctx = ExecContext(conn, state, prepared.principal, prepared.namespace, prepared.params, False)
    for i, s in enumerate(prepared.statements, 1):
        q = s.inner if isinstance(s, st.ExecuteAs) else s
        if not isinstance(q, st.Query) or q.kind == "select":
            continue
        try:
            compiled = db.compiled(q, ctx)
            owner = None
            if isinstance(s, st.ExecuteAs):
                owner = users.execute_as_target(ctx, s.username)
            executor.check_access(compiled, prepared.principal, owner)
            if compiled.sql and compiled.target is not None:
                _dry_run(ctx, q, compiled, owner or prepared.principal)
        except KalamError as e:
            if e.code in ("PERMISSION_DENIED", "INVALID_SQL") or "budget" in e.message or "more than" in e.message:
                # worded as apply would word it (upstream: "Statement N failed: ...")
                raise KalamError(e.code, f"Statement {i} failed: {e.message}", details=e.details,
                                 sensitive=e.sensitive) from None
        except sqlite3.Error:
            pass


def _dry_run(ctx: ExecContext, q: st.Query, compiled: Compiled, who: Principal) -> None:
    params = q.params if q.params is not None else ctx.params
    binds = {f"p{i}": v for i, v in enumerate(params, 1)}
    state = ctx.state
    state.owner, state.username, state.last_error = who.user_id, who.username, None
    state.start_statement(steps=limits.WRITE_STEP_BUDGET)
    ctx.conn.execute("BEGIN")
    try:
        with authorizer.UserScope(guard_of(ctx), compiled.allow):
            n = len(ctx.conn.execute(compiled.sql, binds).fetchmany(limits.MAX_WRITE_ROWS + 1))
    except sqlite3.Error as e:
        if str(e) == "interrupted":
            raise KalamError("SQL_EXECUTION_ERROR", "Statement would exceed its execution budget "
                             f"({limits.WRITE_STEP_BUDGET} steps); it was not applied") from None
        raise
    finally:
        state.end_statement()
        ctx.conn.execute("COMMIT")
    if n > limits.MAX_WRITE_ROWS:
        raise too_many_rows(compiled)


def _check_statement_permission(s: st.Statement, principal: Principal) -> None:
    """Refusals that depend only on who asks, decided before the request costs anything."""
    if isinstance(s, TopicStatement):
        topics.check_permission(s, principal)
    elif isinstance(s, (st.CreateNamespace, st.DropNamespace)):
        require_admin(principal, "Namespace DDL")
    elif isinstance(s, (st.CreateUser, st.DropUser)):
        require_admin(principal, "User management")
    elif isinstance(s, st.AlterUser):
        if s.role is not None:
            require_admin(principal, "Changing a role")
        elif s.username != principal.username and principal.role not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", "Only dba or system may change another user's password")
    elif isinstance(s, st.CreateTable) and s.table_type == "SHARED" and principal.role == "user":
        raise KalamError("PERMISSION_DENIED", "Role 'user' may create USER and STREAM tables only")
    elif isinstance(s, st.DropTable) and principal.role not in ("dba", "system"):
        raise KalamError("PERMISSION_DENIED", "Unauthorized: Insufficient privileges to drop table")
    elif isinstance(s, (st.CreateStorage, st.AlterStorage, st.DropStorage, st.KillJob)):
        require_admin(principal, type(s).__name__)
    elif isinstance(s, (st.StorageFlush, st.StorageCompact)) and principal.role == "user":
        raise KalamError("PERMISSION_DENIED", "Unauthorized: STORAGE FLUSH and STORAGE COMPACT require Service, "
                         "DBA, or System role")
