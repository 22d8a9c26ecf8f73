"""Users: CREATE/ALTER/DROP USER applied as commands (passwords travel only as argon2 hashes),
credential checks, and who may act as whom (EXECUTE AS USER)."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

from kalamdb.engine import catalog as cat
from kalamdb.engine.passwords import verify_password
from kalamdb.engine.types import ADMIN_ROLES, ExecContext, Principal, message, require_admin
from kalamdb.errors import KalamError
from kalamdb.sql import statements as st

if TYPE_CHECKING:
    from kalamdb.engine.database import Database



def find_user(conn, username: str) -> Principal | None:
    row = conn.execute("SELECT user_id, username, role FROM _kdb_users WHERE username = ? AND deleted_at IS NULL",
                       (username,)).fetchone()
    return Principal(*row) if row else None


def create_user(db: Database, ctx: ExecContext, s: st.CreateUser) -> dict:
    """The new user's id is the name it was created with (upstream's ADR-019): the id of logins,
    tokens, row ownership and `WHERE user_id = 'alice'`. A name once dropped (soft delete) can be
    created again; it is the same user id, as upstream."""
    db.users_version += 1  # credentials caches on this node must re-check
    require_admin(ctx.principal, "User management")
    if s.role == "system" and ctx.principal.role != "system":
        raise KalamError("PERMISSION_DENIED", "Only role system may create system users")
    if s.auth_type == "password" and s.password_hash is None:
        raise KalamError("INTERNAL_ERROR", "CREATE USER command without a password hash")
    if find_user(ctx.conn, s.username) is not None:
        raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' already exists")
    now = ctx.state.now_us
    ctx.conn.execute("DELETE FROM _kdb_users WHERE user_id = ? AND deleted_at IS NOT NULL", (s.username,))
    ctx.conn.execute("INSERT INTO _kdb_users (user_id, username, role, email, password_hash, created_at, "
                     "updated_at, deleted_at, auth_type, auth_data) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                     (s.username, s.username, s.role, s.email, s.password_hash or "", now, now, s.auth_type,
                      s.auth_data))
    audit(ctx, "CREATE_USER", f"user:{s.username}", {"role": s.role, "auth_type": s.auth_type}, s.username)
    return message(f"User '{s.username}' created", ctx)


def alter_user(db: Database, ctx: ExecContext, s: st.AlterUser) -> dict:
    db.users_version += 1  # credentials caches on this node must re-check
    target = find_user(ctx.conn, s.username)
    if target is None:
        raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' not found")
    me = ctx.principal
    if s.email is not None:
        if target.user_id != me.user_id and me.role not in ADMIN_ROLES:
            raise KalamError("PERMISSION_DENIED", "Only dba or system may change another user's email")
        ctx.conn.execute("UPDATE _kdb_users SET email = ?, updated_at = ? WHERE user_id = ?",
                         (s.email, ctx.state.now_us, target.user_id))
    elif s.role is not None:
        require_admin(me, "Changing a role")
        if target.user_id == cat.ROOT_USER_ID:
            raise KalamError("SQL_EXECUTION_ERROR", "The role of 'root' cannot be changed")
        if "system" in (s.role, target.role) and me.role != "system":
            raise KalamError("PERMISSION_DENIED", "Only role system may grant or revoke role system")
        ctx.conn.execute("UPDATE _kdb_users SET role = ?, updated_at = ? WHERE user_id = ?",
                         (s.role, ctx.state.now_us, target.user_id))
    else:
        if target.user_id != me.user_id and me.role not in ADMIN_ROLES:
            raise KalamError("PERMISSION_DENIED", "Only dba or system may change another user's password")
        if target.role == "system" and me.role != "system":
            raise KalamError("PERMISSION_DENIED", "Only role system may change a system user's password")
        if s.password_hash is None:
            raise KalamError("INTERNAL_ERROR", "ALTER USER command without a password hash")
        ctx.conn.execute("UPDATE _kdb_users SET password_hash = ?, updated_at = ? WHERE user_id = ?",
                         (s.password_hash, ctx.state.now_us, target.user_id))
    change = "SetRole" if s.role is not None else ("SetEmail" if s.email is not None else "SetPassword")
    audit(ctx, "ALTER_USER", f"user:{s.username}", {"modification": change}, target.user_id)
    return message(f"User '{s.username}' updated", ctx)


def drop_user(db: Database, ctx: ExecContext, s: st.DropUser) -> dict:
    db.users_version += 1  # credentials caches on this node must re-check
    require_admin(ctx.principal, "User management")
    target = find_user(ctx.conn, s.username)
    if target is None:
        if s.if_exists:
            return message(f"User '{s.username}' does not exist (skipped)", ctx)
        raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' not found")
    if target.user_id == cat.ROOT_USER_ID or target.user_id == ctx.principal.user_id:
        raise KalamError("SQL_EXECUTION_ERROR", f"User '{s.username}' cannot be dropped")
    if target.role == "system" and ctx.principal.role != "system":
        raise KalamError("PERMISSION_DENIED", "Only role system may drop a system user")
    ctx.conn.execute("UPDATE _kdb_users SET deleted_at = ?, updated_at = ? WHERE user_id = ?",
                     (ctx.state.now_us, ctx.state.now_us, target.user_id))
    audit(ctx, "DROP_USER", f"user:{s.username}", None, target.user_id)
    return message(f"User '{s.username}' dropped (soft delete)", ctx)


def authenticate(db: Database, username: str, password: str) -> Principal:
    conn, _ = db.reader()
    row = conn.execute("SELECT user_id, username, role, password_hash, auth_type FROM _kdb_users "
                       "WHERE username = ? AND deleted_at IS NULL", (username,)).fetchone()
    bad = KalamError("INVALID_CREDENTIALS", "Invalid username or password")
    if row is None or not isinstance(password, str) or row[4] != "password":
        raise bad  # OAuth and internal users never log in with a password
    user_id, name, role, stored, _ = row
    if stored is None:
        # root without a replicated password: the node's configured root password (not replicated)
        if user_id != cat.ROOT_USER_ID:
            raise bad
        expected = db.root_password or ""
        if not hmac.compare_digest(expected.encode(), password.encode()):
            raise bad
    elif not stored or not verify_password(stored, password):
        raise bad
    return Principal(user_id, name, role)


def principal_for(db: Database, user_id: str) -> Principal | None:
    conn, _ = db.reader()
    row = conn.execute("SELECT user_id, username, role FROM _kdb_users WHERE user_id = ? AND deleted_at IS NULL",
                       (user_id,)).fetchone()
    return Principal(*row) if row else None


_ACTS_FOR = {"system": ("user", "service", "dba", "system"), "dba": ("user", "service", "dba"),
             "service": ("user", "service")}


def execute_as_target(ctx: ExecContext, username: str) -> Principal:
    """The user whose rows `EXECUTE AS USER 'id'` uses, if the caller may act for them: system for
    anyone, dba for dba/service/user, service for service/user, a user for itself. As upstream, a
    target that is no user of this database is an application user id with role user (services act
    for their own users, who need not log in)."""
    target = find_user(ctx.conn, username) or Principal(username, username, "user")
    me = ctx.principal
    if not (target.role in _ACTS_FOR.get(me.role, ()) or target.user_id == me.user_id):
        raise KalamError("PERMISSION_DENIED", "Unauthorized: EXECUTE AS USER is not authorized: actor "
                         f"'{me.user_id}' with role {me.role.title()} cannot target '{username}' with role "
                         f"{target.role.title()}")
    return target


def audit(ctx: ExecContext, action: str, target: str, details: dict | None, subject: str | None = None) -> None:
    """One row of system.audit_log, written with the command (its id and time come from the command,
    so every replica writes the same row)."""
    if not ctx.writing:
        return
    ctx.audits += 1
    audit_id = f"audit_{ctx.state.now_us // 1000}_{ctx.index}_{ctx.audits}"
    ctx.conn.execute("INSERT INTO _kdb_audit VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                     (audit_id, ctx.state.now_us, ctx.principal.user_id, action, target,
                      json.dumps(details, sort_keys=True) if details is not None else None, subject))
