"""Forwarding a request from a follower to the leader over HTTP, with the caller's credentials.

Writes do not come here: they reach the leader inside the Raft transport (node/forwarding.py).
What does is a request only the leader can serve (CLUSTER STEPDOWN, TRANSFER LEADER, JOIN, LEAVE).

The leader's status and body are passed back unchanged. A forwarded request carries a header
naming the node that forwarded it; a node never forwards such a request again, so forwarding
cannot loop even while two nodes briefly disagree about who leads.

It speaks HTTP/1.1 itself over a small pool of keep-alive connections per leader (the request is one
buffer, the answer is read by Content-Length), about a fifth of the CPU of a general HTTP client. Idle connections are replaced before the leader's keep-alive limit could
close them, so a request never lands on a connection the server is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from kalamdb.errors import KalamError, NotLeaderError
from kalamdb.server import responses

if TYPE_CHECKING:
    from kalamdb.server.sql_endpoint import HttpRequest

log = logging.getLogger("kalamdb.server.forward")

FORWARDED_HEADER = "X-KalamDB-Forwarded-By"
IDLE_REPLACE_S = 15.0  # well below aiohttp's 75 s server keep-alive
MAX_IDLE_PER_LEADER = 256
MAX_HEADER_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 256 * 1024 * 1024


class ForwardError(Exception):
    """The leader's answer could not be read; `sent` says whether the request may have reached it."""

    def __init__(self, message: str, *, sent: bool):
        super().__init__(message)
        self.sent = sent


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _LeaderPool:
    """Keep-alive connections to one leader address; each is used by one request at a time."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"leader API address '{url}' must look like http://host:port")
        self.host, self.port = parts.hostname, parts.port
        self.host_header = f"{self.host}:{self.port}".encode()
        self.idle: list[_Conn] = []

    async def take(self) -> _Conn:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < IDLE_REPLACE_S and not conn.writer.is_closing():
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES)
        return _Conn(reader, writer)

    def give_back(self, conn: _Conn) -> None:
        if len(self.idle) >= MAX_IDLE_PER_LEADER:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


async def _exchange(conn: _Conn, head: bytes, body: bytes) -> tuple[int, bytes, bool]:
    """Send one request, read one answer: (status, body, connection reusable)."""
    conn.writer.write(head + body)
    try:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise ForwardError(f"no answer from the leader: {type(exc).__name__}", sent=True) from None
    lines = raw[:-4].split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise ForwardError(f"malformed status line from the leader: {lines[0][:80]!r}", sent=True) from None
    length = None
    keep = True
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    try:
        if chunked:
            data = await _read_chunked(conn.reader)
        elif length is not None:
            if length > MAX_ANSWER_BYTES:
                raise ForwardError(f"the leader's answer is too large ({length} bytes)", sent=True)
            data = await conn.reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            data = await conn.reader.read(MAX_ANSWER_BYTES)
            keep = False
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ForwardError(f"the leader's answer was cut short: {type(exc).__name__}", sent=True) from None
    return status, data, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        if len(out) + size > MAX_ANSWER_BYTES:
            raise ForwardError("the leader's answer is too large", sent=True)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


class Forwarder:
    def __init__(self, node_id: int, timeout_s: float):
        self.node_id = node_id
        self.timeout_s = timeout_s
        self._pools: dict[str, _LeaderPool] = {}

    def _pool(self, target: str) -> _LeaderPool:
        pool = self._pools.get(target)
        if pool is None:
            pool = self._pools[target] = _LeaderPool(target)
        return pool

    async def forward(self, request: HttpRequest, err: KalamError, took_ms: float) -> web.Response:
        target = err.leader_api if isinstance(err, NotLeaderError) else None
        if request.headers.get(FORWARDED_HEADER) or not target:
            # Already forwarded once (the leader we were sent to no longer leads): answer, don't loop.
            return responses.error(err, took_ms)
        body = await request.read()
        try:
            pool = self._pool(target)
        except ValueError as exc:
            return responses.error(KalamError("FORWARD_FAILED", str(exc), status=503,
                                              details="definite: the write was not applied"), took_ms)
        head = [b"POST ", request.path.encode(), b" HTTP/1.1\r\nHost: ", pool.host_header,
                b"\r\nContent-Type: application/json\r\n", FORWARDED_HEADER.encode(), b": ",
                str(self.node_id).encode(), b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        auth = request.headers.get("Authorization")
        if auth:
            if "\r" in auth or "\n" in auth:
                return responses.error(KalamError("INVALID_INPUT", "malformed Authorization header"), took_ms)
            head += [b"Authorization: ", auth.encode("latin-1", "replace"), b"\r\n"]
        head.append(b"\r\n")
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    conn = await pool.take()
                except OSError as exc:
                    raise ForwardError(f"cannot connect: {exc}", sent=False) from None
                status, data, keep = await _exchange(conn, b"".join(head), body)
        except (ForwardError, TimeoutError, OSError) as exc:
            if conn is not None:
                conn.close()
            sent = not isinstance(exc, ForwardError) or exc.sent
            if isinstance(exc, TimeoutError) and conn is None:
                sent = False
            # Connection refused before sending: definite. Lost after sending: the leader may have
            # applied it, so the caller must treat it as indefinite.
            detail = ("indefinite: the write may or may not have been applied" if sent
                      else "definite: the write was not applied")
            log.info("forwarding to leader %s failed: %s", target, exc)
            return responses.error(KalamError(
                "FORWARD_FAILED", f"node {self.node_id} could not forward the request to the leader at "
                f"{target}: {type(exc).__name__}: {exc}", status=503, details=detail), took_ms)
        if keep:
            pool.give_back(conn)
        else:
            conn.close()
        return web.Response(body=data, status=status, content_type="application/json")

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
