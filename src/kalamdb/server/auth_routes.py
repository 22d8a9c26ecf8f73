"""Upstream KalamDB's auth endpoints (`/v1/api/auth/...`), with its answers and errors
(`{"error": "unauthorized"|"account_locked"|"setup_required"|"rate_limited"|..., "message"}`):

- `POST login {user|username, password}` -> `{user: {id, role, email, created_at, updated_at},
  admin_ui_access, expires_at, access_token, refresh_token, refresh_expires_at}` and the cookies
  `kalamdb_auth` / `kalamdb_refresh` (HttpOnly, SameSite=Strict, Secure over https).
- `POST refresh` (the refresh cookie, or `Authorization: Bearer <refresh token>`) -> the same.
- `POST logout` -> clears the cookies. `GET me` (Bearer or the auth cookie) -> `{user, admin_ui_access}`.
- `GET status` -> `{needs_setup, message}`; `POST setup {user, password, root_password, email?}` sets
  root's password and creates the first dba user (from this machine only, unless
  `auth.allow_remote_setup`).

Password checks go through server/logins.py (throttling, lockout, no name enumeration); tokens
carry a credential stamp, so a password or role change ends every token issued before it."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kalamdb.engine import logins as elogins
from kalamdb.engine.passwords import hash_password
from kalamdb.engine.types import Prepared
from kalamdb.errors import KalamError, RetryLater
from kalamdb.node.clock import clock
from kalamdb.server import responses
from kalamdb.server.auth import REFRESH_FACTOR, is_local_address
from kalamdb.server.logins import ROOT, LoginPolicy, Logins
from kalamdb.server.sql_endpoint import read_json_body

if TYPE_CHECKING:
    from kalamdb.engine import Principal
    from kalamdb.server.app import ServerState

log = logging.getLogger("kalamdb.auth")

PREFIX = "/v1/api/auth"
AUTH_COOKIE, REFRESH_COOKIE = "kalamdb_auth", "kalamdb_refresh"
MAX_USER, MAX_PASSWORD, MIN_PASSWORD = 128, 256, 8
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
ADMIN_ROLES = ("dba", "system")


def add_auth_routes(app: web.Application, state_key: web.AppKey[ServerState]) -> None:
    async def install(app: web.Application) -> None:
        """Every password check of this server (login, Basic credentials) follows the login rules."""
        state = app[state_key]
        policy = state.auth.policy if state.auth.policy is not None else LoginPolicy()
        state.auth.install_logins(Logins(state.db, state.node, policy))

    app.on_startup.append(install)

    def logins(request: web.Request) -> tuple[ServerState, Logins]:
        state = request.app[state_key]
        lg = state.auth.logins
        if lg is None:  # install() runs at startup, before any request
            raise KalamError("INTERNAL_ERROR", "the login rules are not installed")
        return state, lg

    async def login(request: web.Request) -> web.Response:
        try:
            state, _ = logins(request)
            body = await _body(request, state, {"user", "username", "password"})
            user = body.get("user", body.get("username"))
            password = body.get("password")
            if not isinstance(user, str) or len(user) > MAX_USER:
                raise KalamError("INVALID_INPUT", f"missing field `user` (at most {MAX_USER} characters)")
            if not isinstance(password, str) or len(password) > MAX_PASSWORD:
                raise KalamError("INVALID_INPUT", f"missing field `password` (at most {MAX_PASSWORD} characters)")
            principal = await state.auth.verify_credentials(user, password, remote=request.remote)
            return await _tokens(request, state, principal.user_id, principal)
        except KalamError as err:
            if err.code in ("INVALID_CREDENTIALS", "ACCOUNT_LOCKED"):
                log.info("login failed (%s) from %s", err.code, request.remote)
            return _error(err)

    async def refresh(request: web.Request) -> web.Response:
        try:
            state, lg = logins(request)
            lg.admit("", request.remote)
            token = request.cookies.get(REFRESH_COOKIE) or _bearer(request)
            claims = state.auth.decode(token, "refresh")
            rec = elogins.user_record(state.db, str(claims["sub"]))
            if rec is None:
                raise _unauthorized("User no longer valid")
            if claims.get("role") != rec.role:
                raise _unauthorized("Token role does not match user role")
            state.auth.check_stamp(claims)
            principal = state.db.principal_for(rec.user_id)
            if principal is None:
                raise _unauthorized("User no longer valid")
            return await _tokens(request, state, rec.user_id, principal)
        except KalamError as err:
            return _error(err)

    async def logout(request: web.Request) -> web.Response:
        resp = responses.json_response({"message": "Logged out successfully"})
        for name in (AUTH_COOKIE, REFRESH_COOKIE):
            resp.set_cookie(name, "", path="/", httponly=True, samesite="Strict", secure=request.secure,
                            expires="Thu, 01 Jan 1970 00:00:00 GMT")
        return resp

    async def me(request: web.Request) -> web.Response:
        try:
            state, _ = logins(request)
            token = _bearer(request) if "Authorization" in request.headers else request.cookies.get(AUTH_COOKIE)
            if not token:
                raise KalamError("MISSING_AUTHORIZATION", "No auth token found")
            principal = state.auth.verify_token(token)
            rec = elogins.user_record(state.db, principal.user_id)
            if rec is None:
                raise _unauthorized("Invalid credentials")
            return responses.json_response({"user": _user_info(rec), "admin_ui_access": rec.role in ADMIN_ROLES})
        except KalamError as err:
            return _error(err)

    async def status(request: web.Request) -> web.Response:
        state, lg = logins(request)
        if not is_local_address(request.remote) and not lg.policy.allow_remote_setup:
            return _answer(403, "forbidden", "Setup status can only be checked from localhost")
        needs = elogins.root_needs_setup(state.db)
        return responses.json_response({"needs_setup": needs, "message": (
            "Server requires initial setup. Call POST /v1/api/auth/setup with user, password, root_password, "
            "and optional email." if needs else "Server is configured and ready.")})

    async def setup(request: web.Request) -> web.Response:
        try:
            state, lg = logins(request)
            lg.admit("", request.remote)
            if not is_local_address(request.remote) and not lg.policy.allow_remote_setup:
                return _answer(403, "forbidden", "Server setup can only be performed from localhost")
            body = await _body(request, state, {"user", "username", "password", "root_password", "email"})
            user = _text_field(body.get("user", body.get("username")), "user", MAX_USER)
            password = _text_field(body.get("password"), "password", MAX_PASSWORD)
            root_password = _text_field(body.get("root_password"), "root_password", MAX_PASSWORD)
            email = body.get("email")
            if email is not None and (not isinstance(email, str) or len(email) > 256):
                raise KalamError("INVALID_INPUT", "field `email` must be a string of at most 256 characters")
            if not elogins.root_needs_setup(state.db):
                return _answer(409, "already_configured", "Server has already been configured. Root password is set.")
            for label, value in (("DBA user password", password), ("Root password", root_password)):
                if len(value) < MIN_PASSWORD:
                    return _answer(400, "weak_password", f"{label}: Password must be at least {MIN_PASSWORD} "
                                   "characters long")
            if not USER_RE.match(user):
                return _answer(400, "invalid_user", "Invalid user value")
            if user == "root":
                return _answer(400, "invalid_user", "Cannot create a DBA user with user 'root'. Choose a different user.")
            if elogins.user_by_name(state.db, user) is not None:
                return _answer(409, "user_exists", f"User '{user}' already exists")
            loop = asyncio.get_running_loop()
            user_hash, root_hash = await asyncio.gather(loop.run_in_executor(None, hash_password, password),
                                                        loop.run_in_executor(None, hash_password, root_password))
            stmt = elogins.ServerSetup(user, email, user_hash=user_hash, root_hash=root_hash)
            command = state.db.to_command(Prepared("", [stmt], [], "default", ROOT, True), now_us=clock.now_us(),
                                          node_id=state.node.node_id)
            _, outcome = await state.node.submit(command)
            state.auth.users_changed()
            if outcome.error is not None:
                if "already been configured" in outcome.error.message:
                    return _answer(409, "already_configured", "Server has already been configured. Root password is set.")
                if "already exists" in outcome.error.message:
                    return _answer(409, "user_exists", f"User '{user}' already exists")
                raise outcome.error
            rec = elogins.user_by_name(state.db, user)
            if rec is None:
                raise KalamError("INTERNAL_ERROR", "the new dba user is missing after setup")
            log.info("server setup completed: root password set, dba user %r created", user)
            return responses.json_response({"user": _user_info(rec), "message": outcome.results[-1]["message"]})
        except KalamError as err:
            return _error(err)

    for path, method, handler in (("login", "POST", login), ("refresh", "POST", refresh),
                                  ("logout", "POST", logout), ("me", "GET", me), ("status", "GET", status),
                                  ("setup", "POST", setup)):
        app.router.add_route(method, f"{PREFIX}/{path}", handler)


async def _body(request: web.Request, state: ServerState, allowed: set[str]) -> dict:
    body = await read_json_body(request, state.max_body_bytes)
    if not isinstance(body, dict):
        raise KalamError("INVALID_INPUT", "Invalid JSON payload: expected an object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise KalamError("INVALID_INPUT", f"unknown field `{unknown[0]}`, expected one of {sorted(allowed)}")
    return body


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise KalamError("MISSING_AUTHORIZATION", "No refresh token found")
    if scheme.lower() != "bearer":
        raise _unauthorized("Authorization header must use Bearer token")
    if not token.strip():
        raise _unauthorized("Bearer token missing")
    return token.strip()


async def _tokens(request: web.Request, state: ServerState, user_id: str, principal: Principal) -> web.Response:
    """The login/refresh answer: both tokens, their expiries, the user, and the two cookies."""
    rec = elogins.user_record(state.db, user_id)
    if rec is None:  # root's convenience login without a row cannot happen; be explicit anyway
        raise _unauthorized("Invalid credentials")
    now = clock.time()  # the node's clock judges expiry too (kalamdb.node.clock)
    access, access_exp = state.auth.issue_token(principal, now=now)
    refresh_token, refresh_exp = state.auth.issue_token(principal, now=now, token_type="refresh")
    resp = responses.json_response({
        "user": _user_info(rec),
        "admin_ui_access": rec.role in ADMIN_ROLES,
        "expires_at": _rfc3339(access_exp),
        "access_token": access,
        "refresh_token": refresh_token,
        "refresh_expires_at": _rfc3339(refresh_exp),
        "token_type": "Bearer",  # extension (kept from earlier kalamdb answers)
        "expires_in": int(access_exp - now),
    })
    for name, value, exp in ((AUTH_COOKIE, access, access_exp), (REFRESH_COOKIE, refresh_token, refresh_exp)):
        resp.set_cookie(name, value, path="/", httponly=True, samesite="Strict", secure=request.secure,
                        expires=formatdate(exp, usegmt=True))
    return resp


def _text_field(value: Any, name: str, max_len: int) -> str:
    """A required string field of a JSON body, at most `max_len` characters."""
    if not isinstance(value, str) or len(value) > max_len:
        raise KalamError("INVALID_INPUT", f"missing or too long field `{name}`")
    return value


def _user_info(rec: elogins.UserRecord) -> dict:
    return {"id": rec.user_id, "role": rec.role, "email": rec.email,
            "created_at": _rfc3339(rec.created_at / 1e6), "updated_at": _rfc3339(rec.updated_at / 1e6)}


def _rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat()


def _unauthorized(message: str) -> KalamError:
    return KalamError("INVALID_TOKEN", message)


def _answer(status: int, error: str, message: str, headers: dict | None = None) -> web.Response:
    resp = responses.json_response({"error": error, "message": message}, status)
    if headers:
        resp.headers.update(headers)
    return resp


_REDACTED = ("INVALID_CREDENTIALS", "TOKEN_EXPIRED")


def _error(err: KalamError) -> web.Response:
    """Upstream's auth errors: sensitive failures all read 'Invalid credentials'."""
    if isinstance(err, RetryLater):
        return _answer(429, "rate_limited", err.message, {"Retry-After": str(err.retry_after)})
    if err.code == "ACCOUNT_LOCKED":
        return _answer(401, "account_locked", err.message)
    if err.code == "SETUP_REQUIRED":
        return _answer(428, "setup_required", err.message)
    if err.code in _REDACTED or (err.code == "INVALID_TOKEN" and err.message.startswith("Invalid token")):
        return _answer(401, "unauthorized", "Invalid credentials")
    if err.code in ("INVALID_TOKEN", "MISSING_AUTHORIZATION"):
        return _answer(401, "unauthorized", err.message)
    if err.code in ("INVALID_INPUT", "PAYLOAD_TOO_LARGE"):
        return _answer(err.status, "bad_request", err.message)
    log.error("auth request failed: %s", err)
    return _answer(500, "internal_error", "Authentication failed")


__all__ = ["REFRESH_FACTOR", "add_auth_routes"]
