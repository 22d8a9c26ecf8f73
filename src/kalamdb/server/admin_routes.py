"""Admin endpoints: read and set a node's disk failpoints at run time (fault-injection tests).

`GET /v1/api/admin/failpoints` -> `{"node_id", "failpoints": {name: action}, "points": [...]}`.
`POST /v1/api/admin/failpoints` with `{"failpoints": {"log.fsync": "1*eio", "state.apply": "off"}}`
(and/or `"clear": true` first) changes them; every entry is validated before any is applied, so a bad
request changes nothing. Unlike the cluster endpoints there is no localhost exemption: these can
break a node on purpose, so the caller must authenticate as role dba or system (root is system).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from kalamdb.errors import KalamError
from kalamdb.server import responses
from kalamdb.server.sql_endpoint import read_json_body

if TYPE_CHECKING:
    from kalamdb.node.failpoints import NodeFailpoints
    from kalamdb.server.app import ServerState

FAILPOINTS_PATH = "/v1/api/admin/failpoints"


def add_admin_routes(app: web.Application, state_key: web.AppKey[ServerState]) -> None:
    async def guard(request: web.Request) -> tuple[ServerState, NodeFailpoints]:
        state = request.app[state_key]
        principal = await state.auth.authenticate(request.headers.get("Authorization"), remote=request.remote)
        if principal.role.lower() not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", "admin endpoints need role dba or system")
        failpoints = state.node.failpoints
        if failpoints is None:
            raise KalamError("INVALID_INPUT", "this node has no failpoints: they live in the Raft log storage "
                             "of a cluster node (start with KALAMDB_NODE_ID / KALAMDB_CLUSTER_PEERS)")
        return state, failpoints

    def describe(state: ServerState, failpoints: NodeFailpoints) -> dict:
        return {"node_id": state.node.node_id, "failpoints": failpoints.active(), "points": list(failpoints.POINTS)}

    async def get(request: web.Request) -> web.Response:
        try:
            state, failpoints = await guard(request)
        except KalamError as err:
            return responses.error(err)
        return responses.json_response(describe(state, failpoints))

    async def post(request: web.Request) -> web.Response:
        try:
            state, failpoints = await guard(request)
            body = await read_json_body(request, state.max_body_bytes)
            changes = _parse_changes(body)
            _validate(type(failpoints), changes)
            if body.get("clear"):
                failpoints.clear()
            for name, spec in changes.items():
                failpoints.set(name, spec)
        except KalamError as err:
            return responses.error(err)
        return responses.json_response(describe(state, failpoints))

    app.router.add_get(FAILPOINTS_PATH, get)
    app.router.add_post(FAILPOINTS_PATH, post)


def _parse_changes(body: Any) -> dict[str, str]:
    if not isinstance(body, dict) or not set(body) <= {"failpoints", "clear"}:
        raise KalamError("INVALID_INPUT", 'expected {"failpoints": {"<point>": "<action>|off"}, "clear": bool}')
    if not isinstance(body.get("clear", False), bool):
        raise KalamError("INVALID_INPUT", "'clear' must be true or false")
    changes = body.get("failpoints", {})
    if not isinstance(changes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in changes.items()):
        raise KalamError("INVALID_INPUT", "'failpoints' must map point names to action strings")
    return changes


def _validate(kind: type, changes: dict[str, str]) -> None:
    """Apply the changes to a scratch instance first: a bad entry fails the whole request."""
    scratch = kind()
    for name, spec in changes.items():
        try:
            scratch.set(name, spec)
        except ValueError as exc:
            raise KalamError("INVALID_INPUT", f"failpoint {name}: {exc}") from None
