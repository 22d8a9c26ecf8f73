"""The accepting side of the peer transport: every connection to our port is admitted under caps
on unauthenticated connections (in all and per remote address), must pass the server side of the
handshake within `handshake_timeout`, and only then has its frames decoded and handed to
`on_message`. A second authenticated connection from the same node replaces the first. A port
anyone can reach must survive floods, garbage and slow-loris clients without taking the listener
down (docs/design/transport.md, "Refusals" and "Threat model")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from kalamdb.raftio.frames import T_DATA, T_REFUSE, FrameDecoder, FrameError, encode_frame
from kalamdb.raftio.handshake import PeerRefused, nodelay, try_write
from kalamdb.raftio.links import LinkContext
from kalamdb.raftio.transport_stats import describe


class _FramesReceived(asyncio.Protocol):
    """An authenticated connection's data phase: every chunk the socket delivers is decoded and its
    frames handed on inside the transport's own callback. Reading them through the handshake's
    StreamReader instead cost a future and a wake-up of the reading task per chunk, one more turn of
    the Raft thread's loop before a message reached the core, on every node for every message
    (docs/PERFORMANCE.md). `ended` resolves with what ended the connection: None for a clean close,
    else the error (a FrameError, the socket's)."""

    def __init__(self, stream_protocol: asyncio.BaseProtocol, deliver: Callable[[bytes], None]):
        self._stream_protocol = stream_protocol  # still told of the end: its writer's wait_closed() waits for that
        self._deliver = deliver
        self._early: list[bytes] | None = []  # chunks that came before start(), delivered by it
        self.ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def start(self, buffered: bytes) -> None:
        """Deliver what the handshake's reader still held, then everything that came meanwhile."""
        early, self._early = self._early, None
        for chunk in [buffered, *(early or [])]:
            if chunk:
                self.data_received(chunk)

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        if self._early is not None:
            self._early.append(data)
            return
        try:
            self._deliver(data)
        except Exception as exc:  # noqa: BLE001 - a bad frame (FrameError) or a decoding bug: end this connection
            self.ended.set_result(exc)

    def eof_received(self) -> bool:
        if not self.ended.done():
            self.ended.set_result(None)
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)
        self._stream_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()


class HandshakeAdmission:
    """The unauthenticated connections, oldest first, under a cap in all and one per address."""

    def __init__(self, max_pending: int, max_per_address: int):
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self._pending: dict[asyncio.Task[None], str] = {}  # task -> remote address, oldest first
        self._by_address: dict[str, int] = {}
        self._evicted: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def admit(self, task: asyncio.Task[None], address: str) -> None:
        """Admit a new unauthenticated connection, making room by closing the OLDEST pending ones
        (from the same address first). A genuine peer finishes its handshake in milliseconds, so
        connections that sit silent cannot keep it out; an attacker would have to open more than
        the caps within one genuine handshake's time, and still holds at most the caps."""
        if self._by_address.get(address, 0) >= self.max_per_address:
            self._evict(next(t for t, a in self._pending.items() if a == address))
        if len(self._pending) >= self.max_pending:
            self._evict(next(iter(self._pending)))
        self._pending[task] = address
        self._by_address[address] = self._by_address.get(address, 0) + 1

    def end(self, task: asyncio.Task[None], address: str) -> None:
        """The handshake of `task` is over (done, failed or evicted)."""
        if self._pending.pop(task, None) is None:
            return  # already ended (evicted)
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    def take_evicted(self, task: asyncio.Task[None]) -> bool:
        """Whether `task` was cancelled to make room (and forget that it was)."""
        if task in self._evicted:
            self._evicted.discard(task)
            return True
        return False

    def _evict(self, task: asyncio.Task[None]) -> None:
        self.end(task, self._pending[task])
        self._evicted.add(task)
        task.cancel()


