"""`POST /v1/api/sql`: check the request, authenticate, prepare, then read locally or write via the node.

Validation of the request's shape happens here (the body is JSON, fields have the right types);
validation of the SQL itself belongs to the engine's `prepare`, which raises the documented codes.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from kalamdb.engine.types import public_error
from kalamdb.errors import KalamError
from kalamdb.node.clock import clock
from kalamdb.server import responses
from kalamdb.server.admission import Overloaded, SqlWorkers
from kalamdb.server.fast_path import CheapStatements
from kalamdb.server.metrics import SqlMetrics
from kalamdb.sql import statements as st

if TYPE_CHECKING:
    from kalamdb.engine import Database, Prepared, Principal
    from kalamdb.live.service import LiveService
    from kalamdb.node.api import Node
    from kalamdb.server.auth import Authenticator
    from kalamdb.server.forward import Forwarder
from kalamdb.server.unsafe_txn import UnsafeTxn
from kalamdb.sql.statements import KillLiveQuery

log = logging.getLogger("kalamdb.sql")

_PASSWORD_LITERAL = re.compile(r"(PASSWORD\s*)'(?:[^']|'')*'?", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide password literals (CREATE/ALTER USER ... PASSWORD '...') before text reaches a log."""
    return _PASSWORD_LITERAL.sub(r"\1'***'", text)


class HttpRequest(Protocol):
    """What the SQL endpoint reads of an HTTP request: aiohttp's `web.Request`, or the SQL lane's
    `LaneRequest` (server/sql_lane.py), which serves the same endpoint without aiohttp's machinery."""

    @property
    def headers(self) -> Any: ...  # a mapping whose .get(name) ignores case

    @property
    def remote(self) -> str | None: ...

    @property
    def path(self) -> str: ...

    @property
    def content_length(self) -> int | None: ...

    async def read(self) -> bytes: ...


@dataclass(slots=True)
class SqlRequest:
    sql: str
    params: list | None
    namespace_id: str | None
    consistency: str | None
    min_applied_index: int | None


