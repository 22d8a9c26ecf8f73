"""Authenticating a new peer connection, both sides of it: the HMAC challenge-response of
`frames.py` run over asyncio streams (docs/design/transport.md, "Wire format" and "Refusals"), what counts as a
refusal and how it is counted and logged, and the socket setup both sides do before it. Nothing is
delivered on a connection before its handshake succeeds; the listener (`inbound.py`) runs the
server side, the outbound links (`outbound.py`) the client side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable

from kalamdb.raftio.frames import (
    HANDSHAKE_MAX_FRAME,
    HEADER,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    T_AUTH,
    T_HELLO,
    T_REFUSE,
    T_WELCOME,
    FrameError,
    encode_frame,
    handshake_mac,
    mac_ok,
    unpack_body,
)
from kalamdb.raftio.transport_stats import LogThrottle, TransportCounters

STREAM_LIMIT = 1 << 20  # StreamReader buffer before it pauses the socket


class PeerRefused(Exception):
    """The remote side refused our handshake (it told us why) or closed during it."""


class Handshake:
    """One node's side of the handshake: who we are, the shared secret, and where refusals go."""

    def __init__(self, node_id: int, cluster_id: str, secret: bytes, counters: TransportCounters,
                 throttle: LogThrottle, logger: logging.Logger):
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._secret = secret
        self._counters = counters
        self._throttle = throttle
        self._log = logger

    async def client(self, peer_id: int, where: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        """Prove the secret to node `peer_id` at `where` and check that it proves it back. Raises
        PeerRefused (counted and logged) on any mismatch or a refusal from the other side."""
        hello = await self.read_frame(reader, where)
        if not (isinstance(hello, list) and len(hello) == 5 and hello[0] == T_HELLO
                and hello[1] == PROTOCOL_VERSION and isinstance(hello[4], bytes)
                and len(hello[4]) == NONCE_BYTES):
            raise self.refusal("bad_handshake", f"unexpected hello {hello!r:.120}", where)
        _, _, cluster_id, server_id, server_nonce = hello
        if cluster_id != self.cluster_id:
            raise self.refusal("wrong_cluster", f"peer is in cluster {cluster_id!r:.64}", where)
        if server_id != peer_id:
            raise self.refusal("wrong_node", f"expected node {peer_id}, found {server_id!r:.32}", where)
        client_nonce = secrets.token_bytes(NONCE_BYTES)
        args = (self.cluster_id, self.node_id, peer_id, server_nonce, client_nonce)
        mac = handshake_mac(self._secret, "client", *args)
        writer.write(encode_frame([T_AUTH, PROTOCOL_VERSION, self.cluster_id, self.node_id,
                                   peer_id, client_nonce, mac]))
        welcome = await self.read_frame(reader, where)
        if not (isinstance(welcome, list) and len(welcome) == 2 and welcome[0] == T_WELCOME):
            raise self.refusal("bad_handshake", f"unexpected welcome {welcome!r:.120}", where)
        if not mac_ok(handshake_mac(self._secret, "server", *args), welcome[1]):
            raise self.refusal("bad_hmac", f"node {peer_id} did not prove the cluster secret", where)

    async def server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str,
                     is_peer: Callable[[int], bool]) -> int:
        """Challenge a connecting node; returns its id once it proved the secret and `is_peer` knows
        it. Raises FrameError (the caller counts, logs and answers T_REFUSE) otherwise."""
        server_nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(encode_frame([T_HELLO, PROTOCOL_VERSION, self.cluster_id, self.node_id, server_nonce]))
        auth = await self.read_frame(reader, where, count=False)
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
        if not is_peer(client_id):
            raise FrameError("unknown_node", f"node {client_id} is not a known peer")
        writer.write(encode_frame([T_WELCOME, handshake_mac(self._secret, "server", *args)]))
        self._log.debug("node %d: accepted node %d from %s", self.node_id, client_id, where)
        return client_id

    async def read_frame(self, reader: asyncio.StreamReader, where: str, count: bool = True) -> object:
        """One small frame; a T_REFUSE from the other side becomes PeerRefused."""
        try:
            header = await reader.readexactly(4)
            n = HEADER.unpack(header)[0]
            if n > HANDSHAKE_MAX_FRAME:
                raise FrameError("oversized_frame", f"handshake frame of {n} bytes")
            msg = unpack_body(await reader.readexactly(n), n)
        except FrameError as exc:
            if count:  # client side: count/log here; the server side does it in inbound.py
                raise self.refusal(exc.reason, exc.detail, where) from None
            raise
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == T_REFUSE:
            reason = str(msg[1])[:64]
            self._counters.refused_by_peer[reason] += 1
            raise PeerRefused(f"{where} refused us: {reason}")
        return msg

    def refusal(self, reason: str, detail: str, where: str) -> Exception:
        """Count and log a refusal on our outbound side; the caller raises the result."""
        self._counters.refused[reason] += 1
        self._throttle.warning(("refused_peer", reason), "node %d refused peer at %s: %s: %s", self.node_id,
                               where, reason, detail)
        return PeerRefused(f"{reason}: {detail}")


def nodelay(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY on a TCP connection, so that Nagle's algorithm never holds a small Raft message back."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def try_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Best-effort last word to a peer we are about to close on; it may already be gone."""
    if not writer.is_closing():
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write(data)