class Listener:
    """Serves each inbound connection: admission, handshake, then receiving until it closes."""

    def __init__(self, ctx: LinkContext, *,
                 on_message: Callable[[int, object], None], is_peer: Callable[[int], bool],
                 max_frame_bytes: int, handshake_timeout: float, max_pending_handshakes: int,
                 max_pending_per_address: int):
        self._ctx = ctx
        self.node_id = ctx.node_id
        self._on_message = on_message
        self._is_peer = is_peer
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout = handshake_timeout
        self.admission = HandshakeAdmission(max_pending_handshakes, max_pending_per_address)
        self.tasks: set[asyncio.Task[None]] = set()
        self.by_node: dict[int, asyncio.StreamWriter] = {}  # the authenticated connection of each node

    def close_from(self, node_id: int) -> None:
        """Close the connection `node_id` made to us, if any."""
        w = self.by_node.pop(node_id, None)
        if w is not None:
            w.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The `asyncio.start_server` callback: one inbound connection, start to end."""
        task = asyncio.current_task()
        assert task is not None  # asyncio.start_server runs each connection's callback as a task
        self.tasks.add(task)
        self._ctx.writers.add(writer)
        peername = writer.get_extra_info("peername")
        where = f"{peername[0]}:{peername[1]}" if peername else "?"
        address = peername[0] if peername else "?"
        src: int | None = None
        try:
            nodelay(writer)
            self.admission.admit(task, address)
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    src = await self._ctx.handshake.server(reader, writer, where, self._is_peer)
            except TimeoutError:
                raise FrameError("handshake_timeout", f"none in {self.handshake_timeout}s") from None
            finally:
                self.admission.end(task, address)
            older = self.by_node.get(src)
            if older is not None:  # the peer reconnected: its old connection is dead or abandoned
                older.close()
            self.by_node[src] = writer
            ended = await self._receive(src, reader, writer)
            if ended is not None:
                raise ended
        except FrameError as exc:
            self._ctx.counters.refused[exc.reason] += 1
            self._ctx.throttle.warning(("refused", exc.reason), "node %d refused connection from %s (node %s): %s",
                                   self.node_id, where, src if src is not None else "?", exc)
            try_write(writer, encode_frame([T_REFUSE, exc.reason]))
        except asyncio.CancelledError:
            if self.admission.take_evicted(task):  # made room for a newer handshake (see admit)
                self._ctx.counters.refused["too_many_handshakes"] += 1
                self._ctx.throttle.warning(("refused", "too_many_handshakes"),
                                       "node %d closed a handshake from %s to make room for newer ones "
                                       "(more than %d pending from that address or %d in all)", self.node_id,
                                       where, self.admission.max_per_address, self.admission.max_pending)
                try_write(writer, encode_frame([T_REFUSE, "too_many_handshakes"]))
            # else: stop() or remove_peer(); finally closes
        except (PeerRefused, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self._ctx.log.debug("node %d: inbound connection from %s closed (%s)", self.node_id, where,
                            describe(exc))
        except Exception:
            self._ctx.log.exception("node %d: inbound connection from %s failed", self.node_id, where)
        finally:
            if src is not None and self.by_node.get(src) is writer:
                del self.by_node[src]
            writer.close()
            self._ctx.writers.discard(writer)
            self.tasks.discard(task)

    async def _receive(self, src: int, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> BaseException | None:
        """Receive frames from authenticated node `src` until the connection ends; what ended it.
        The transport's protocol is swapped for `_FramesReceived`; the bytes the handshake's reader
        had buffered beyond the handshake (a peer may send right after its proof) go first."""
        decoder = FrameDecoder(self.max_frame_bytes)
        on_message = self._on_message
        counters = self._ctx.counters
        log = self._ctx.log
        node_id = self.node_id

        def deliver(data: bytes) -> None:
            counters.bytes_received += len(data)
            for msg in decoder.feed(data):
                if type(msg) is not list or len(msg) != 2 or msg[0] != T_DATA:
                    raise FrameError("bad_shape", f"expected [{T_DATA}, payload], got {msg!r:.80}")
                counters.frames_received += 1
                try:
                    on_message(src, msg[1])
                except Exception:
                    counters.callback_errors += 1
                    log.exception("node %d: on_message failed for a message from node %d", node_id, src)

        transport = cast(asyncio.Transport, writer.transport)
        if transport.is_closing() or reader.at_eof():
            return None  # gone during the handshake
        frames = _FramesReceived(transport.get_protocol(), deliver)
        transport.set_protocol(frames)
        reader.feed_eof()  # the reader gets nothing more: what it holds now is all it will ever have
        frames.start(await reader.read())  # returns at once: the reader is at its end
        return await frames.ended
