"""Upstream KalamDB's topic endpoints (roles service, dba, system):

`POST /v1/api/topics/consume {"topic_id", "group_id", "start": "Latest"|"Earliest"|{"Offset": n},
"limit": 100, "partition_id": 0}` -> `{"messages": [{topic_id, partition_id, offset, payload
(base64), key, timestamp_ms, user?, op: "Insert"|"Update"|"Delete"}], "next_offset", "has_more"}`.
It commits nothing: the messages are claimed on this node (engine/topics.py ClaimBook) until acked
or for 60 s. A linearizable read, so it works on any node of a cluster.

`POST /v1/api/topics/ack {"topic_id", "group_id", "partition_id": 0, "upto_offset"}` ->
`{"success": true, "acknowledged_offset"}`: a replicated write (any node; followers hand it to the
leader inside the cluster).

Errors have upstream's shape `{"error": message, "code": "FORBIDDEN"|"NOT_FOUND"|...}`.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kalamdb.engine.topics import CONSUMER_ROLES, MAX_CONSUME_LIMIT, missing_topic
from kalamdb.engine.types import Prepared
from kalamdb.errors import KalamError
from kalamdb.node.clock import clock
from kalamdb.server import responses
from kalamdb.server.sql_endpoint import read_json_body
from kalamdb.sql.topics import GROUP_RE, MAX_OFFSET, Ack, Consume

if TYPE_CHECKING:
    from kalamdb.engine import Principal
    from kalamdb.server.app import ServerState

log = logging.getLogger("kalamdb.topics")

CONSUME_PATH = "/v1/api/topics/consume"
ACK_PATH = "/v1/api/topics/ack"


def add_topic_routes(app: web.Application, state_key: web.AppKey[ServerState]) -> None:
    async def consume(request: web.Request) -> web.Response:
        try:
            state, principal, body = await _admit(request, state_key, "Topic consumption")
            topic, group = _topic_and_group(request, body)
            position = _start(body.get("start", "Latest"))
            limit = _uint(body, "limit", 100, MAX_CONSUME_LIMIT)
            partition = _uint(body, "partition_id", 0, 1 << 31)
            if limit == 0:
                return responses.json_response({"messages": [], "next_offset": 0, "has_more": False})
            stmt = Consume(topic, group, position, limit, partition, claims=True)
            prepared = Prepared("", [stmt], [], "default", principal, False)
            with state.workers.admit(principal.user_id):  # SQL work: on the workers (server/admission.py)
                await state.node.read_barrier(prepared)
                result = (await state.workers.run(principal.user_id, state.db.execute_read, prepared))[0]
        except KalamError as err:
            return _error(err, body_topic(request))
        messages = []
        for m in result["topic_messages"]:
            m = dict(m)
            m["payload"] = base64.b64encode(m["payload"]).decode()
            messages.append(m)
        return responses.json_response({"messages": messages, "next_offset": result["next_offset"],
                                        "has_more": result["has_more"]})

    async def ack(request: web.Request) -> web.Response:
        try:
            state, principal, body = await _admit(request, state_key, "Topic acknowledgment")
            topic, group = _topic_and_group(request, body)
            partition = _uint(body, "partition_id", 0, 1 << 31)
            if "upto_offset" not in body:
                raise KalamError("INVALID_INPUT", "missing field `upto_offset`")
            offset = _uint(body, "upto_offset", 0, MAX_OFFSET)
            prepared = Prepared("", [Ack(topic, group, partition, offset)], [], "default", principal, True)
            command = state.db.to_command(prepared, now_us=clock.now_us(), node_id=state.node.node_id)
            _, outcome = await state.node.submit(command)
            if outcome.error is not None:
                raise outcome.error
        except KalamError as err:
            return _error(err, body_topic(request))
        return responses.json_response({"success": True, "acknowledged_offset": offset})

    app.router.add_post(CONSUME_PATH, consume)
    app.router.add_post(ACK_PATH, ack)


async def _admit(request: web.Request, state_key: web.AppKey[ServerState], what: str
                 ) -> tuple[ServerState, Principal, dict]:
    state = request.app[state_key]
    principal = await state.auth.authenticate(request.headers.get("Authorization"), remote=request.remote)
    if principal.role.lower() not in CONSUMER_ROLES:
        raise KalamError("PERMISSION_DENIED", f"{what} requires service, dba, or system role")
    body = await read_json_body(request, state.max_body_bytes)
    if not isinstance(body, dict):
        raise KalamError("INVALID_INPUT", "Invalid JSON payload: expected an object")
    return state, principal, body


def _topic_and_group(request: web.Request, body: dict) -> tuple[str, str]:
    topic, group = body.get("topic_id"), body.get("group_id")
    if not isinstance(topic, str) or not topic or len(topic) > 300:
        raise KalamError("INVALID_INPUT", "missing field `topic_id` (a topic name like 'ns.topic')")
    if not isinstance(group, str) or not GROUP_RE.match(group):
        raise KalamError("INVALID_INPUT", "missing or invalid field `group_id` (1-128 letters, digits or _ . : @ -)")
    request[_TOPIC_KEY] = topic.lower()
    return topic.lower(), group


def _start(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("latest", "earliest"):
        return value.lower()
    if isinstance(value, dict):
        n = value.get("Offset", value.get("offset"))
        if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_OFFSET:
            return n
        raise KalamError("INVALID_INPUT", "Offset must be a positive integer")
    raise KalamError("INVALID_INPUT", "Expected string ('Latest', 'Earliest') or object {'Offset': n}")


def _uint(body: dict, name: str, default: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise KalamError("INVALID_INPUT", f"field `{name}` must be an integer from 0 to {high}")
    return value


_TOPIC_KEY = "kalamdb_topic"
_CODES = {"PERMISSION_DENIED": "FORBIDDEN", "NOT_FOUND": "NOT_FOUND", "INVALID_INPUT": "INVALID_INPUT",
          "SQL_EXECUTION_ERROR": "INVALID_INPUT"}


def body_topic(request: web.Request) -> str | None:
    """The topic the request named (for a 404), once its body was read."""
    return request.get(_TOPIC_KEY)


def _error(err: KalamError, topic: str | None = None) -> web.Response:
    if err.status in (401, 429, 503):  # authentication, throttling, cluster: the API's usual shape
        return responses.error(err)
    if topic is not None and err.message.endswith(missing_topic(topic)):
        return responses.json_response({"error": missing_topic(topic), "code": "NOT_FOUND"}, 404)
    code = _CODES.get(err.code, "INTERNAL_ERROR")
    text = err.message.split(" failed: ", 1)[1] if err.message.startswith("Statement ") else err.message
    status = {"FORBIDDEN": 403, "NOT_FOUND": 404, "INVALID_INPUT": 400}.get(code, 500)
    if status == 500:
        log.error("topic request failed: %s", err)
    return responses.json_response({"error": text, "code": code}, status)
