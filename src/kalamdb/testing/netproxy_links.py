"""The moving parts of the userspace network proxy (`kalamdb.testing.netproxy`): per-link listeners,
per-connection pipes that apply cut, delay, loss, bandwidth and clog to the bytes of one direction,
and the counters. `NetworkController` owns them; tests never use this module directly."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import socket
import struct
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kalamdb.testing.netproxy import NetworkController

log = logging.getLogger("kalamdb.netproxy")

CLIENT = "client"
"""Source id of client -> node links (``add_client_link``)."""

Endpoint = int | str
Pair = tuple[Endpoint, Endpoint]

_HIGH_WATER = 4 * 1024 * 1024  # bytes queued per pipe before we stop reading (TCP backpressure)
_LOW_WATER = 1 * 1024 * 1024
_CONNECT_TIMEOUT = 5.0
_now = time.monotonic  # release times use the precise clock (uvloop's loop.time() has ms ticks)


@dataclasses.dataclass(frozen=True)
class Faults:
    """Faults currently applied to bytes flowing in one direction."""

    cut: bool = False
    clogged: bool = False
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    kbps: float | None = None


@dataclasses.dataclass
class LinkStats:
    """Counters for bytes flowing ``src -> dst`` (over every connection that carries them)."""

    frames_passed: int = 0
    bytes_passed: int = 0
    frames_dropped: int = 0
    bytes_dropped: int = 0
    frames_delayed: int = 0
    frames_held: int = 0
    connections: int = 0
    resets: int = 0


class _Item:
    """One unit in a pipe's queue: a frame/chunk of data or a control event (EOF or RESET)."""

    __slots__ = ("data", "held", "kind", "release_at")

    def __init__(self, kind: str, data: bytes = b"", release_at: float = 0.0):
        self.kind = kind  # "data" | "eof" | "reset"
        self.data = data
        self.release_at = release_at
        self.held = False


class _Pipe:
    """One direction of one proxied connection: a reader that frames and judges, a writer that
    delays, holds, paces and delivers in order."""

    def __init__(self, conn: _Connection, src: Endpoint, dst: Endpoint, reader: asyncio.StreamReader,
                 writer_fut: asyncio.Future, rng: random.Random):
        self.conn = conn
        self.ctl = conn.ctl
        self.src, self.dst = src, dst
        self.reader = reader
        self.writer_fut = writer_fut  # resolves to the StreamWriter of the receiving side
        self.rng = rng
        self.queue: collections.deque[_Item] = collections.deque()
        self.queued_bytes = 0
        self.has_items = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()
        self.blackholed = False
        self.next_free_at = 0.0  # bandwidth pacing
        self.last_release_at = 0.0

    # -- reader side ---------------------------------------------------------------------------
    async def read_loop(self) -> None:
        buf = bytearray()
        framed = self.conn.link.framed
        seen = 0
        try:
            while True:
                await self.has_room.wait()
                chunk = await self.reader.read(65536)
                if not chunk:
                    if buf:
                        self._push_data(bytes(buf), droppable=False)
                    self._push(_Item("eof"))
                    return
                if not framed:
                    if self._raw_loss():
                        return
                    self._push_data(chunk, droppable=False)
                    continue
                buf += chunk
                f = self.ctl.faults(self.src, self.dst)  # one look per chunk read
                pos, end = 0, len(buf)
                while end - pos >= 4:
                    (length,) = struct.unpack_from(">I", buf, pos)
                    if length > self.ctl.max_frame_bytes:
                        log.warning("link %s->%s: frame of %d bytes exceeds %d; passing the rest of this "
                                    "connection through unframed", self.src, self.dst, length,
                                    self.ctl.max_frame_bytes)
                        framed = False
                        self._push_data(bytes(buf[pos:]), droppable=False)
                        pos = end
                        break
                    if end - pos < 4 + length:
                        break
                    seen += 1
                    self._push_data(bytes(buf[pos: pos + 4 + length]), seen > self.ctl.protect_first_frames, f)
                    pos += 4 + length
                del buf[:pos]  # one shift per chunk, not one per frame
        except (ConnectionError, OSError):
            self._push(_Item("reset"))

    def _raw_loss(self) -> bool:
        f = self.ctl.faults(self.src, self.dst)
        if f.loss > 0 and self.rng.random() < f.loss:
            self.ctl._count(self.src, self.dst, resets=1)
            self.conn.abort()
            return True
        return False

    def _push_data(self, data: bytes, droppable: bool, f: Faults | None = None) -> None:
        if f is None:
            f = self.ctl.faults(self.src, self.dst)
        if droppable and f.loss > 0 and self.rng.random() < f.loss:
            self.ctl._count(self.src, self.dst, frames_dropped=1, bytes_dropped=len(data))
            return
        now = _now()
        release = now
        if f.delay_ms > 0 or f.jitter_ms > 0:
            d = f.delay_ms
            if f.jitter_ms > 0:
                d += self.rng.uniform(-f.jitter_ms, f.jitter_ms)
            release = now + max(0.0, d) / 1000.0
            self.ctl._count(self.src, self.dst, frames_delayed=1)
        release = max(release, self.last_release_at)  # order: later frames wait for earlier ones
        self.last_release_at = release
        self._push(_Item("data", data, release))

    def _push(self, item: _Item) -> None:
        self.queue.append(item)
        self.queued_bytes += len(item.data)
        if self.queued_bytes > _HIGH_WATER:
            self.has_room.clear()
        self.has_items.set()

    # -- writer side ---------------------------------------------------------------------------
    async def write_loop(self) -> None:
        try:
            await self._write_loop()
        except (ConnectionError, OSError):
            self.conn.abort()

    async def _write_loop(self) -> None:
        while True:
            if not self.queue:
                self.has_items.clear()
                await self.has_items.wait()
                continue
            item = self.queue[0]
            while (wait := item.release_at - _now()) > 0:  # loop timers may fire a hair early
                await asyncio.sleep(wait)
            # Hold while clogged (data) or while cut (control events travel when the path heals).
            while True:
                f = self.ctl.faults(self.src, self.dst)
                if f.clogged or (item.kind != "data" and f.cut):
                    if not item.held and item.kind == "data":
                        item.held = True
                        self.ctl._count(self.src, self.dst, frames_held=1)
                    await self.ctl._wait_change()
                    continue
                break
            self.queue.popleft()
            self.queued_bytes -= len(item.data)
            if self.queued_bytes < _LOW_WATER:
                self.has_room.set()
            if item.kind == "data":
                if f.cut or self.blackholed:
                    if not self.conn.link.framed:
                        self.blackholed = True
                    self.ctl._count(self.src, self.dst, frames_dropped=1, bytes_dropped=len(item.data))
                    continue
                writer = await self.writer_fut
                if f.kbps:
                    now = _now()
                    self.next_free_at = max(now, self.next_free_at) + len(item.data) * 8 / (f.kbps * 1000)
                    if self.next_free_at > now:
                        await asyncio.sleep(self.next_free_at - now)
                data, frames = item.data, 1
                if not f.kbps:  # coalesce every frame already due into one write
                    now = _now()
                    parts = [data]
                    q = self.queue
                    while q and q[0].kind == "data" and q[0].release_at <= now:
                        parts.append(q.popleft().data)
                        self.queued_bytes -= len(parts[-1])
                    if len(parts) > 1:
                        data, frames = b"".join(parts), len(parts)
                        if self.queued_bytes < _LOW_WATER:
                            self.has_room.set()
                self.ctl._count(self.src, self.dst, frames_passed=frames, bytes_passed=len(data))
                writer.write(data)
                if writer.transport.get_write_buffer_size() > 256 * 1024:
                    await writer.drain()
            elif item.kind == "eof":
                writer = await self.writer_fut
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                self.conn.half_closed()
                return
            else:  # reset
                self.ctl._count(self.src, self.dst, resets=1)
                self.conn.abort()
                return


