"""The grammar of user statements (CREATE USER, ALTER USER, DROP USER): user names, roles and their
upstream aliases, and the OAuth identity payload. Execution is engine/users.py."""

from __future__ import annotations

import json
import re

from kalamdb.errors import KalamError
from kalamdb.sql import statements as st
from kalamdb.sql.tokens import Cursor

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
ROLES = ("user", "service", "dba", "system")
ROLE_ALIASES = {"admin": "dba", "developer": "service", "analyst": "service", "viewer": "user", "readonly": "user"}


def parse_role(c: Cursor) -> str:
    """A role name or one of upstream's aliases (admin, developer, ...), as the role it means."""
    role = c.name("role").lower()
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise KalamError("INVALID_SQL", f"Invalid role '{role}': valid roles are dba, admin, developer, analyst, "
                         "viewer, readonly, user, service, system")
    return role


def oauth_data(payload: str | None) -> str:
    """Upstream's OAuth identity: a JSON object with provider and subject."""
    if payload is None:
        raise KalamError("SQL_EXECUTION_ERROR", "OAuth user requires JSON payload with provider and subject")
    try:
        obj = json.loads(payload)
    except ValueError as e:
        raise KalamError("SQL_EXECUTION_ERROR", f"Invalid OAuth JSON: {e}") from None
    if not isinstance(obj, dict):
        raise KalamError("SQL_EXECUTION_ERROR", "Invalid OAuth JSON: expected an object")
    for key in ("provider", "subject"):
        if not isinstance(obj.get(key), str):
            raise KalamError("SQL_EXECUTION_ERROR", f"OAuth user requires '{key}' field")
    return json.dumps({"provider_type": obj["provider"].lower(), "issuer": obj["provider"],
                       "subject": obj["subject"]}, sort_keys=True, separators=(",", ":"))


def username(c: Cursor) -> str:
    """A user name: up to 128 letters, digits and `_.@-`."""
    name = c.name("user name")
    if not USERNAME_RE.match(name):
        raise KalamError("INVALID_SQL", f"Invalid user name '{name}'")
    return name


def parse_create_user(c: Cursor) -> st.CreateUser:
    ine = c.accept("IF", "NOT", "EXISTS")
    if ine:
        raise KalamError("INVALID_SQL", "CREATE USER IF NOT EXISTS is not supported")
    name = username(c)
    password = role = email = auth_data = None
    auth_type = None
    c.accept("WITH")
    while not c.done():
        if c.accept("PASSWORD"):
            password = c.string("password")
            auth_type = "password"
        elif c.accept("OAUTH"):
            nxt = c.peek()
            payload = c.string("OAuth payload") if nxt is not None and nxt.kind == "str" else None
            auth_type, auth_data = "oauth", oauth_data(payload)
        elif c.accept("INTERNAL"):
            auth_type = "internal"
        elif c.accept("ROLE"):
            role = parse_role(c)
        elif c.accept("EMAIL"):
            email = c.string("email")
        else:
            raise KalamError("INVALID_SQL", f"Unexpected {c.current().text!r} in CREATE USER")
    if auth_type is None:
        raise KalamError("INVALID_SQL", "Expected PASSWORD, OAUTH, or INTERNAL after WITH: CREATE USER name "
                         "WITH PASSWORD 'pass' | OAUTH '{\"provider\": ..., \"subject\": ...}' | INTERNAL ROLE role")
    return st.CreateUser(name, role or "user", email, password=password, auth_type=auth_type, auth_data=auth_data)


def parse_alter_user(c: Cursor) -> st.AlterUser:
    """After ALTER USER: `name SET PASSWORD|ROLE|EMAIL value`."""
    name = username(c)
    c.expect("SET")
    if c.accept("PASSWORD"):
        pw = c.string("password")
        c.end()
        return st.AlterUser(name, password=pw)
    if c.accept("ROLE"):
        role = parse_role(c)
        c.end()
        return st.AlterUser(name, role=role)
    if c.accept("EMAIL"):
        email = c.string("email")
        c.end()
        return st.AlterUser(name, email=email)
    raise KalamError("INVALID_SQL", "Expected PASSWORD, ROLE, or EMAIL after SET")


def parse_drop_user(c: Cursor) -> st.DropUser:
    """After DROP USER: `[IF EXISTS] name`."""
    ie = c.accept("IF", "EXISTS")
    name = username(c)
    c.end()
    return st.DropUser(name, ie)