async def read_json_body(request: HttpRequest, max_body_bytes: int) -> Any:
    """The parsed JSON body; 413 before reading anything when the declared length is too big."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise _too_large(length, max_body_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, max_body_bytes) from None
    if len(raw) > max_body_bytes:
        raise _too_large(len(raw), max_body_bytes)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise KalamError("INVALID_INPUT", f"Invalid JSON payload: {exc}") from None


def _too_large(length: int | None, limit: int) -> KalamError:
    size = f"{length} bytes" if length is not None else "the request body"
    return KalamError("PAYLOAD_TOO_LARGE", f"Request body too large: {size} exceeds the limit of {limit} "
                      "bytes (limits.max_body_bytes)")


def parse_sql_request(body: Any) -> SqlRequest:
    if not isinstance(body, dict):
        raise KalamError("INVALID_INPUT", "Invalid JSON payload: expected an object like {\"sql\": \"...\"}")
    sql = body.get("sql")
    if sql is None:
        raise KalamError("INVALID_INPUT", "Missing field 'sql'")
    if not isinstance(sql, str):
        raise KalamError("INVALID_INPUT", f"Field 'sql' must be a string, got {type(sql).__name__}")
    params = body.get("params")
    if params is not None and not isinstance(params, list):
        raise KalamError("INVALID_INPUT", f"Field 'params' must be an array, got {type(params).__name__}")
    namespace = body.get("namespace_id")
    if namespace is not None and not isinstance(namespace, str):
        raise KalamError("INVALID_INPUT", "Field 'namespace_id' must be a string")
    consistency = body.get("consistency")
    if consistency is not None and not isinstance(consistency, str):
        raise KalamError("INVALID_INPUT", "Field 'consistency' must be a string")
    min_index = body.get("min_applied_index")
    if min_index is not None and (isinstance(min_index, bool) or not isinstance(min_index, int) or min_index < 0):
        raise KalamError("INVALID_INPUT", "Field 'min_applied_index' must be a non-negative integer")
    return SqlRequest(sql, params, namespace or None, consistency.lower() if consistency else None, min_index)


_USER_STATEMENTS = (st.CreateUser, st.AlterUser, st.DropUser)


def touches_users(prepared: Prepared, sql: str | None = None) -> bool:
    """Whether a write may have changed users/passwords/roles (cached credentials must go).
    Decided on the parsed statements, EXECUTE AS unwrapped."""
    for statement in prepared.statements:
        while isinstance(statement, st.ExecuteAs):
            statement = statement.inner
        if isinstance(statement, _USER_STATEMENTS):
            return True
    return False


class SqlHandler:
    """The endpoint; holds the collaborators so the hot path does no lookups."""

    def __init__(self, *, db: Database, node: Node, authenticator: Authenticator, max_body_bytes: int,
                 workers: SqlWorkers):
        self.db = db
        self.node = node
        self.auth = authenticator
        self.max_body_bytes = max_body_bytes
        self.workers = workers
        self.cheap = CheapStatements()
        self.forwarder: Forwarder | None = None  # cluster mode: CLUSTER statements to the leader
        self.live: LiveService | None = None  # the node's live queries (kalamdb.live): KILL LIVE QUERY runs here
        self.metrics = SqlMetrics()
        self.unsafe_txn = UnsafeTxn.from_env()  # None unless a checker test plants a transaction bug

    async def __call__(self, request: HttpRequest) -> web.Response:
        started = time.perf_counter()
        response = await self._answer(request, started)
        self.metrics.observe(response.status, time.perf_counter() - started)
        return response

    async def _answer(self, request: HttpRequest, started: float) -> web.Response:
        try:
            length = request.content_length
            if length is not None and length > self.max_body_bytes:
                raise _too_large(length, self.max_body_bytes)
            principal = await self.auth.authenticate(request.headers.get("Authorization"), remote=request.remote)
            with self.workers.admit(principal.user_id):
                req = parse_sql_request(await read_json_body(request, self.max_body_bytes))
                results, raft_index = await self.run(req, principal)
        except KalamError as err:
            if err.code == "NOT_LEADER" and self.forwarder is not None:
                return await self.forwarder.forward(request, err, (time.perf_counter() - started) * 1000.0)
            response = responses.error(err, (time.perf_counter() - started) * 1000.0)
            if isinstance(err, Overloaded):
                response.headers["Retry-After"] = str(err.retry_after_s)
            return response
        except Exception as exc:  # noqa: BLE001 - one broken request must not take the server down
            detail = redact(f"{type(exc).__name__}: {exc}")
            log.error("internal error while serving /v1/api/sql: %s\n%s", detail, redact(traceback.format_exc()))
            internal = KalamError("INTERNAL_ERROR", f"Internal error: {detail}")
            return responses.error(internal, (time.perf_counter() - started) * 1000.0)
        return responses.success(results, (time.perf_counter() - started) * 1000.0, raft_index=raft_index)

    async def run(self, req: SqlRequest, principal: Principal) -> tuple[list, int | None]:
        try:
            return await self._run(req, principal)
        except KalamError as err:
            raise public_error(err, principal) from None  # upstream's redaction for non-admins

    async def _run(self, req: SqlRequest, principal: Principal) -> tuple[list, int | None]:
        """Prepare (and for a write, build the command) on a worker, or right here for a statement
        text known to be cheap (server/fast_path.py); read after the node's consistency barrier,
        on a worker; write through the node (Raft)."""
        user = principal.user_id
        now_us = clock.now_us()
        cheap = self.cheap
        if cheap.known(req.sql):
            t0 = time.perf_counter()  # not thread_time: see server/fast_path.py
            prepared, command = self._prepare(req, principal, now_us)
            cheap.inline += 1
            if time.perf_counter() - t0 > cheap.max_inline_wall_s:
                cheap.forget(req.sql)
        else:
            prepared, command, cpu_s = await self.workers.run(user, self._prepare_timed, req, principal, now_us)
            cheap.offloaded += 1
            if not touches_users(prepared):
                cheap.learn(req.sql, cpu_s)
        if any(isinstance(s, KillLiveQuery) for s in prepared.statements):
            return _kill_live_statement(prepared.statements, principal, self.live), None
        if prepared.cluster_op is not None:
            return await self.node.cluster(prepared.cluster_op, principal), None
        if self.unsafe_txn is not None and self.unsafe_txn.applies(prepared):
            return await self.unsafe_txn.run(self.db, self.node, prepared)
        if command is None:
            await self.node.read_barrier(prepared, consistency=req.consistency,
                                         min_applied_index=req.min_applied_index)
            return await self.workers.run(user, self.db.execute_read, prepared), None
        index, outcome = await self.node.submit(command)
        if touches_users(prepared):
            self.auth.users_changed()
        if outcome.error is not None:
            raise outcome.error
        return outcome.results, index

    def _prepare_timed(self, req: SqlRequest, principal: Principal, now_us: int) -> tuple[Prepared, bytes | None, float]:
        t0 = time.thread_time()
        prepared, command = self._prepare(req, principal, now_us)
        return prepared, command, time.thread_time() - t0

    def _prepare(self, req: SqlRequest, principal: Principal, now_us: int) -> tuple[Prepared, bytes | None]:
        """(worker thread) parse and check the SQL; a write's command with its fixed values (password
        hashing, tens of ms with argon2, happens here too)."""
        prepared = self.db.prepare(req.sql, req.params, req.namespace_id, principal)
        if (prepared.cluster_op is not None or not prepared.is_write
                or any(isinstance(s, KillLiveQuery) for s in prepared.statements)):
            return prepared, None
        return prepared, self.db.to_command(prepared, now_us=now_us, node_id=self.node.node_id)


def _kill_live_statement(statements: list, principal: Principal, live: LiveService | None) -> list[dict]:
    """KILL LIVE QUERY runs on the node that received it (live queries are node-local)."""
    if len(statements) != 1:
        raise KalamError("INVALID_SQL", "KILL LIVE QUERY must be sent alone")
    if live is None:
        raise KalamError("INVALID_SQL", "This server does not serve live queries")
    return [live.kill(statements[0].live_id, principal)]
