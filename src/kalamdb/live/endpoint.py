"""`GET /v1/ws`: the WebSocket endpoint of live queries (upstream's kalamdb-api ws/ handler).

A connection authenticates with a JWT, either on the upgrade (`Authorization: Bearer <jwt>`, then
`auth_success` is the first frame) or with an `authenticate` message within 3 seconds. Messages are
handled one at a time, in order. One sweeper task per node enforces, for every connection, the
authentication timeout, the heartbeat timeout (no inbound frame for 10 s: close 1000 "Heartbeat
timeout"; the server never pings, clients send `{"type":"ping"}`), and ends connections whose token
expired or whose user was dropped or changed role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import jwt
from aiohttp import WSMsgType, web

from kalamdb.errors import KalamError
from kalamdb.live import protocol as p
from kalamdb.live.connection import LiveConnection
from kalamdb.live.service import LiveService
from kalamdb.node.clock import clock

if TYPE_CHECKING:
    from kalamdb.engine import Database, Principal

log = logging.getLogger("kalamdb.live")

WS_PATH = "/v1/ws"
SWEEP_EVERY_S = 0.5
# aiohttp refuses (close 1009) frames above this; between MAX_MESSAGE_BYTES and it we answer
# MESSAGE_TOO_LARGE as upstream does and keep the connection
RECEIVE_LIMIT = 4 * p.MAX_MESSAGE_BYTES


class TokenVerifier(Protocol):
    """What live queries need of the server's authenticator (server/auth.py): a JWT checked and
    turned into the principal it names, or a KalamError."""

    def verify_token(self, token: str) -> Principal: ...


class LiveEndpoint:
    """The route handler and the sweeper; one per server process."""

    def __init__(self, service: LiveService, authenticator: TokenVerifier,
                 users_version: Callable[[], object] | None = None):
        self.service = service
        self.auth = authenticator
        self._users_version = users_version  # () -> counter the storage bumps when users change
        self._seen_users = users_version() if users_version is not None else None
        self._sweeper: asyncio.Task | None = None
        self.closing = False

    async def start(self) -> None:
        await self.service.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="live-sweeper")

    async def close(self) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        await self.service.close()

    # ------------------------------------------------------------------ the handler
    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self.closing:
            return web.Response(status=503, text="Server is shutting down")
        ws = web.WebSocketResponse(max_msg_size=RECEIVE_LIMIT, autoping=True, compress=False)
        if not ws.can_prepare(request).ok:
            return web.json_response({"status": "error", "error": {
                "code": "INVALID_INPUT", "message": "GET /v1/ws needs a WebSocket upgrade (Connection: Upgrade, "
                "Upgrade: websocket)"}}, status=400)
        await ws.prepare(request)
        conn = LiveConnection(ws, remote=request.remote, compress=p.compression_enabled(request.query_string),
                              transport=request.transport)
        self.service.add_connection(conn)
        try:
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                proto = p.protocol_from_query(dict(request.query))
                if not await self._authenticate(conn, header[len("Bearer "):].strip(), proto):
                    return ws
            await self._read_loop(conn)
        finally:
            self.service.remove_connection(conn)
            conn.close(p.CLOSE_NORMAL, "")
            await conn.wait_closed()
        return ws

    async def _read_loop(self, conn: LiveConnection) -> None:
        ws = conn.ws
        async for msg in ws:
            if conn.closed:
                break
            conn.touch()
            if msg.type is WSMsgType.TEXT:
                data: str = msg.data
                if len(data) > p.MAX_MESSAGE_BYTES:
                    conn.send_message(p.error("protocol", p.MESSAGE_TOO_LARGE,
                                              f"Message exceeds maximum size of {p.MAX_MESSAGE_BYTES} bytes"))
                    continue
                if not conn.allow_message():
                    conn.send_message(p.error("rate_limit", p.RATE_LIMIT_EXCEEDED, "Too many messages"))
                    continue
                try:
                    message = p.decode_text(data)
                except p.InvalidMessage as exc:
                    conn.close(p.CLOSE_ERROR, str(exc)[:120])
                    break
            elif msg.type is WSMsgType.BINARY:
                if len(msg.data) > p.MAX_MESSAGE_BYTES:
                    conn.send_message(p.error("protocol", p.MESSAGE_TOO_LARGE,
                                              f"Message exceeds maximum size of {p.MAX_MESSAGE_BYTES} bytes"))
                    continue
                if not conn.allow_message():
                    conn.send_message(p.error("rate_limit", p.RATE_LIMIT_EXCEEDED, "Too many messages"))
                    continue
                if conn.serialization != p.MSGPACK:
                    conn.send_message(p.error("protocol", p.UNSUPPORTED_DATA, "Binary not supported"))
                    continue
                try:
                    message = p.decode_binary(msg.data)
                except p.InvalidMessage as exc:
                    conn.send_message(p.error("protocol", p.UNSUPPORTED_DATA, str(exc)))
                    continue
            else:
                break  # CLOSE, CLOSING, CLOSED, ERROR
            conn.busy += 1
            try:
                await self._handle(conn, message)
            finally:
                conn.busy -= 1
            if conn.closed:
                break

    async def _handle(self, conn: LiveConnection, message: p.ClientMessage) -> None:
        if isinstance(message, p.Authenticate):
            if conn.authenticated:  # idempotent: echo the current identity
                conn.send_message(p.auth_success(conn.user_id, conn.principal.role, conn.protocol))
                return
            await self._authenticate(conn, message.token, message.protocol)
        elif isinstance(message, p.Subscribe):
            if not conn.authenticated:
                conn.send_message(p.error("subscribe", p.AUTH_REQUIRED, "Authentication required before subscribing"))
                return
            await self.service.subscribe(conn, message)
        elif isinstance(message, p.NextBatch):
            if conn.authenticated:
                await self.service.next_batch(conn, message)
        elif isinstance(message, p.Unsubscribe) and conn.authenticated:
            self.service.unsubscribe(conn, message.subscription_id)
        # Ping: nothing to answer (upstream); touch() already recorded it

    async def _authenticate(self, conn: LiveConnection, token: str, proto: p.Protocol) -> bool:
        try:
            principal = self.auth.verify_token(token)
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except (KalamError, jwt.InvalidTokenError) as err:
            log.info("live connection %s from %s: authentication failed: %s", conn.id, conn.remote, err)
            conn.send(p.encode(p.auth_error("Invalid credentials"), p.JSON, compress=False))
            conn.close(p.CLOSE_POLICY, "Authentication failed")
            return False
        conn.principal = principal
        conn.token_exp = float(exp) if isinstance(exp, int | float) else None
        conn.protocol = proto
        conn.send(p.encode(p.auth_success(principal.user_id, principal.role, proto), p.JSON, compress=conn.compress))
        return True

    def metrics_text(self) -> str:
        """Prometheus lines: live connections, subscriptions, notifications, and the event loop's
        task count (a leak of connections or tasks shows here first)."""
        stats = {**self.service.stats(), "event_loop_tasks": len(asyncio.all_tasks())}
        lines = []
        for name, value in sorted(stats.items()):
            lines.append(f"# TYPE kalamdb_{name} {'counter' if name.endswith('_total') else 'gauge'}")
            lines.append(f"kalamdb_{name} {value}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ the sweeper
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("live sweeper failed")

    async def sweep(self) -> None:
        now = time.monotonic()
        wall = clock.time()
        for conn in list(self.service.connections):
            if conn.closed:
                continue
            if not conn.authenticated:
                if now - conn.opened > p.AUTH_TIMEOUT_S:
                    conn.send(p.encode(p.auth_error(
                        "Authentication timeout - no auth message received within 3 seconds"), p.JSON, compress=False))
                    conn.close(p.CLOSE_POLICY, "Authentication timeout")
                continue
            if conn.busy == 0 and now - conn.last_inbound > p.HEARTBEAT_TIMEOUT_S:
                conn.close(p.CLOSE_NORMAL, "Heartbeat timeout")
                continue
            if conn.token_exp is not None and wall >= conn.token_exp:
                conn.send(p.encode(p.error("auth", p.TOKEN_EXPIRED, "Token has expired; log in again and reconnect"),
                                   p.JSON, compress=False))
                conn.close(p.CLOSE_POLICY, "Token expired")
        if self._users_version is not None:
            version = self._users_version()
            if version != self._seen_users:
                self._seen_users = version
                await self._recheck_users()

    async def _recheck_users(self) -> None:
        """Users changed somewhere: end connections whose user was dropped or changed role."""
        conns = [c for c in self.service.connections if c.authenticated and not c.closed]
        ids = {c.user_id for c in conns}
        loop = asyncio.get_running_loop()
        current = await loop.run_in_executor(None, lambda: {u: self.service.db.principal_for(u) for u in ids})
        for conn in conns:
            now = current.get(conn.user_id)
            if now is None or now.role != conn.principal.role:
                conn.send(p.encode(p.error("auth", p.UNAUTHORIZED, "The user was dropped or its role changed; "
                                           "log in again and reconnect"), p.JSON, compress=False))
                conn.close(p.CLOSE_POLICY, "Credentials changed")


LIVE_KEY: web.AppKey[LiveEndpoint] = web.AppKey("kalamdb_live")


def add_live_routes(app: web.Application, db: Database, node_id: int, auth: TokenVerifier) -> LiveEndpoint:
    """Register `GET /v1/ws` and `system.live` on a server's app; the endpoint starts and stops
    with the app. Its `service` also executes KILL LIVE QUERY for the server's SQL endpoint."""
    service = LiveService(db, node_id=node_id)
    endpoint = LiveEndpoint(service, auth, lambda: db.users_version)
    app[LIVE_KEY] = endpoint
    app.router.add_get(WS_PATH, endpoint)

    async def on_startup(_: web.Application) -> None:
        await endpoint.start()

    async def on_shutdown(_: web.Application) -> None:
        await endpoint.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return endpoint
