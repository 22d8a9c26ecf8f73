"""Peer transport: Raft messages between nodes over authenticated TCP connections (asyncio).

Each node keeps one outbound connection per peer (connected lazily on the first send, reconnected
with capped, jittered exponential backoff) and accepts inbound connections from any peer that
passes the HMAC handshake (see `frames.py` and docs/design/transport.md). A connection carries
messages one way, so a peer's messages arrive in order on its connection.

`send()` never blocks: it encodes the payload, appends it to the peer's bounded queue and wakes the
writer, which sends everything queued since its last write in one `write()` (the batching Raft
pipelining relies on). Raft retries, so when a peer is down or its queue is full we drop and say so
(return False) instead of blocking or growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack

from kalamdb.raftio.frames import (
    HANDSHAKE_MAX_FRAME,
    HEADER,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    T_AUTH,
    T_DATA,
    T_HELLO,
    T_REFUSE,
    T_WELCOME,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    encode_frame,
    handshake_mac,
    mac_ok,
    unpack_body,
)

__all__ = ["FrameTooLarge", "PeerTransport"]

READ_CHUNK = 256 * 1024
STREAM_LIMIT = 1 << 20  # StreamReader buffer before it pauses the socket

# Outbound connection states.
IDLE, CONNECTING, CONNECTED, BACKOFF = "idle", "connecting", "connected", "backoff"


class _PeerRefused(Exception):
    """The remote side refused our handshake (it told us why) or closed during it."""


class _Peer:
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
    )

    def __init__(self, node_id: int, addr: tuple[str, int]):
        self.node_id = node_id
        self.addr = addr
        self.chunks: list[bytes] = []
        self.queued_frames = 0
        self.queued_bytes = 0
        self.state = IDLE
        self.waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.attempts = 0  # consecutive failed connects, drives the backoff
        self.connects = 0

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class PeerTransport:
    """Authenticated, batched, bounded message delivery between Raft nodes."""

    def __init__(
        self,
        node_id: int,
        listen: tuple[str, int],
        secret: bytes,
        *,
        on_message: Callable[[int, Any], None],
        cluster_id: str = "kalamdb",
        max_frame_bytes: int = 64 << 20,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        handshake_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        max_queue_frames: int = 65536,
        max_queue_bytes: int = 32 << 20,
        max_pending_handshakes: int = 256,
        max_pending_per_address: int = 16,
        write_stall_timeout: float = 10.0,
        log_every_s: float = 10.0,
    ):
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 1:
            raise ValueError(f"node_id must be an integer >= 1, got {node_id!r}")
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("secret must be non-empty bytes (the shared cluster secret)")
        if not isinstance(cluster_id, str) or not cluster_id:
            raise ValueError("cluster_id must be a non-empty string")
        if max_frame_bytes < HANDSHAKE_MAX_FRAME or max_frame_bytes > 0xFFFFFFFF:
            raise ValueError(f"max_frame_bytes must be in [{HANDSHAKE_MAX_FRAME}, 2**32-1]")
        if not callable(on_message):
            raise TypeError("on_message must be callable(src_id, payload)")
        self.node_id = node_id
        self.listen = listen
        self.cluster_id = cluster_id
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_queue_frames = max_queue_frames
        self.max_queue_bytes = max_queue_bytes
        self.max_pending_handshakes = max_pending_handshakes
        self.max_pending_per_address = max_pending_per_address
        self.write_stall_timeout = write_stall_timeout
        self.bound_port: int | None = None
        self._secret = secret
        self._on_message = on_message
        self._log = logger or logging.getLogger("kalamdb.raftio.transport")
        self._rng = rng or random.Random()
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._running = False
        self._inbound_tasks: set[asyncio.Task] = set()
        self._retired_tasks: set[asyncio.Task] = set()  # cancelled by set_peer/remove_peer
        self._inbound_by_node: dict[int, asyncio.StreamWriter] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        # unauthenticated connections, oldest first: task -> remote address
        self._pending: dict[asyncio.Task, str] = {}
        self._pending_by_address: dict[str, int] = {}
        self._evicted: set[asyncio.Task] = set()
        self._throttle = LogThrottle(self._log, log_every_s)
        # stats
        self._frames_sent = 0
        self._bytes_sent = 0
        self._frames_received = 0
        self._bytes_received = 0
        self._refused: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._refused_by_peer: Counter[str] = Counter()  # what the other side told us
        self._reconnects = 0
        self._connect_failures = 0
        self._callback_errors = 0
        self._write_stalls = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and listen; port 0 picks a free port, published as `bound_port`. `sock`: an already
        listening socket handed over by a parent process (the test kit binds ports race-free)."""
        if self._running:
            raise RuntimeError("transport already started")
        host, port = self.listen
        if sock is not None:
            self._server = await asyncio.start_server(self._serve_inbound, sock=sock, limit=STREAM_LIMIT)
        else:
            self._server = await asyncio.start_server(
                self._serve_inbound, host, port, limit=STREAM_LIMIT, reuse_address=True, backlog=256
            )
        self.bound_port = self._server.sockets[0].getsockname()[1]
        self._running = True
        self._log.info("node %d transport listening on %s:%d", self.node_id, host, self.bound_port)

    async def stop(self) -> None:
        """Close the listener and every connection, cancel every task, and wait until they are gone."""
        self._running = False
        if self._server is not None:
            self._server.close()
        writers = list(self._writers)  # before the tasks' finally blocks forget them
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        tasks += [*self._inbound_tasks, *self._retired_tasks]
        for peer in self._peers.values():
            peer.task = None
            peer.state = IDLE
            self._clear_queue(peer, None)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writers += [w for w in self._writers if w not in writers]
        for w in writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        self._writers.clear()
        self._inbound_by_node.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ peers

    def set_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """Add a peer or change its address (the current outbound connection is dropped)."""
        if type(node_id) is not int or node_id < 1:
            raise ValueError(f"peer node_id must be an integer >= 1, got {node_id!r}")
        if node_id == self.node_id:
            raise ValueError(f"node {node_id} cannot be its own peer")
        host, port = addr
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"peer address must be (host, port), got {addr!r}")
        addr = (host, port)
        peer = self._peers.get(node_id)
        if peer is not None:
            if peer.addr == addr:
                return
            self._stop_outbound(peer)
        self._peers[node_id] = _Peer(node_id, addr)

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer: drop its queue, close our connection to it and its connection to us."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._stop_outbound(peer)
        w = self._inbound_by_node.pop(node_id, None)
        if w is not None:
            w.close()

    def peers(self) -> dict[int, tuple[str, int]]:
        return {nid: p.addr for nid, p in self._peers.items()}

    def _stop_outbound(self, peer: _Peer) -> None:
        self._clear_queue(peer, "peer_removed")
        if peer.task is not None:
            peer.task.cancel()  # stop() still awaits it, so nothing outlives the transport
            self._retired_tasks.add(peer.task)
            peer.task.add_done_callback(self._retired_tasks.discard)
            peer.task = None
        peer.state = IDLE

    # ------------------------------------------------------------------ sending

    def send(self, dst: int, payload: Any) -> bool:
        """Queue one message for `dst`; never blocks. False = dropped (unknown peer, peer down,
        queue full, not running). True = queued, not a promise of delivery."""
        peer = self._accepting(dst)
        if peer is None:
            return False
        body = self._packer.pack([T_DATA, payload])  # TypeError if not msgpack-able: a caller bug
        size = len(body)
        if size > self.max_frame_bytes:
            raise FrameTooLarge(f"message to node {dst} encodes to {size} bytes > {self.max_frame_bytes}")
        if peer.queued_frames >= self.max_queue_frames or (
            peer.queued_bytes and peer.queued_bytes + size + 4 > self.max_queue_bytes
        ):
            self._dropped["queue_full"] += 1
            return False
        chunks = peer.chunks
        chunks.append(HEADER.pack(size))
        chunks.append(body)
        peer.queued_frames += 1
        peer.queued_bytes += size + 4
        self._kick(peer)
        return True

    def send_many(self, dst: int, payloads: list) -> bool:
        """Queue several messages for `dst` as one unit (all or none), written together."""
        peer = self._accepting(dst)
        if peer is None:
            return False
        if not payloads:
            return True
        pack = self._packer.pack
        parts: list[bytes] = []
        for payload in payloads:
            body = pack([T_DATA, payload])
            if len(body) > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"message to node {dst} encodes to {len(body)} bytes > {self.max_frame_bytes}"
                )
            parts.append(HEADER.pack(len(body)))
            parts.append(body)
        blob = b"".join(parts)
        n = len(payloads)
        if peer.queued_frames + n > self.max_queue_frames or (
            peer.queued_bytes and peer.queued_bytes + len(blob) > self.max_queue_bytes
        ):
            self._dropped["queue_full"] += n
            return False
        peer.chunks.append(blob)
        peer.queued_frames += n
        peer.queued_bytes += len(blob)
        self._kick(peer)
        return True

    def _accepting(self, dst: int) -> _Peer | None:
        peer = self._peers.get(dst)
        if peer is None:
            self._dropped["unknown_peer"] += 1
            return None
        if not self._running:
            self._dropped["not_running"] += 1
            return None
        if peer.state == BACKOFF:
            self._dropped["peer_down"] += 1
            return None
        return peer

    def _kick(self, peer: _Peer) -> None:
        if peer.task is None:
            peer.task = asyncio.get_running_loop().create_task(self._run_peer(peer))
        else:
            peer.wake()

    def _clear_queue(self, peer: _Peer, reason: str | None) -> None:
        if reason and peer.queued_frames:
            self._dropped[reason] += peer.queued_frames
        peer.chunks.clear()
        peer.queued_frames = 0
        peer.queued_bytes = 0

    def _backoff_delay(self, attempts: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(attempts, 30)))
        return ceiling * (0.5 + 0.5 * self._rng.random())  # jitter: never all peers in lockstep

    async def _run_peer(self, peer: _Peer) -> None:
        """Connect when there is something to send; pump the queue; back off after failures."""
        loop = asyncio.get_running_loop()
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
                self._connect_failures += 1
                self._clear_queue(peer, "connect_failed")
                delay = self._backoff_delay(peer.attempts)
                peer.attempts += 1
                peer.state = BACKOFF
                if peer.attempts == 1:
                    self._throttle.warning(("unreachable", peer.node_id),
                                           "node %d: cannot reach node %d at %s:%d (%s); retry in %.3fs",
                                           self.node_id, peer.node_id, *peer.addr, _describe(exc), delay)
                else:
                    self._log.debug("node %d: cannot reach node %d at %s:%d (%s); retry in %.3fs",
                                    self.node_id, peer.node_id, *peer.addr, _describe(exc), delay)
                await asyncio.sleep(delay)  # backoff timer, not a wait for state
                peer.state = IDLE
                continue
            peer.attempts = 0
            peer.connects += 1
            if peer.connects > 1:
                self._reconnects += 1
            peer.state = CONNECTED
            try:
                await self._pump(peer, reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure just ends this connection
                self._log.info("node %d: connection to node %d lost (%s)", self.node_id, peer.node_id,
                               _describe(exc))
            finally:
                writer.close()
                self._writers.discard(writer)
                if peer.state == CONNECTED:
                    peer.state = IDLE
                self._clear_queue(peer, "connection_lost")

    async def _connect(self, peer: _Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = peer.addr
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        self._writers.add(writer)
        _nodelay(writer)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await self._client_handshake(peer, reader, writer)
        except BaseException:
            writer.close()
            self._writers.discard(writer)
            raise
        return reader, writer

    async def _client_handshake(self, peer: _Peer, reader, writer) -> None:
        where = f"{peer.addr[0]}:{peer.addr[1]}"
        hello = await self._read_handshake_frame(reader, where)
        if not (isinstance(hello, list) and len(hello) == 5 and hello[0] == T_HELLO
                and hello[1] == PROTOCOL_VERSION and isinstance(hello[4], bytes)
                and len(hello[4]) == NONCE_BYTES):
            raise self._refusal("bad_handshake", f"unexpected hello {hello!r:.120}", where)
        _, _, cluster_id, server_id, server_nonce = hello
        if cluster_id != self.cluster_id:
            raise self._refusal("wrong_cluster", f"peer is in cluster {cluster_id!r:.64}", where)
        if server_id != peer.node_id:
            raise self._refusal("wrong_node", f"expected node {peer.node_id}, found {server_id!r:.32}",
                                where)
        client_nonce = secrets.token_bytes(NONCE_BYTES)
        args = (self.cluster_id, self.node_id, peer.node_id, server_nonce, client_nonce)
        mac = handshake_mac(self._secret, "client", *args)
        writer.write(encode_frame([T_AUTH, PROTOCOL_VERSION, self.cluster_id, self.node_id,
                                   peer.node_id, client_nonce, mac]))
        welcome = await self._read_handshake_frame(reader, where)
        if not (isinstance(welcome, list) and len(welcome) == 2 and welcome[0] == T_WELCOME):
            raise self._refusal("bad_handshake", f"unexpected welcome {welcome!r:.120}", where)
        if not mac_ok(handshake_mac(self._secret, "server", *args), welcome[1]):
            raise self._refusal("bad_hmac", f"node {peer.node_id} did not prove the cluster secret",
                                where)

    async def _pump(self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write everything queued since the last write in one write(); end when the peer closes."""
        loop = asyncio.get_running_loop()
        closed = loop.create_task(_watch_close(reader))
        closed.add_done_callback(lambda _t: peer.wake())
        try:
            while True:
                if closed.done():
                    raise ConnectionResetError(_close_reason(closed))
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
                if writer.transport.get_write_buffer_size():
                    # A peer that stopped reading (paused, blackholed) must not hold the queue
                    # forever: give up on the connection and let the backoff path take over.
                    try:
                        async with asyncio.timeout(self.write_stall_timeout):
                            await writer.drain()
                    except TimeoutError:
                        self._write_stalls += 1
                        raise ConnectionError(f"write stalled for {self.write_stall_timeout}s") from None
                self._frames_sent += frames
                self._bytes_sent += len(data)
        finally:
            peer.waiter = None
            closed.cancel()

    # ------------------------------------------------------------------ receiving

    async def _serve_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio.start_server runs each connection's callback as a task
        self._inbound_tasks.add(task)
        self._writers.add(writer)
        peername = writer.get_extra_info("peername")
        where = f"{peername[0]}:{peername[1]}" if peername else "?"
        address = peername[0] if peername else "?"
        src: int | None = None
        try:
            _nodelay(writer)
            self._admit_handshake(task, address)
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    src = await self._server_handshake(reader, writer, where)
            except TimeoutError:
                raise FrameError("handshake_timeout", f"none in {self.handshake_timeout}s") from None
            finally:
                self._end_handshake(task, address)
            older = self._inbound_by_node.get(src)
            if older is not None:  # the peer reconnected: its old connection is dead or abandoned
                older.close()
            self._inbound_by_node[src] = writer
            await self._receive(src, reader, where)
        except FrameError as exc:
            self._refused[exc.reason] += 1
            self._throttle.warning(("refused", exc.reason), "node %d refused connection from %s (node %s): %s",
                                   self.node_id, where, src if src is not None else "?", exc)
            _try_write(writer, encode_frame([T_REFUSE, exc.reason]))
        except asyncio.CancelledError:
            if task in self._evicted:  # made room for a newer handshake (see _admit_handshake)
                self._evicted.discard(task)
                self._refused["too_many_handshakes"] += 1
                self._throttle.warning(("refused", "too_many_handshakes"),
                                       "node %d closed a handshake from %s to make room for newer ones "
                                       "(more than %d pending from that address or %d in all)", self.node_id,
                                       where, self.max_pending_per_address, self.max_pending_handshakes)
                _try_write(writer, encode_frame([T_REFUSE, "too_many_handshakes"]))
            # else: stop() or remove_peer(); finally closes
        except (_PeerRefused, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self._log.debug("node %d: inbound connection from %s closed (%s)", self.node_id, where,
                            _describe(exc))
        except Exception:  # noqa: BLE001 - a bug here must never take the listener down
            self._log.exception("node %d: inbound connection from %s failed", self.node_id, where)
        finally:
            if src is not None and self._inbound_by_node.get(src) is writer:
                del self._inbound_by_node[src]
            writer.close()
            self._writers.discard(writer)
            self._inbound_tasks.discard(task)

    def _admit_handshake(self, task: asyncio.Task, address: str) -> None:
        """Admit a new unauthenticated connection, making room by closing the OLDEST pending ones
        (from the same address first). A genuine peer finishes its handshake in milliseconds, so
        connections that sit silent cannot keep it out; an attacker would have to open more than
        the caps within one genuine handshake's time, and still holds at most the caps."""
        if self._pending_by_address.get(address, 0) >= self.max_pending_per_address:
            self._evict(next(t for t, a in self._pending.items() if a == address))
        if len(self._pending) >= self.max_pending_handshakes:
            self._evict(next(iter(self._pending)))
        self._pending[task] = address
        self._pending_by_address[address] = self._pending_by_address.get(address, 0) + 1

    def _evict(self, task: asyncio.Task) -> None:
        self._end_handshake(task, self._pending[task])
        self._evicted.add(task)
        task.cancel()

    def _end_handshake(self, task: asyncio.Task, address: str) -> None:
        if self._pending.pop(task, None) is None:
            return  # already ended (evicted)
        left = self._pending_by_address[address] - 1
        if left:
            self._pending_by_address[address] = left
        else:
            del self._pending_by_address[address]

    async def _server_handshake(self, reader, writer, where: str) -> int:
        server_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(encode_frame([T_HELLO, PROTOCOL_VERSION, self.cluster_id, self.node_id, server_nonce]))
        auth = await self._read_handshake_frame(reader, where, count=False)
        if not (isinstance(auth, list) and len(auth) == 7 and auth[0] == T_AUTH):
            raise FrameError("bad_handshake", f"unexpected auth message {auth!r:.120}")
        _, version, cluster_id, client_id, server_id, client_nonce, mac = auth
        if version != PROTOCOL_VERSION:
            raise FrameError("bad_handshake", f"protocol version {version!r:.32} != {PROTOCOL_VERSION}")
        if cluster_id != self.cluster_id:
            raise FrameError("wrong_cluster", f"client is in cluster {cluster_id!r:.64}")
        if server_id != self.node_id:
            raise FrameError("wrong_node", f"client wanted node {server_id!r:.32}, this is {self.node_id}")
        if not (type(client_id) is int and isinstance(client_nonce, bytes)
                and len(client_nonce) == NONCE_BYTES):
            raise FrameError("bad_handshake", "client id or nonce of the wrong type")
        args = (self.cluster_id, client_id, self.node_id, server_nonce, client_nonce)
        if not mac_ok(handshake_mac(self._secret, "client", *args), mac):
            raise FrameError("bad_hmac", f"client claiming node {client_id} did not prove the secret")
        if client_id not in self._peers:
            raise FrameError("unknown_node", f"node {client_id} is not a known peer")
        writer.write(encode_frame([T_WELCOME, handshake_mac(self._secret, "server", *args)]))
        self._log.debug("node %d: accepted node %d from %s", self.node_id, client_id, where)
        return client_id

    async def _read_handshake_frame(self, reader: asyncio.StreamReader, where: str, count: bool = True):
        """One small frame; a T_REFUSE from the other side becomes _PeerRefused."""
        try:
            header = await reader.readexactly(4)
            n = HEADER.unpack(header)[0]
            if n > HANDSHAKE_MAX_FRAME:
                raise FrameError("oversized_frame", f"handshake frame of {n} bytes")
            msg = unpack_body(await reader.readexactly(n), n)
        except FrameError as exc:
            if count:  # client side: count/log here; the server side does it in _serve_inbound
                raise self._refusal(exc.reason, exc.detail, where) from None
            raise
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == T_REFUSE:
            reason = str(msg[1])[:64]
            self._refused_by_peer[reason] += 1
            raise _PeerRefused(f"{where} refused us: {reason}")
        return msg

    def _refusal(self, reason: str, detail: str, where: str) -> Exception:
        """Count and log a refusal on our outbound side; the caller raises the result."""
        self._refused[reason] += 1
        self._throttle.warning(("refused_peer", reason), "node %d refused peer at %s: %s: %s", self.node_id,
                               where, reason, detail)
        return _PeerRefused(f"{reason}: {detail}")

    async def _receive(self, src: int, reader: asyncio.StreamReader, where: str) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        on_message = self._on_message
        read = reader.read
        while True:
            data = await read(READ_CHUNK)
            if not data:
                return
            self._bytes_received += len(data)
            for msg in decoder.feed(data):
                if type(msg) is not list or len(msg) != 2 or msg[0] != T_DATA:
                    raise FrameError("bad_shape", f"expected [{T_DATA}, payload], got {msg!r:.80}")
                self._frames_received += 1
                try:
                    on_message(src, msg[1])
                except Exception:  # noqa: BLE001 - a callback bug must not cost the peer its connection
                    self._callback_errors += 1
                    self._log.exception("node %d: on_message failed for a message from node %d",
                                        self.node_id, src)

    # ------------------------------------------------------------------ stats

    @property
    def stats(self) -> dict:
        return {
            "frames_sent": self._frames_sent,
            "bytes_sent": self._bytes_sent,
            "frames_received": self._frames_received,
            "bytes_received": self._bytes_received,
            "refused": dict(self._refused),
            "refused_total": sum(self._refused.values()),
            "refused_by_peer": dict(self._refused_by_peer),
            "dropped": dict(self._dropped),
            "dropped_total": sum(self._dropped.values()),
            "reconnects": self._reconnects,
            "connect_failures": self._connect_failures,
            "callback_errors": self._callback_errors,
            "write_stalls": self._write_stalls,
            "inbound_connections": len(self._inbound_by_node),
            "pending_handshakes": len(self._pending),
            "peers": {nid: {"state": p.state, "queued_frames": p.queued_frames,
                            "queued_bytes": p.queued_bytes}
                      for nid, p in self._peers.items()},
        }


class LogThrottle:
    """At most one log line per key and interval; the next line says how many were left out. A
    port anyone can reach must not turn a connection flood into a disk-filling log flood."""

    def __init__(self, logger: logging.Logger, every_s: float):
        self._log = logger
        self._every_s = every_s
        self._last: dict[Any, float] = {}
        self._suppressed: Counter = Counter()

    def warning(self, key: Any, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            self._suppressed[key] += 1
            return
        if len(self._last) > 1024:  # keys are bounded in practice (reasons); never grow without end
            self._last.clear()
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" ({skipped} similar message(s) suppressed in the last {self._every_s:g} s)"
        self._log.warning(msg, *args)


async def _watch_close(reader: asyncio.StreamReader) -> bytes:
    """Outbound connections carry nothing back after the handshake except a T_REFUSE; any byte or
    EOF means the peer is done with us."""
    return await reader.read(1024)


def _close_reason(task: asyncio.Task) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None:
        return _describe(exc)
    data = task.result()
    return f"peer sent {data[:64]!r} and closed" if data else "peer closed the connection"


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _try_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Best-effort last word to a peer we are about to close on; it may already be gone."""
    if not writer.is_closing():
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write(data)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
