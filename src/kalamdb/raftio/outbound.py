"""The outbound side of the peer transport: one link per peer, with its bounded queue of encoded
frames and the task that connects when there is something to send, runs the client handshake,
writes everything queued since its last write in one `write()` (the batching Raft pipelining relies
on), and after a failed connect drops the queue and backs off (capped, jittered exponential). A
peer that stops reading is given up on after `write_stall_timeout`. `PeerTransport.send()` fills
the queues; this module empties them (docs/design/transport.md, "Connections")."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from kalamdb.raftio.handshake import STREAM_LIMIT, nodelay
from kalamdb.raftio.links import LinkContext
from kalamdb.raftio.transport_stats import describe

# Outbound connection states.
IDLE, CONNECTING, CONNECTED, BACKOFF = "idle", "connecting", "connected", "backoff"


class OutboundPeer:
    """Outbound side of one peer: address, bounded queue of encoded frames, connection task."""

    __slots__ = (
        "addr",
        "attempts",
        "chunks",
        "connects",
        "node_id",
        "queued_bytes",
        "queued_frames",
        "state",
        "task",
        "waiter",
        "writer",
    )

    def __init__(self, node_id: int, addr: tuple[str, int]):
        self.node_id = node_id
        self.addr = addr
        self.chunks: list[bytes] = []
        self.queued_frames = 0
        self.queued_bytes = 0
        self.state = IDLE
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None  # the connection, while its pump runs
        self.attempts = 0  # consecutive failed connects, drives the backoff
        self.connects = 0

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def clear_queue(self, dropped: Counter[str], reason: str | None) -> None:
        """Forget everything queued, counting the frames under `reason` (None: not counted)."""
        if reason and self.queued_frames:
            dropped[reason] += self.queued_frames
        self.chunks.clear()
        self.queued_frames = 0
        self.queued_bytes = 0


class OutboundLinks:
    """Runs the connection task of each outbound peer; one per transport."""

    def __init__(self, ctx: LinkContext, rng: random.Random, *, connect_timeout: float, handshake_timeout: float,
                 backoff_base: float, backoff_cap: float, write_stall_timeout: float):
        self._ctx = ctx
        self.node_id = ctx.node_id
        self._rng = rng
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.write_stall_timeout = write_stall_timeout

    def write_now(self, peer: OutboundPeer, blob: bytes, frames: int) -> bool:
        """Write `blob` straight to the peer's connection when its pump is idle with nothing queued
        and nothing buffered (the usual case): True if written. The bytes leave in this call instead
        of when the pump task next runs, which is after the caller's current step: a leader's early
        AppendEntries must be on the wire before its own fsync starts, not after it (measured:
        docs/PERFORMANCE.md step 7), and each message saves a task wake-up. Order is kept: with
        anything queued, or a write backlog, the caller queues behind it."""
        writer = peer.writer
        if writer is None or peer.chunks or peer.waiter is None:
            return False
        transport = writer.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        writer.write(blob)
        counters = self._ctx.counters
        counters.frames_sent += frames
        counters.bytes_sent += len(blob)
        if transport.get_write_buffer_size():
            peer.wake()  # the socket took only part: the pump watches the backlog drain (or stall)
        return True

    def kick(self, peer: OutboundPeer) -> None:
        """Something was queued for `peer`: start its task, or wake it."""
        if peer.task is None:
            peer.task = asyncio.get_running_loop().create_task(self.run(peer))
        else:
            peer.wake()

    def backoff_delay(self, attempts: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(attempts, 30)))
        return ceiling * (0.5 + 0.5 * self._rng.random())  # jitter: never all peers in lockstep

    async def run(self, peer: OutboundPeer) -> None:
        """Connect when there is something to send; pump the queue; back off after failures."""
        loop = asyncio.get_running_loop()
        counters = self._ctx.counters
        while True:
            while not peer.chunks:
                peer.waiter = loop.create_future()
                await peer.waiter
                peer.waiter = None
            peer.state = CONNECTING
            try:
                reader, writer = await self._connect(peer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - OSError, timeout, refusal: all mean "down for now"
                counters.connect_failures += 1
                peer.clear_queue(counters.dropped, "connect_failed")
                delay = self.backoff_delay(peer.attempts)
                peer.attempts += 1
                peer.state = BACKOFF
                if peer.attempts == 1:
                    self._ctx.throttle.warning(("unreachable", peer.node_id),
                                           "node %d: cannot reach node %d at %s:%d (%s); retry in %.3fs",
                                           self.node_id, peer.node_id, *peer.addr, describe(exc), delay)
                else:
                    self._ctx.log.debug("node %d: cannot reach node %d at %s:%d (%s); retry in %.3fs",
                                    self.node_id, peer.node_id, *peer.addr, describe(exc), delay)
                await asyncio.sleep(delay)  # backoff timer, not a wait for state
                peer.state = IDLE
                continue
            peer.attempts = 0
            peer.connects += 1
            if peer.connects > 1:
                counters.reconnects += 1
            peer.state = CONNECTED
            try:
                await self._pump(peer, reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure just ends this connection
                self._ctx.log.info("node %d: connection to node %d lost (%s)", self.node_id, peer.node_id,
                               describe(exc))
            finally:
                writer.close()
                self._ctx.writers.discard(writer)
                if peer.state == CONNECTED:
                    peer.state = IDLE
                peer.clear_queue(counters.dropped, "connection_lost")

    async def _connect(self, peer: OutboundPeer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = peer.addr
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        self._ctx.writers.add(writer)
        nodelay(writer)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await self._ctx.handshake.client(peer.node_id, f"{host}:{port}", reader, writer)
        except BaseException:
            writer.close()
            self._ctx.writers.discard(writer)
            raise
        return reader, writer

    async def _pump(self, peer: OutboundPeer, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """Write everything queued since the last write in one write(); end when the peer closes."""
        loop = asyncio.get_running_loop()
        counters = self._ctx.counters
        closed = loop.create_task(_watch_close(reader))
        closed.add_done_callback(lambda _t: peer.wake())
        # Pause (so that drain() waits) as soon as anything is left unsent, not only above the default
        # 64 KiB: with a backlog below that, drain() returned at once and the loop below spun without
        # ever yielding, freezing the Raft thread's event loop (a peer that stopped reading mid-write).
        writer.transport.set_write_buffer_limits(high=0)
        peer.writer = writer
        try:
            while True:
                if closed.done():
                    raise ConnectionResetError(_close_reason(closed))
                if writer.transport.get_write_buffer_size():
                    # what the last write (this loop's or write_now's) left unsent goes first
                    await self._drain(writer)
                    continue
                chunks = peer.chunks
                if not chunks:
                    peer.waiter = loop.create_future()
                    await peer.waiter
                    peer.waiter = None
                    continue
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                frames = peer.queued_frames
                chunks.clear()
                peer.queued_frames = 0
                peer.queued_bytes = 0
                writer.write(data)
                counters.frames_sent += frames
                counters.bytes_sent += len(data)
        finally:
            peer.waiter = None
            peer.writer = None
            closed.cancel()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait for the write backlog to drain. A peer that stopped reading (paused, blackholed)
        must not hold the queue forever: give up on the connection and let the backoff path take over."""
        try:
            async with asyncio.timeout(self.write_stall_timeout):
                await writer.drain()
        except TimeoutError:
            self._ctx.counters.write_stalls += 1
            raise ConnectionError(f"write stalled for {self.write_stall_timeout}s") from None


async def _watch_close(reader: asyncio.StreamReader) -> bytes:
    """Outbound connections carry nothing back after the handshake except a T_REFUSE; any byte or
    EOF means the peer is done with us."""
    return await reader.read(1024)


def _close_reason(task: asyncio.Task[bytes]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None:
        return describe(exc)
    data = task.result()
    return f"peer sent {data[:64]!r} and closed" if data else "peer closed the connection"
