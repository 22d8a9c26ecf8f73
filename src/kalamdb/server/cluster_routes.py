"""Cluster endpoints: health, the replication watch, and the state digest.

`GET /v1/api/cluster/wait?index=N&timeout_ms=T` answers as soon as this node has applied index N
(or at the deadline, with the index it reached): the test kit's replication barrier stands on it,
instead of sleeping or polling. Its `applied_at_monotonic_s` is when this node applied N, on the
host's monotonic clock (node/apply_times.py): the bench's replication lag is made of those. Like
upstream's health endpoint these answer localhost, and otherwise only an authenticated dba/system
caller.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from kalamdb import __version__
from kalamdb.errors import KalamError
from kalamdb.node.cluster_view import AUTH_HEADER, NODE_REPORT_PATH, HasClusterView
from kalamdb.server import responses
from kalamdb.server.auth import is_local_address

if TYPE_CHECKING:
    from kalamdb.server.app import ServerState

CLUSTER_HEALTH_PATH = "/v1/api/cluster/health"
WAIT_PATH = "/v1/api/cluster/wait"
DIGEST_PATH = "/v1/api/cluster/digest"
MAX_WAIT_MS = 60_000


def add_cluster_routes(app: web.Application, state_key: web.AppKey[ServerState]) -> None:
    async def guard(request: web.Request) -> ServerState:
        state = request.app[state_key]
        if is_local_address(request.remote):
            return state
        principal = await state.auth.authenticate(request.headers.get("Authorization"), remote=request.remote)
        if principal.role not in ("dba", "system"):
            raise KalamError("PERMISSION_DENIED", "cluster endpoints need role dba or system")
        return state

    async def health(request: web.Request) -> web.Response:
        try:
            state = await guard(request)
        except KalamError as err:
            return responses.error(err)
        body = state.node.health()
        body["version"] = __version__
        return responses.json_response(body)

    async def wait(request: web.Request) -> web.Response:
        try:
            state = await guard(request)
            index = _int_param(request, "index", 0, 1 << 62)
            timeout_ms = _int_param(request, "timeout_ms", 0, MAX_WAIT_MS, default=10_000)
        except KalamError as err:
            return responses.error(err)
        node = state.node
        reached = await node.wait_applied(index, timeout_ms / 1000)
        return responses.json_response({"applied_index": node.applied_index, "reached": bool(reached),
                                        "index": index, "node_id": node.node_id,
                                        "applied_at_monotonic_s": node.applied_at(index) if reached else None})

    async def digest(request: web.Request) -> web.Response:
        try:
            state = await guard(request)
        except KalamError as err:
            return responses.error(err)
        # digest and applied index from one consistent read of the state machine
        applied, value = await asyncio.get_running_loop().run_in_executor(None, state.db.digest_with_index)
        return responses.json_response({"node_id": state.node.node_id, "applied_index": applied, "digest": value})

    app.router.add_get(CLUSTER_HEALTH_PATH, health)
    app.router.add_get(WAIT_PATH, wait)
    app.router.add_get(DIGEST_PATH, digest)


def add_node_report_route(app: web.Application, state_key: web.AppKey[ServerState]) -> None:
    """`GET /v1/api/cluster/node-report`: this node's own rows of system.cluster, for cluster members
    only (node/cluster_view.py says what a report is and how the member token is made)."""

    async def node_report(request: web.Request) -> web.Response:
        node = request.app[state_key].node
        if not isinstance(node, HasClusterView):
            return responses.error(KalamError("NOT_FOUND", "this server is not a cluster node"))
        view = node.cluster_view
        if not view.is_member(request.headers.get(AUTH_HEADER)):
            return responses.error(KalamError(
                "PERMISSION_DENIED", f"{NODE_REPORT_PATH} answers cluster members only ({AUTH_HEADER} header)"))
        return responses.json_response(view.own_report())

    app.router.add_get(NODE_REPORT_PATH, node_report)


def _int_param(request: web.Request, name: str, lo: int, hi: int, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise KalamError("INVALID_PARAMETER", f"query parameter '{name}' is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise KalamError("INVALID_PARAMETER", f"query parameter '{name}' must be an integer, got '{raw}'") from None
    if not lo <= value <= hi:
        raise KalamError("INVALID_PARAMETER", f"query parameter '{name}' must be in [{lo}, {hi}]")
    return value
