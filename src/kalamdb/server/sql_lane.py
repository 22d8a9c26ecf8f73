"""The SQL lane: `POST /v1/api/sql` served by a small HTTP/1.1 protocol of our own; every other
request by aiohttp, on the same port.

Why: per request, aiohttp's machinery (request and response objects, header multidicts, URL
parsing, routing, middlewares, signals) cost a node's event loop more than our own SQL path does.
Measured on the 2-core machine with the bench's 64 clients against a bare JSON endpoint: 98 µs of
server CPU per request under aiohttp, 27 µs with a plain protocol. On a cluster node the event loop
is shared with the Raft and apply threads through the GIL, so every microsecond of it is one the
replicated write waits for (docs/PERFORMANCE.md, step 8).

How: every connection starts in the lane, which reads a request's head itself and serves it only
when it is the plain form the API's clients send: `POST /v1/api/sql HTTP/1.1` with one
`Content-Length` no larger than `limits.max_body_bytes`, and none of Transfer-Encoding,
Content-Encoding, Expect or Upgrade. Anything else — another path or method, HTTP/1.0, chunked or
encoded bodies, WebSocket upgrades, an oversized or malformed head — hands the connection over to
aiohttp's protocol, with every byte of that request and of what followed it, for the rest of the
connection's life. aiohttp then answers exactly as it always did, including its errors for
malformed input; the lane never answers what it does not fully understand.

Both lanes run the same handler (`SqlHandler`), so status codes, JSON envelopes, authentication,
admission and metrics are one implementation. Requests on one connection are served one at a time
in order (reading pauses while one runs), so a pipelining client gets its answers in order and a
connection buffers at most one request. Idle and per-address limits (server/connguard.py) judge
lane connections like aiohttp's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web

from kalamdb.server.connguard import SERVER_HEADER, ConnectionGuard

log = logging.getLogger("kalamdb.server.lane")

SQL_TARGET = b"/v1/api/sql"
MAX_HEAD_BYTES = 8192  # a head not complete within this many bytes goes to aiohttp (which refuses it)
WRITE_HIGH_WATER = 256 * 1024  # a slow reader's backlog: the next request waits until it drains
_REQUEST_LINE = b"POST " + SQL_TARGET + b" HTTP/1.1\r\n"
_REFUSED_HEADERS = frozenset(("transfer-encoding", "content-encoding", "expect", "upgrade"))
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# A header line: a token name, a colon, a value without control bytes (a tab is allowed), CRLF.
# Anything else in the block (a bare CR or LF, obs-fold, a space in a name) is aiohttp's to judge.
_LINE = r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\x00-\x08\x0a-\x1f\x7f]*)\r\n"
_HEADER_LINE = re.compile(_LINE)


class LaneHeaders(dict):
    """Header values by lower-cased name; `get` ignores case, as aiohttp's headers do."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class LaneRequest:
    """What the SQL handler reads of a request (the part of aiohttp's `web.Request` it uses)."""

    __slots__ = ("body", "headers", "remote")
    path = SQL_TARGET.decode()

    def __init__(self, headers: LaneHeaders, body: bytes, remote: str | None):
        self.headers = headers
        self.body = body
        self.remote = remote

    @property
    def content_length(self) -> int:
        return len(self.body)

    async def read(self) -> bytes:
        return self.body


class Head:
    """A request head the lane serves: its length in bytes, headers, body length, and whether the
    client asked to close the connection after the answer."""

    __slots__ = ("body_length", "close", "headers", "length")

    def __init__(self, length: int, headers: LaneHeaders, body_length: int, close: bool):
        self.length = length
        self.headers = headers
        self.body_length = body_length
        self.close = close


HANDOVER = "handover"  # parse_head's answer for a request the lane leaves to aiohttp


def parse_head(buf: bytes | bytearray, max_body_bytes: int) -> Head | str | None:
    """The head at the start of `buf`: a `Head` the lane serves, HANDOVER for anything else, or None
    while the head is still incomplete. Strict on purpose: whatever is unusual goes to aiohttp.

    The header block is split by one regular expression over the whole block (one pass in C)
    rather than line by line, and the lines it found must cover the block: a head is parsed for
    every request the node serves, and the per-line checks were 7 % of a node's Python time at 64
    clients (docs/PERFORMANCE.md)."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return HANDOVER if len(buf) >= MAX_HEAD_BYTES else None
    if not buf.startswith(_REQUEST_LINE):
        return HANDOVER
    block = bytes(buf[len(_REQUEST_LINE):end + 2]).decode("latin-1")  # every header line, each with its CRLF
    lines = _HEADER_LINE.findall(block)
    # The lines found cover the block with no gap (a line holds no CR or LF but its own CRLF, so
    # lines found one after the other from the start are the block's lines, each valid): the same
    # check as a full match of the block, without a second pass over it.
    if sum(len(name) + len(value) + 3 for name, value in lines) != len(block):
        return HANDOVER  # obs-fold, a bare CR or LF, a control byte, a bad name: aiohttp decides
    headers = LaneHeaders()
    length = -1
    close = False
    for name, value in lines:
        key = name.lower()
        value = value.strip(" \t")
        if key in _REFUSED_HEADERS:
            return HANDOVER
        if key == "content-length":
            if length >= 0 or not (value.isascii() and value.isdigit()) or len(value) > 18:
                return HANDOVER  # repeated, signed, spaced or absurd: aiohttp refuses it
            length = int(value)
        elif key == "connection":
            close = "close" in {t.strip(" \t").lower() for t in value.split(",")}
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if length < 0 or length > max_body_bytes:
        return HANDOVER  # no length (aiohttp reads it as empty), or the documented 413 via aiohttp
    return Head(end + 4, headers, length, close)


class _DateHeader:
    """The Date header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _DateHeader()


