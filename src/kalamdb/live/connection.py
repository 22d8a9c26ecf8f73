"""One WebSocket connection: who it is, its subscriptions, and an ordered, bounded send queue
drained by one writer task.

Every frame to the client (acks, batches, changes, errors) goes through the queue, so the client
sees them in the order the service produced them. The queue is bounded in frames and bytes: a
client that stops reading (the socket's buffers full, the writer waiting) makes it grow until the
bound, and then the connection is closed with a SLOW_CONSUMER error instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from kalamdb.errors import KalamError
from kalamdb.live import protocol as p

if TYPE_CHECKING:
    from kalamdb.engine import Principal

log = logging.getLogger("kalamdb.live")

MAX_QUEUED_FRAMES = 10_000
slow_consumers_closed = 0  # process-wide count, for /metrics
MAX_QUEUED_BYTES = 16 * 1024 * 1024
WRITE_CHUNK_BYTES = 256 * 1024  # frames joined into one write, at most about this much
HIGH_WATER_BYTES = 256 * 1024  # the transport's own buffer beyond which the writer waits
CLOSE_TIMEOUT_S = 2.0
SLOW_CLOSE_TIMEOUT_S = 10.0  # a slow consumer gets this long to read up to the error before an abort


def _header(n: int, binary: bool) -> bytes:
    """An unmasked, unfragmented, uncompressed server frame header (RFC 6455 section 5.2)."""
    op = 0x82 if binary else 0x81
    if n < 126:
        return bytes((op, n))
    if n < 65536:
        return struct.pack("!BBH", op, 126, n)
    return struct.pack("!BBQ", op, 127, n)


class LiveConnection:
    def __init__(self, ws: web.WebSocketResponse, *, remote: str | None, compress: bool,
                 transport: asyncio.Transport | None = None):
        self.id = uuid.uuid4().hex
        self.ws = ws
        self.remote = remote
        self.compress = compress
        self.transport = transport
        self.protocol = p.Protocol()  # sets .ser and .binary
        self._principal: Principal | None = None  # set once authenticated
        self.token_exp: float | None = None  # unix seconds
        self.subs: dict[str, Any] = {}
        self.opened = time.monotonic()
        self.last_inbound = self.opened
        self.last_inbound_wall = time.time()
        self.busy = 0  # handlers in progress (a long initial load must not look like silence)
        self.closed = False
        self._tokens = float(p.MAX_MESSAGES_PER_S)
        self._refilled = self.opened
        self._queue: deque[tuple[bytes, int]] = deque()  # (framed bytes, how many frames)
        self._queued_bytes = 0
        self._queued_frames = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=f"ws-writer-{self.id[:8]}")
        self._closing_task: asyncio.Task | None = None

    # ---- identity --------------------------------------------------------------------------
    @property
    def authenticated(self) -> bool:
        return self._principal is not None

    @property
    def principal(self) -> Principal:
        """Who the connection authenticated as; asked only once `authenticated` (the endpoint
        answers AUTH_REQUIRED before anything else)."""
        if self._principal is None:
            raise KalamError("INTERNAL_ERROR", f"live connection {self.id} is not authenticated")
        return self._principal

    @principal.setter
    def principal(self, principal: Principal) -> None:
        self._principal = principal

    @property
    def user_id(self) -> str:
        return self._principal.user_id if self._principal is not None else ""

    @property
    def serialization(self) -> str:
        return self.protocol.serialization

    @property
    def protocol(self) -> p.Protocol:
        return self._protocol

    @protocol.setter
    def protocol(self, value: p.Protocol) -> None:
        self._protocol = value
        self.ser = value.serialization  # read per notification: plain attributes
        self.binary = value.serialization == p.MSGPACK

    # ---- inbound ---------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_inbound = time.monotonic()
        self.last_inbound_wall = time.time()

    def allow_message(self) -> bool:
        """Upstream's per-connection token bucket: 50 messages, refilled at 50 per second."""
        now = time.monotonic()
        elapsed = now - self._refilled
        if elapsed >= 0.01:
            self._tokens = min(float(p.MAX_MESSAGES_PER_S), self._tokens + elapsed * p.MAX_MESSAGES_PER_S)
            self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    # ---- outbound --------------------------------------------------------------------------
    def send_message(self, message: dict) -> None:
        self.send(p.encode(message, self.serialization, compress=self.compress))

    def send(self, frame: p.Frame) -> None:
        """Queue one frame (acks, batches, errors)."""
        self._enqueue(_header(len(frame.data), frame.binary) + frame.data, 1)

    def push_changes(self, template: p.ChangeTemplate, subs: list[Any]) -> None:
        """One change for some of this connection's subscriptions: every message framed in one
        tight loop and queued as one chunk (the hot path of a fan-out). Each payload is gzipped
        from 512 bytes when that helps and the client did not ask for ?compress=false."""
        if self.closed:
            return
        ser, binary, compress = self.ser, self.binary, self.compress
        parts = []
        for sub in subs:
            payload = template.payload_for(sub.encoded_id(ser), ser)
            if compress and len(payload) >= p.COMPRESSION_THRESHOLD:
                frame = p.frame_for(payload, binary=binary, compress=True)
                parts.append(_header(len(frame.data), frame.binary))
                parts.append(frame.data)
            else:
                parts.append(_header(len(payload), binary))
                parts.append(payload)
        self._enqueue(b"".join(parts), len(subs))

    def _enqueue(self, chunk: bytes, frames: int) -> None:
        if self.closed:
            return
        if self._queued_frames + frames > MAX_QUEUED_FRAMES or self._queued_bytes + len(chunk) > MAX_QUEUED_BYTES:
            self.close_slow_consumer()
            return
        self._queue.append((chunk, frames))
        self._queued_bytes += len(chunk)
        self._queued_frames += frames
        self._wake.set()

    @property
    def queued(self) -> int:
        return self._queued_frames

    async def drained(self, below: int = 0, timeout: float = 30.0) -> None:
        """Wait until at most `below` frames are queued (pacing a long replay to the reader)."""
        deadline = time.monotonic() + timeout
        while self._queued_frames > below and not self.closed:
            self._drained.clear()  # the writer sets it after every write
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), min(left, 0.5))

    async def _write_loop(self) -> None:
        """Write queued frames, all that are waiting at once: one `transport.write` per wake-up
        instead of one per frame (a change fanned out to a connection's subscriptions, or a burst
        of changes, costs one system call here and one read on the client). Frames are whole and
        unmasked (server frames), written to the request's transport; aiohttp's WebSocketResponse
        still does the handshake, reading, pongs and the close, whose control frames may sit
        between ours (never inside one: every write is of whole frames)."""
        queue = self._queue
        transport = self.transport
        try:
            while True:
                if not queue:
                    self._drained.set()
                    if self.closed:
                        return  # closing: everything queued before the close has been written
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if transport is None or transport.is_closing():
                    return
                parts: list[bytes] = []
                size = frames = 0
                while queue and size < WRITE_CHUNK_BYTES:
                    chunk, n = queue.popleft()
                    parts.append(chunk)
                    size += len(chunk)
                    frames += n
                self._queued_bytes -= size
                self._queued_frames -= frames
                transport.write(b"".join(parts) if len(parts) > 1 else parts[0])
                self._drained.set()
                # flow control: while the peer does not take what we wrote, do not write more (the
                # queue absorbs it up to its bound); checked with a backing-off poll, congestion only
                delay = 0.001
                while transport.get_write_buffer_size() > HIGH_WATER_BYTES and not transport.is_closing():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the peer went away, or we are closing: the read loop ends the connection
        except Exception:
            log.exception("websocket writer of connection %s failed", self.id)
        finally:
            self._drained.set()

    # ---- closing ---------------------------------------------------------------------------
    def close_slow_consumer(self) -> None:
        global slow_consumers_closed
        slow_consumers_closed += 1
        log.warning("closing live connection %s of user %s: it stopped reading (more than %d frames or "
                    "%d bytes queued)", self.id, self.user_id, MAX_QUEUED_FRAMES, MAX_QUEUED_BYTES)
        msg = p.error("connection", p.SLOW_CONSUMER,
                      f"The client did not read its notifications fast enough (more than {MAX_QUEUED_FRAMES} "
                      f"messages or {MAX_QUEUED_BYTES} bytes waiting); reconnect and resume with `from`")
        self._queue.clear()
        self._queued_bytes = self._queued_frames = 0
        frame = p.encode(msg, p.JSON, compress=False)
        self._writer.cancel()  # it waits for the socket to drain; what it wrote stays in order
        self.close(p.CLOSE_POLICY, "Slow consumer", final=frame, timeout=SLOW_CLOSE_TIMEOUT_S)

    def close(self, code: int, reason: str, *, final: p.Frame | None = None,
              timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the connection (idempotent): nothing more is queued; what was queued is written,
        then `final` and a close frame, within CLOSE_TIMEOUT_S; a peer that does not cooperate gets
        its transport aborted."""
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._closing_task = asyncio.get_running_loop().create_task(self._close(code, reason, final, timeout))

    async def _close(self, code: int, reason: str, final: p.Frame | None, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._writer)
                if final is not None and not self.ws.closed:
                    await self.ws.send_frame(final.data, WSMsgType.BINARY if final.binary else WSMsgType.TEXT)
                await self.ws.close(code=code, message=reason.encode()[:120].decode("utf-8", "ignore").encode())
        except (TimeoutError, ConnectionError, RuntimeError):
            self._writer.cancel()
            if self.transport is not None:
                self.transport.abort()
        except Exception:
            log.exception("closing live connection %s failed", self.id)
            if self.transport is not None:
                self.transport.abort()

    async def wait_closed(self) -> None:
        if self._closing_task is not None:
            with contextlib.suppress(Exception):
                await self._closing_task
        else:
            self._writer.cancel()
            with contextlib.suppress(BaseException):
                await self._writer
