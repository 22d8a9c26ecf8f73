"""Login bookkeeping and first-run setup, applied as commands so that every node agrees:

- `LoginEvent`: a failed password check counts towards a lockout (upstream: 5 failures lock the
  account for 15 minutes, shown in system.users as failed_login_attempts / locked_until); a
  successful one after failures resets the count. The threshold and duration travel in the
  command, and `locked_until` is computed from the command's clock, so replicas stay identical.
- `ServerSetup`: `POST /v1/api/auth/setup` sets root's password and creates the first dba user in
  one command, and only while root has no replicated password (decided on the replicated state, so
  two racing setups cannot both win).

Neither statement has SQL syntax: only the server builds them (as root), never user text.

Read helpers for the auth endpoints (user info, the credential stamp of tokens, lockout state)
read through the node's reader connection."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from kalamdb.engine import catalog as cat
from kalamdb.engine import users
from kalamdb.engine.types import ExecContext, message
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st

if TYPE_CHECKING:
    from kalamdb.engine.database import Database


@dataclass
class LoginEvent(st.Statement):
    tag: ClassVar[str] = "login_event"
    writes: ClassVar[bool] = True
    user_id: str
    ok: bool
    max_failed: int = 5
    lockout_s: int = 900


@dataclass
class ServerSetup(st.Statement):
    tag: ClassVar[str] = "server_setup"
    writes: ClassVar[bool] = True
    user: str
    email: str | None
    user_hash: str = field(repr=False)
    root_hash: str = field(repr=False)


st.register(LoginEvent, ServerSetup)
LOGIN_STATEMENTS = (LoginEvent, ServerSetup)

def execute(db: Database, ctx: ExecContext, s: LoginEvent | ServerSetup) -> dict:
    if ctx.principal.role != "system" or not ctx.writing:
        raise KalamError("PERMISSION_DENIED", "Login bookkeeping is written by the server only")
    if isinstance(s, LoginEvent):
        return _login_event(ctx, s)
    return _setup(db, ctx, s)


def _login_event(ctx: ExecContext, s: LoginEvent) -> dict:
    conn, now = ctx.conn, ctx.state.now_us
    row = conn.execute("SELECT failed_login_attempts FROM _kdb_users WHERE user_id = ? AND deleted_at IS NULL",
                       (s.user_id,)).fetchone()
    if row is None:
        return message("No such user", ctx)
    if s.ok:
        conn.execute("UPDATE _kdb_users SET failed_login_attempts = 0, locked_until = NULL, last_login_at = ? "
                     "WHERE user_id = ?", (now, s.user_id))
        return message("Login recorded", ctx)
    failed = (row[0] or 0) + 1
    locked = now + s.lockout_s * 1_000_000 if failed >= s.max_failed else None
    conn.execute("UPDATE _kdb_users SET failed_login_attempts = ?, locked_until = COALESCE(?, locked_until) "
                 "WHERE user_id = ?", (failed, locked, s.user_id))
    return message("Failed login recorded", ctx)


def _setup(db: Database, ctx: ExecContext, s: ServerSetup) -> dict:
    stored = ctx.conn.execute("SELECT password_hash FROM _kdb_users WHERE user_id = ?",
                              (cat.ROOT_USER_ID,)).fetchone()
    if stored is None or stored[0]:
        raise KalamError("SQL_EXECUTION_ERROR", "Server has already been configured. Root password is set.")
    if users.find_user(ctx.conn, s.user) is not None:
        raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.user}' already exists")
    users.alter_user(db, ctx, st.AlterUser(cat.ROOT_USER_ID, password_hash=s.root_hash))
    users.create_user(db, ctx, st.CreateUser(s.user, "dba", s.email, password_hash=s.user_hash))
    return message(f"Server setup complete. Root password configured and DBA user '{s.user}' created. "
                   "Please login to continue.", ctx)


# ------------------------------------------------------------------------------------ reads


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    role: str
    email: str | None
    created_at: int  # microseconds
    updated_at: int
    failed_login_attempts: int
    locked_until: int | None  # microseconds
    password_hash: str | None


_RECORD = ("SELECT user_id, role, email, created_at, updated_at, failed_login_attempts, locked_until, "
           "password_hash FROM _kdb_users WHERE {} = ? AND deleted_at IS NULL")


def user_record(db: Database, user_id: str) -> UserRecord | None:
    """A live (not dropped) user, by id (what tokens name)."""
    conn, _ = db.reader()
    row = conn.execute(_RECORD.format("user_id"), (user_id,)).fetchone()
    return UserRecord(*row) if row else None


def user_by_name(db: Database, name: str) -> UserRecord | None:
    """A live user by the name it logs in with."""
    conn, _ = db.reader()
    row = conn.execute(_RECORD.format("username"), (name,)).fetchone()
    return UserRecord(*row) if row else None


def root_needs_setup(db: Database) -> bool:
    """Root has neither a replicated password nor one configured on this node."""
    rec = user_record(db, cat.ROOT_USER_ID)
    return rec is not None and not rec.password_hash and not db.root_password


def credential_stamp(db: Database, user_id: str, key: bytes) -> str | None:
    """A short keyed digest of what a token's validity depends on (role and password): a token
    carries the stamp of its issue time and is refused once the user's stamp differs, so tokens
    issued before a password or role change stop working at once, on every node."""
    rec = user_record(db, user_id)
    if rec is None:
        return None
    material = f"{rec.user_id}\0{rec.role}\0{rec.password_hash or ''}"
    if rec.user_id == cat.ROOT_USER_ID and not rec.password_hash:
        material += "\0" + hashlib.sha256((db.root_password or "").encode()).hexdigest()
    return hmac.new(key, material.encode(), hashlib.sha256).hexdigest()[:22]
