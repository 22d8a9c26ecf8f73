"""The API's JSON envelopes (success and error), encoded with orjson.

Every answer the server gives — including failures found before any SQL runs — has the documented
shape, so a client never has to guess whether a body is JSON.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from kalamdb.errors import KalamError, RetryLater

# passed as headers (copied by aiohttp) rather than content_type=, which re-parses it on every response
_JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(body: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=_JSON_HEADERS)


def success(results: list, took_ms: float, *, raft_index: int | None = None) -> web.Response:
    body: dict = {"status": "success", "results": results, "took": round(took_ms, 3)}
    if raft_index is not None:
        body["raft_index"] = raft_index
    return json_response(body)


def error(err: KalamError, took_ms: float = 0.0) -> web.Response:
    body = {"status": "error", "results": [], "took": round(took_ms, 3), "error": err.to_dict()}
    resp = json_response(body, err.status)
    if isinstance(err, RetryLater):
        resp.headers["Retry-After"] = str(err.retry_after)
    return resp