class _Connection:
    """A proxied TCP connection: the dialler's socket, the upstream socket, and two pipes."""

    def __init__(self, link: _Link, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter):
        self.link = link
        self.ctl = link.ctl
        self.c_reader, self.c_writer = c_reader, c_writer
        self.u_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        self.eofs = 0
        self.done = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.link
        n = next(self.ctl._conn_counter)
        up_fut: asyncio.Future = loop.create_future()
        c_fut: asyncio.Future = loop.create_future()
        c_fut.set_result(self.c_writer)
        seed = f"{self.ctl.seed}:{link.src}->{link.dst}:{n}"
        fwd = _Pipe(self, link.src, link.dst, self.c_reader, up_fut, random.Random(seed + ":fwd"))
        self.ctl._count(link.src, link.dst, connections=1)
        self.tasks.append(loop.create_task(fwd.read_loop()))
        self.tasks.append(loop.create_task(fwd.write_loop()))
        try:
            # The SYN travels src -> dst: while that direction is cut, the dial waits (a black hole).
            while self.ctl.faults(link.src, link.dst).cut:
                await self.ctl._wait_change()
            u_reader, self.u_writer = await asyncio.wait_for(
                asyncio.open_connection(*link.target), _CONNECT_TIMEOUT)
        except (TimeoutError, OSError):
            # Like "connection refused": deliver a reset to the dialler (held while b->a is cut).
            rev = _Pipe(self, link.dst, link.src, asyncio.StreamReader(), c_fut, random.Random(seed))
            rev._push(_Item("reset"))
            self.tasks.append(loop.create_task(rev.write_loop()))
            up_fut.cancel()
            await self.done
            return
        up_fut.set_result(self.u_writer)
        rev = _Pipe(self, link.dst, link.src, u_reader, c_fut, random.Random(seed + ":rev"))
        self.tasks.append(loop.create_task(rev.read_loop()))
        self.tasks.append(loop.create_task(rev.write_loop()))
        await self.done

    def half_closed(self) -> None:
        self.eofs += 1
        if self.eofs >= 2:
            self.close()

    def _writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.c_writer, self.u_writer) if w is not None]

    def abort(self) -> None:
        """Close both sockets with a RST (SO_LINGER 0)."""
        for w in self._writers():
            sock = w.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            w.transport.abort()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self._writers():
            w.transport.close()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        if not self.done.done():
            self.done.set_result(None)


class _Link:
    """The listening proxy for one directed link ``src -> dst``."""

    def __init__(self, ctl: NetworkController, src: Endpoint, dst: Endpoint, target: tuple[str, int],
                 framed: bool):
        self.ctl = ctl
        self.src, self.dst = src, dst
        self.target = target
        self.framed = framed
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[_Connection] = set()
        self.addr: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_accept, "127.0.0.1", 0)
        self.addr = self.server.sockets[0].getsockname()[:2]

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            conn.close()  # shutdown; not re-raised: asyncio's stream callback logs cancelled handlers
        except Exception:  # never let one connection's bug kill the proxy
            log.exception("link %s->%s: connection failed", self.src, self.dst)
            conn.abort()
        finally:
            self.connections.discard(conn)
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        if self.server is not None:
            await self.server.wait_closed()
