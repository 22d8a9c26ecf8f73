"""Wire format of the peer transport, without I/O: frames, the handshake messages and their MACs.

A frame is a 4-byte big-endian body length followed by one msgpack value (never pickle). Every
body is a list whose first element says what it is (`T_*`). Keeping this sans-IO lets the tests
and the simulator check the limits byte by byte, and keeps `transport.py` about sockets only.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterator
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
NONCE_BYTES = 16
HANDSHAKE_MAX_FRAME = 4096  # an unauthenticated peer never makes us buffer more than this

# Body tags.
T_HELLO = 1  # server -> client: [T_HELLO, version, cluster_id, server_id, server_nonce]
T_AUTH = 2  # client -> server: [T_AUTH, version, cluster_id, client_id, server_id, client_nonce, mac]
T_WELCOME = 3  # server -> client: [T_WELCOME, mac]
T_DATA = 4  # either way after the handshake: [T_DATA, payload]
T_REFUSE = 5  # best-effort last word before a close: [T_REFUSE, reason]

HEADER = struct.Struct(">I")

# Why a connection was refused; every one is logged with the peer address and counted in stats.
REFUSAL_REASONS = (
    "unknown_node",  # authenticated, but not a node we know (or our own id)
    "wrong_node",  # the peer at that address is not the node we (or it) expected
    "wrong_cluster",  # cluster_id differs
    "bad_hmac",  # does not know the cluster secret (or forged the handshake)
    "bad_handshake",  # handshake message of the wrong shape, type or version
    "handshake_timeout",  # handshake not finished in time
    "too_many_handshakes",  # too many unauthenticated connections at once
    "oversized_frame",  # announced length above the limit
    "malformed_msgpack",  # body is not exactly one valid msgpack value
    "bad_shape",  # valid msgpack but not a [T_DATA, payload] list
)


class FrameError(Exception):
    """The byte stream broke the protocol; the connection must be refused and closed."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REFUSAL_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FrameTooLarge(ValueError):
    """A caller tried to send a payload that encodes above max_frame_bytes (a bug in the caller:
    split it, as snapshot chunks do); raised rather than dropped so it cannot loop silently."""


def unpack_body(body: Any, max_len: int) -> Any:
    """Decode one msgpack value with every length bounded; extension types are refused."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=False,
            max_str_len=max_len,
            max_bin_len=max_len,
            max_array_len=max_len,
            max_map_len=max_len,
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises ValueError, FormatError, StackError, ExtraData, TypeError...
        raise FrameError("malformed_msgpack", f"{type(exc).__name__}: {exc}"[:200]) from None


def encode_frame(obj: Any) -> bytes:
    """One complete frame (header + body) for a small control message."""
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a TCP byte stream into decoded frames.

    The length is checked against the limit as soon as the header arrives, before the body is
    buffered, so an oversized frame costs 4 bytes, not max_frame_bytes of memory.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Any]:
        """Yield every value completed by `data`, in order; raise FrameError at the first bad one
        (values before it have been yielded already)."""
        buf = self._buf
        buf += data
        limit = self.max_frame_bytes
        unpack_header = HEADER.unpack_from
        size = len(buf)
        pos = 0
        view = memoryview(buf)
        try:
            while size - pos >= 4:
                n = unpack_header(view, pos)[0]
                if n > limit:
                    raise FrameError("oversized_frame", f"{n} bytes > limit {limit}")
                end = pos + 4 + n
                if end > size:
                    break
                body = view[pos + 4 : end]
                try:
                    value = unpack_body(body, n)
                finally:
                    body.release()  # a traceback may hold it; the buffer must stay resizable
                pos = end
                yield value
        finally:
            view.release()
            if pos:
                del buf[:pos]


def _transcript(role: bytes, cluster_id: str, client_id: int, server_id: int, server_nonce: bytes,
                client_nonce: bytes) -> bytes:
    # The role label keeps a server's answer from being replayed as a client's proof (reflection).
    return msgpack.packb([b"kalamdb-raft-transport-v1", role, cluster_id, client_id, server_id,
                          server_nonce, client_nonce], use_bin_type=True)


def handshake_mac(secret: bytes, role: str, cluster_id: str, client_id: int, server_id: int,
                  server_nonce: bytes, client_nonce: bytes) -> bytes:
    """HMAC-SHA256 over both nonces and both ids; `role` is "client" or "server"."""
    msg = _transcript(role.encode(), cluster_id, client_id, server_id, server_nonce, client_nonce)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def mac_ok(expected: bytes, got: Any) -> bool:
    return isinstance(got, bytes) and hmac.compare_digest(expected, got)
