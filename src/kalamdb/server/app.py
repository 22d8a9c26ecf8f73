"""The aiohttp application: routes for SQL, login and health, wired to a Node and an Authenticator."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from kalamdb import __version__
from kalamdb.errors import KalamError
from kalamdb.live.endpoint import LIVE_KEY, add_live_routes
from kalamdb.server import metrics, responses
from kalamdb.server.admin_routes import add_admin_routes
from kalamdb.server.admission import SqlWorkers
from kalamdb.server.auth import Authenticator, is_local_address
from kalamdb.server.auth_routes import add_auth_routes
from kalamdb.server.cluster_routes import add_cluster_routes, add_node_report_route
from kalamdb.server.sql_endpoint import SqlHandler
from kalamdb.server.topic_routes import add_topic_routes

if TYPE_CHECKING:
    from kalamdb.engine import Database
    from kalamdb.node.api import Node
    from kalamdb.server.sql_lane import SqlLane

log = logging.getLogger("kalamdb.server")

SQL_PATH = "/v1/api/sql"
LOGIN_PATH = "/v1/api/auth/login"
HEALTH_PATHS = ("/v1/api/healthcheck", "/health")
METRICS_PATH = "/metrics"

STATE_KEY: web.AppKey[ServerState] = web.AppKey("kalamdb_state")


class ServerState:
    """Everything a request handler may need; one per server process."""

    def __init__(self, *, db: Database, node: Node, authenticator: Authenticator, max_body_bytes: int,
                 workers: SqlWorkers | None = None):
        self.db = db
        self.node = node
        self.auth = authenticator
        self.max_body_bytes = max_body_bytes
        self.workers = workers or SqlWorkers()
        self.sql = SqlHandler(db=db, node=node, authenticator=authenticator, max_body_bytes=max_body_bytes,
                              workers=self.workers)
        self.lane: SqlLane | None = None  # set by the runtime when the SQL lane serves this port


def create_app(state: ServerState) -> web.Application:
    # aiohttp's own body limit sits above ours so that our handler can answer the documented 413 JSON
    app = web.Application(client_max_size=state.max_body_bytes + 1)
    app[STATE_KEY] = state
    app.router.add_post(SQL_PATH, state.sql)
    add_auth_routes(app, STATE_KEY)
    for path in HEALTH_PATHS:
        app.router.add_get(path, _health)
    app.router.add_get(METRICS_PATH, _metrics)
    add_cluster_routes(app, STATE_KEY)
    add_admin_routes(app, STATE_KEY)
    add_topic_routes(app, STATE_KEY)
    add_node_report_route(app, STATE_KEY)
    # GET /v1/ws and system.live; KILL LIVE QUERY, sent to /v1/api/sql, runs on the same service
    state.sql.live = add_live_routes(app, state.db, state.node.node_id, state.auth).service
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def _health(request: web.Request) -> web.Response:
    if not is_local_address(request.remote):
        return responses.error(KalamError("PERMISSION_DENIED", "Health check is answered only to localhost"))
    return responses.json_response({"status": "healthy", "version": __version__, "api_version": "v1"})


async def _metrics(request: web.Request) -> web.Response:
    if not is_local_address(request.remote):
        return responses.error(KalamError("PERMISSION_DENIED", "Metrics are answered only to localhost"))
    state = request.app[STATE_KEY]
    cheap = state.sql.cheap
    stats = {**state.node.stats(), **state.workers.stats(), "sql_prepared_inline_total": cheap.inline,
             "sql_prepared_on_workers_total": cheap.offloaded}
    if state.lane is not None:
        stats["http_sql_lane_requests_total"] = state.lane.served
        stats["http_sql_lane_handovers_total"] = state.lane.handed_over
    text = metrics.render(state.sql.metrics, stats, applied_index=state.node.applied_index)
    return web.Response(text=text + request.app[LIVE_KEY].metrics_text(), content_type="text/plain")


async def _not_found(request: web.Request) -> web.Response:
    known = {SQL_PATH: "POST", LOGIN_PATH: "POST", METRICS_PATH: "GET", **{p: "GET" for p in HEALTH_PATHS}}
    if request.path in known:
        return responses.error(KalamError(
            "INVALID_INPUT", f"{request.method} is not allowed on {request.path}; use {known[request.path]}",
            status=405))
    return responses.error(KalamError("NOT_FOUND", f"No such endpoint: {request.method} {request.path}"))
