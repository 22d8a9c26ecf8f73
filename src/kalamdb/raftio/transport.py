"""Peer transport: Raft messages between nodes over authenticated TCP connections (asyncio).

Each node keeps one outbound connection per peer (connected lazily on the first send, reconnected
with capped, jittered exponential backoff) and accepts inbound connections from any peer that
passes the HMAC handshake (see `frames.py` and docs/design/transport.md). A connection carries
messages one way, so a peer's messages arrive in order on its connection.

`send()` never blocks: it encodes the payload, appends it to the peer's bounded queue and wakes the
writer, which sends everything queued since its last write in one `write()` (the batching Raft
pipelining relies on). Raft retries, so when a peer is down or its queue is full we drop and say so
(return False) instead of blocking or growing without bound.

This module is the facade and the sending half: lifecycle, the peer table, `send()` and `stats`. The
listener is `inbound.py`, the per-peer outbound links `outbound.py`, the handshake both use
`handshake.py`, and the counters and log throttle they share `transport_stats.py`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

import msgpack

from kalamdb.raftio.frames import HANDSHAKE_MAX_FRAME, HEADER, T_DATA, FrameTooLarge
from kalamdb.raftio.handshake import STREAM_LIMIT, Handshake
from kalamdb.raftio.inbound import Listener
from kalamdb.raftio.links import LinkContext
from kalamdb.raftio.outbound import BACKOFF, IDLE, OutboundLinks, OutboundPeer
from kalamdb.raftio.transport_stats import LogThrottle, TransportCounters

__all__ = ["FrameTooLarge", "LogThrottle", "PeerTransport"]


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
        self.max_queue_frames = max_queue_frames
        self.max_queue_bytes = max_queue_bytes
        self.bound_port: int | None = None
        self._log = logger or logging.getLogger("kalamdb.raftio.transport")
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._peers: dict[int, OutboundPeer] = {}
        self._server: asyncio.Server | None = None
        self._running = False
        self._retired_tasks: set[asyncio.Task[None]] = set()  # cancelled by set_peer/remove_peer
        self._writers: set[asyncio.StreamWriter] = set()  # every open connection, both directions
        self._counters = TransportCounters()
        throttle = LogThrottle(self._log, log_every_s)
        handshake = Handshake(node_id, cluster_id, secret, self._counters, throttle, self._log)
        links = LinkContext(node_id, handshake, self._counters, self._writers, throttle, self._log)
        self._outbound = OutboundLinks(
            links, rng or random.Random(),
            connect_timeout=connect_timeout, handshake_timeout=handshake_timeout,
            backoff_base=backoff_base, backoff_cap=backoff_cap, write_stall_timeout=write_stall_timeout)
        self._inbound = Listener(
            links,
            on_message=on_message, is_peer=self._peers.__contains__, max_frame_bytes=max_frame_bytes,
            handshake_timeout=handshake_timeout, max_pending_handshakes=max_pending_handshakes,
            max_pending_per_address=max_pending_per_address)

    # ------------------------------------------------------------------ settings (held by the parts)

    @property
    def handshake_timeout(self) -> float:
        return self._inbound.handshake_timeout

    @property
    def connect_timeout(self) -> float:
        return self._outbound.connect_timeout

    @property
    def backoff_base(self) -> float:
        return self._outbound.backoff_base

    @property
    def backoff_cap(self) -> float:
        return self._outbound.backoff_cap

    @property
    def write_stall_timeout(self) -> float:
        return self._outbound.write_stall_timeout

    @property
    def max_pending_handshakes(self) -> int:
        return self._inbound.admission.max_pending

    @property
    def max_pending_per_address(self) -> int:
        return self._inbound.admission.max_per_address

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and listen; port 0 picks a free port, published as `bound_port`. `sock`: an already
        listening socket handed over by a parent process (the test kit binds ports race-free)."""
        if self._running:
            raise RuntimeError("transport already started")
        host, port = self.listen
        serve = self._inbound.serve
        if sock is not None:
            self._server = await asyncio.start_server(serve, sock=sock, limit=STREAM_LIMIT)
        else:
            self._server = await asyncio.start_server(
                serve, host, port, limit=STREAM_LIMIT, reuse_address=True, backlog=256
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
        tasks += [*self._inbound.tasks, *self._retired_tasks]
        for peer in self._peers.values():
            peer.task = None
            peer.state = IDLE
            peer.clear_queue(self._counters.dropped, None)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writers += [w for w in self._writers if w not in writers]
        for w in writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        self._writers.clear()
        self._inbound.by_node.clear()
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
        self._peers[node_id] = OutboundPeer(node_id, addr)

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer: drop its queue, close our connection to it and its connection to us."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._stop_outbound(peer)
        self._inbound.close_from(node_id)

    def peers(self) -> dict[int, tuple[str, int]]:
        return {nid: p.addr for nid, p in self._peers.items()}

    def _stop_outbound(self, peer: OutboundPeer) -> None:
        peer.clear_queue(self._counters.dropped, "peer_removed")
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
            self._counters.dropped["queue_full"] += 1
            return False
        chunks = peer.chunks
        chunks.append(HEADER.pack(size))
        chunks.append(body)
        peer.queued_frames += 1
        peer.queued_bytes += size + 4
        self._outbound.kick(peer)
        return True

    def send_many(self, dst: int, payloads: list) -> bool:
        """Queue several messages for `dst` as one unit (all or none), written together: right away
        when the link is idle (the Ready loop's one batch per peer per step: a leader's early
        AppendEntries leave before its fsync), else behind what is queued. `send` always queues, so
        the many single messages of one loop iteration (forwarded proposals) share one write."""
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
            self._counters.dropped["queue_full"] += n
            return False
        if self._outbound.write_now(peer, blob, n):
            return True
        peer.chunks.append(blob)
        peer.queued_frames += n
        peer.queued_bytes += len(blob)
        self._outbound.kick(peer)
        return True

    def _accepting(self, dst: int) -> OutboundPeer | None:
        peer = self._peers.get(dst)
        if peer is None:
            self._counters.dropped["unknown_peer"] += 1
            return None
        if not self._running:
            self._counters.dropped["not_running"] += 1
            return None
        if peer.state == BACKOFF:
            self._counters.dropped["peer_down"] += 1
            return None
        return peer

    # ------------------------------------------------------------------ stats

    @property
    def stats(self) -> dict:
        c = self._counters
        return {
            "frames_sent": c.frames_sent,
            "bytes_sent": c.bytes_sent,
            "frames_received": c.frames_received,
            "bytes_received": c.bytes_received,
            "refused": dict(c.refused),
            "refused_total": sum(c.refused.values()),
            "refused_by_peer": dict(c.refused_by_peer),
            "dropped": dict(c.dropped),
            "dropped_total": sum(c.dropped.values()),
            "reconnects": c.reconnects,
            "connect_failures": c.connect_failures,
            "callback_errors": c.callback_errors,
            "write_stalls": c.write_stalls,
            "inbound_connections": len(self._inbound.by_node),
            "pending_handshakes": len(self._inbound.admission),
            "peers": {nid: {"state": p.state, "queued_frames": p.queued_frames,
                            "queued_bytes": p.queued_bytes}
                      for nid, p in self._peers.items()},
        }