def encode_response(response: web.Response, *, close: bool) -> bytes:
    """The HTTP/1.1 bytes of a handler's answer, with the headers aiohttp would send with it."""
    body = response.body
    assert isinstance(body, bytes), "the SQL handler answers with a bytes body"
    parts = [b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, "Unknown").encode())]
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "server", "date", "connection"):
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"Server: %s\r\nContent-Length: %d\r\nDate: %s\r\n" % (SERVER_HEADER.encode(), len(body),
                                                                         _date.value()))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class SqlLane:
    """The lane of one server: its handler, aiohttp's protocol factory for handovers, the guard,
    and the lane's open connections."""

    def __init__(self, handler: Callable[[LaneRequest], Awaitable[web.Response]],
                 aiohttp_protocol: Callable[[], asyncio.Protocol], *, max_body_bytes: int,
                 guard: ConnectionGuard | None = None):
        self.handler = handler
        self.aiohttp_protocol = aiohttp_protocol
        self.max_body_bytes = max_body_bytes
        self.guard = guard
        self.connections: set[LaneProtocol] = set()
        self.served = 0  # requests answered by the lane
        self.handed_over = 0  # connections given to aiohttp

    def protocol(self) -> LaneProtocol:
        return LaneProtocol(self)

    async def shut_down(self, timeout: float) -> None:
        """Close connections with no request running; let running requests finish (each connection
        closes after its answer) for up to `timeout` seconds, as aiohttp's shutdown does."""
        for conn in list(self.connections):
            conn.closing = True
            if not conn.busy and conn.transport is not None:
                conn.transport.close()
        busy = [conn.done for conn in self.connections if conn.busy]
        if busy:
            await asyncio.wait(busy, timeout=timeout)


class LaneProtocol(asyncio.Protocol):
    """One connection while it is in the lane."""

    def __init__(self, lane: SqlLane):
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.buf = bytearray()
        self.busy = False  # a request is being served: reading is paused
        self.closing = False
        self.lost = False
        self.done = asyncio.get_running_loop().create_future()  # resolved when the connection ends
        self._drained: asyncio.Future[None] | None = None
        self._head: Head | None = None  # the parsed head of a request whose body is still arriving

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        self.lane.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve_next()

    def eof_received(self) -> bool | None:
        return None  # the transport closes, as aiohttp's protocol does

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lane.connections.discard(self)
        self._resume_writing()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._resume_writing()

    def _resume_writing(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ requests
    def _serve_next(self) -> None:
        transport = self.transport
        if transport is None or self.lost:
            return
        head = self._head or parse_head(self.buf, self.lane.max_body_bytes)
        if head is None:
            return
        if not isinstance(head, Head):
            self._hand_over()
            return
        total = head.length + head.body_length
        if len(self.buf) < total:
            self._head = head  # clients send the head and the body in two writes: parse the head once
            return
        self._head = None
        body = bytes(self.buf[head.length:total])
        del self.buf[:total]
        self.busy = True
        transport.pause_reading()
        request = LaneRequest(head.headers, body, self.remote)
        asyncio.get_running_loop().create_task(self._serve(request, head.close))

    async def _serve(self, request: LaneRequest, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        guard = self.lane.guard
        if guard is not None:
            guard.request_started(transport)
        try:
            response = await self.lane.handler(request)
        except Exception:  # the handler answers every error itself: this is a bug, end the connection
            log.exception("the SQL lane's handler failed")
            transport.close()
            return
        finally:
            if guard is not None:
                guard.request_ended(transport)
        if self.lost:
            return
        close = close or self.closing
        transport.write(encode_response(response, close=close))
        self.lane.served += 1
        if close:
            transport.close()
            return
        if self._drained is not None:
            await self._drained  # a client that does not read its answers gets no more served
        if self.lost:
            return
        self.busy = False
        transport.resume_reading()
        self._serve_next()

    def _hand_over(self) -> None:
        """From here on aiohttp's protocol owns the connection: it gets the transport and every byte
        not yet served, as if it had been there from the start of this request."""
        transport = self.transport
        assert transport is not None
        self.lane.connections.discard(self)
        self.lane.handed_over += 1
        if not self.done.done():
            self.done.set_result(None)  # the lane is done with it; aiohttp's shutdown waits for it now
        proto = self.lane.aiohttp_protocol()
        data = bytes(self.buf)
        self.buf.clear()
        self.transport = None
        transport.set_protocol(proto)
        proto.connection_made(transport)
        with contextlib.suppress(Exception):
            transport.resume_reading()
        if data:
            proto.data_received(data)


class LaneSite(web.BaseSite):
    """An aiohttp site whose connections start in the SQL lane (a TCP host/port or a listening socket)."""

    __slots__ = ("_host", "_lane", "_port", "_shutdown_timeout", "_sock")

    def __init__(self, runner: web.BaseRunner, lane: SqlLane, *, host: str | None = None, port: int = 0,
                 sock: Any = None, backlog: int = 2048, shutdown_timeout: float = 60.0):
        super().__init__(runner, backlog=backlog)
        self._lane = lane
        self._shutdown_timeout = shutdown_timeout
        self._host = host
        self._port = port
        self._sock = sock

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}" if self._sock is None else f"sock:{self._sock!r}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(self._lane.protocol, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(self._lane.protocol, self._host, self._port,
                                                    backlog=self._backlog, reuse_address=True)

    async def stop(self) -> None:
        await super().stop()
        await self._lane.shut_down(self._shutdown_timeout)


def lane_connections(lane: SqlLane | None) -> Callable[[], Iterable[LaneProtocol]]:
    """The lane's open connections, for the connection guard's sweep."""
    return (lambda: list(lane.connections)) if lane is not None else (lambda: ())
