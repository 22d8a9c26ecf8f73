"""Real-socket helpers for the fault tests: a length-prefixed frame server and client."""

from __future__ import annotations

import asyncio
import struct
import zlib

from kalamdb.testing.waiting import async_wait_for

MAX_FRAME = 1 << 20


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def checked(seq: int, body: bytes = b"") -> bytes:
    """A payload that proves its own integrity: seq, body, crc32 of both."""
    head = struct.pack(">I", seq) + body
    return head + struct.pack(">I", zlib.crc32(head))


def verify(payload: bytes) -> int:
    """Return the seq of a checked payload; raise if a single byte was changed."""
    head, crc = payload[:-4], struct.unpack(">I", payload[-4:])[0]
    assert zlib.crc32(head) == crc, f"corrupted frame {payload!r}"
    return struct.unpack(">I", head[:4])[0]


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    if n > MAX_FRAME:
        raise ConnectionError(f"refusing a {n}-byte frame")
    return await reader.readexactly(n)


class FrameServer:
    """Records every frame it receives; echoes it back when ``echo``."""

    def __init__(self, echo: bool = True):
        self.echo = echo
        self.frames: list[bytes] = []
        self.connections = 0
        self.closed_connections = 0
        self._cond = asyncio.Condition()
        self._server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.addr = self._server.sockets[0].getsockname()[:2]
        return self.addr

    async def _handle(self, reader, writer):
        self.writers.append(writer)
        self.tasks.append(asyncio.current_task())
        async with self._cond:
            self.connections += 1
            self._cond.notify_all()
        try:
            while True:
                payload = await read_frame(reader)
                async with self._cond:
                    self.frames.append(payload)
                    self._cond.notify_all()
                if self.echo:
                    writer.write(frame(payload))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            async with self._cond:
                self.closed_connections += 1
                self._cond.notify_all()

    async def wait_until(self, predicate, timeout: float = 5.0) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), timeout)

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self._server.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()


until = async_wait_for  # (predicate, timeout, what)
