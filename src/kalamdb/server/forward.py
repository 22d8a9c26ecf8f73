"""Forwarding a request from a follower to the leader, with the caller's credentials.

The leader's status and body are passed back unchanged. A forwarded request carries a header
naming the node that forwarded it; a node never forwards such a request again, so forwarding
cannot loop even while two nodes briefly disagree about who leads.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from kalamdb.errors import KalamError
from kalamdb.server import responses

log = logging.getLogger("kalamdb.server.forward")

FORWARDED_HEADER = "X-KalamDB-Forwarded-By"


class Forwarder:
    def __init__(self, node_id: int, timeout_s: float):
        self.node_id = node_id
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _sessions(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def forward(self, request: web.Request, err: KalamError, took_ms: float) -> web.Response:
        target = getattr(err, "leader_api", None)
        if request.headers.get(FORWARDED_HEADER) or not target:
            # Already forwarded once (the leader we were sent to no longer leads): answer, don't loop.
            return responses.error(err, took_ms)
        body = await request.read()
        headers = {"Content-Type": "application/json", FORWARDED_HEADER: str(self.node_id)}
        auth = request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        sent = False
        try:
            async with self._sessions().post(target + request.path, data=body, headers=headers) as resp:
                sent = True
                data = await resp.read()
                return web.Response(body=data, status=resp.status, content_type="application/json")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Connection refused before sending: definite. Lost after sending: the leader may have
            # applied it, so the caller must treat it as indefinite.
            detail = ("indefinite: the write may or may not have been applied" if sent or
                      not isinstance(exc, aiohttp.ClientConnectorError)
                      else "definite: the write was not applied")
            log.info("forwarding to leader %s failed: %r", target, exc)
            return responses.error(KalamError(
                "FORWARD_FAILED", f"node {self.node_id} could not forward the request to the leader at "
                f"{target}: {type(exc).__name__}", status=503, details=detail), took_ms)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
