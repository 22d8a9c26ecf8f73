"""The engine's value types: who asks (Principal), a prepared request (Prepared), what applying a
command produced (Outcome), and the state of one request while its statements run (ExecContext)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from kalamdb.engine.authorizer import Guard
from kalamdb.engine.changes import Change, FeedEvent
from kalamdb.engine.functions import FnState
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st

ADMIN_ROLES = ("dba", "system")


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str  # user | service | dba | system


@dataclass
class Prepared:
    sql: str
    statements: list[st.Statement]
    params: list
    namespace: str
    principal: Principal
    is_write: bool
    cluster_op: st.ClusterOp | None = None
    #: the request may change users, passwords or roles (credential caches must be refreshed)
    touches_users: bool = False


@dataclass
class Outcome:
    results: list[dict] = field(default_factory=list)
    error: KalamError | None = None


class ExecContext:
    """One request being executed: which connection, whose rows, which fixed inputs, and (when
    applying) the row changes and feed events it made so far."""

    def __init__(self, conn: sqlite3.Connection, state: FnState, principal: Principal, namespace: str,
                 params: list, writing: bool, index: int = 0):
        self.conn = conn
        self.state = state
        self.principal = principal
        self.namespace = namespace
        self.params = params
        self.writing = writing
        self.index = index  # the log index of the command being applied (0 on reads)
        self.ddl_done = False
        self.audits = 0  # audit_log rows written by this command (numbers their ids)
        self.changes: list[Change] = []
        self.events: list[FeedEvent] = []


def require_admin(principal: Principal, what: str) -> None:
    if principal.role not in ADMIN_ROLES:
        raise KalamError("PERMISSION_DENIED", f"{what} requires role dba or system")


def message(text: str, ctx: ExecContext, row_count: int = 0) -> dict:
    return {"row_count": row_count, "message": text, "as_user": ctx.principal.username}


def public_error(err: KalamError, principal: Principal | None) -> KalamError:
    """An error as a non-admin may see it (upstream's redaction): table discovery failures and raw
    engine errors become "SQL statement failed", internal errors "SQL request failed", without
    details. Permission, validation, constraint and parameter errors keep their message."""
    if principal is not None and principal.role in ADMIN_ROLES:
        return err
    if err.code == "INTERNAL_ERROR":
        return KalamError("INTERNAL_ERROR", "SQL request failed")
    if err.code == "TABLE_NOT_FOUND" or err.sensitive:
        return KalamError("SQL_EXECUTION_ERROR", "SQL statement failed")
    return err


def guard_of(ctx: ExecContext) -> Guard:
    """The connection's authorizer (every engine connection has one: see authorizer.install)."""
    if ctx.state.guard is None:
        raise KalamError("INTERNAL_ERROR", "connection without an authorizer")
    return ctx.state.guard


def may_access_shared(role: str, level: str | None, *, write: bool) -> bool:
    """SHARED tables by access level, as upstream: PUBLIC is read by everyone (written by service
    and up), PRIVATE (the default) and RESTRICTED by service and up, DBA by dba and system only."""
    if level == "DBA":
        return role in ADMIN_ROLES
    if role == "user":
        return level == "PUBLIC" and not write
    return True
