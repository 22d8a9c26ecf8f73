"""Bounds on HTTP connections that aiohttp does not enforce by itself: a connection that sends no
complete request (idle, or stuck in the middle of its headers) for IDLE_TIMEOUT_S is closed; one
client address may hold at most MAX_CONNECTIONS_PER_ADDRESS connections; and responses do not name
the Python and aiohttp versions (the Server header says only "kalamdb").

A request in progress is never cut (long-polls, live-query WebSockets): only connections with no
request running are judged, by a sweep once a second over the server's connection list."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("kalamdb.server.connguard")

IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS_PER_ADDRESS = 1024
SWEEP_EVERY_S = 1.0
SERVER_HEADER = "kalamdb"


class Connection(Protocol):
    """A server connection the guard judges: aiohttp's RequestHandler, or the SQL lane's protocol."""

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


class ConnectionGuard:
    def __init__(self, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS):
        self.idle_timeout_s = idle_timeout_s
        self.max_per_address = max_per_address
        # transport -> (requests in progress, monotonic time of the last request start or end)
        self._busy: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._first_seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.closed_idle = 0
        self.closed_over_limit = 0

    def install(self, app: web.Application) -> None:
        app.middlewares.insert(0, self._middleware)
        app.on_response_prepare.append(_plain_server_header)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is None:
            return await handler(request)
        self.request_started(transport)
        try:
            return await handler(request)
        finally:
            self.request_ended(transport)

    def request_started(self, transport: asyncio.BaseTransport) -> None:
        busy, _ = self._busy.get(transport, (0, 0.0))
        self._busy[transport] = (busy + 1, time.monotonic())

    def request_ended(self, transport: asyncio.BaseTransport) -> None:
        busy, _ = self._busy.get(transport, (1, 0.0))
        self._busy[transport] = (busy - 1, time.monotonic())

    async def run(self, server: web.Server, more: Callable[[], Iterable[Connection]] = lambda: ()) -> None:
        """Sweep the connections of `server` (and those `more` names: the SQL lane's) until cancelled."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)  # the sweep's period, not a wait for state
            try:
                self.sweep([*server.connections, *more()])
            except Exception:  # the guard must never stop serving
                log.exception("connection sweep failed")

    def sweep(self, connections: Iterable[Connection]) -> None:
        now = time.monotonic()
        by_address: dict[str, list] = defaultdict(list)
        for handler in list(connections):
            transport = handler.transport
            if transport is None or transport.is_closing():
                continue
            first = self._first_seen.setdefault(transport, now)
            busy, last = self._busy.get(transport, (0, first))
            peer = transport.get_extra_info("peername")
            by_address[peer[0] if isinstance(peer, tuple) else str(peer)].append((transport, busy, last))
            if not busy and now - last > self.idle_timeout_s:
                self.closed_idle += 1
                _close(transport)
        for address, conns in by_address.items():
            live = [c for c in conns if not c[0].is_closing()]
            excess = len(live) - self.max_per_address
            if excess <= 0:
                continue
            # idle ones first, the longest idle first; a connection with a request running goes last
            live.sort(key=lambda c: (c[1] > 0, c[2]))
            for transport, _, _ in live[:excess]:
                self.closed_over_limit += 1
                _close(transport)
            log.warning("closed %d connection(s) of %s: more than %d open (limits.max_connections_per_address)",
                        excess, address, self.max_per_address)


def _close(transport: asyncio.BaseTransport) -> None:
    with contextlib.suppress(Exception):
        transport.close()


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER
