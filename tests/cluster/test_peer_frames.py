"""The Raft port refuses forged and malformed frames and the node keeps serving."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest

from kalamdb.testing.process import NodeProcess

pytestmark = pytest.mark.cluster


def _talk(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        try:
            s.recv(4096)  # the server's hello / nonce
        except TimeoutError:
            pass
        s.sendall(payload)
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_forged_oversized_and_malformed_frames_are_refused(cluster):
    c = cluster
    target = c.get_node(1)
    if not isinstance(target, NodeProcess):
        pytest.skip("needs the node's Raft port, which an external cluster's URLs do not give the kit")
    garbage = [
        b"\x00\x00\x00\x05hello",  # not msgpack
        struct.pack(">I", 1 << 31) + b"x" * 16,  # oversized length
        struct.pack(">I", 3) + msgpack.packb([1, 2]),  # truncated/short body
        _frame(["hello", 99, "wrong-cluster", b"\x00" * 16, b"\x01" * 32]),  # forged handshake
        b"GET / HTTP/1.1\r\n\r\n",
    ]
    for g in garbage:
        _talk(target.placement.rpc_port, g)
    assert target.is_running()
    # the cluster still replicates through that node
    ns = c.unique_namespace("frames")
    r = target.sql(f"CREATE NAMESPACE {ns}").raise_for_error()
    c.wait_for_replication(r.raft_index)
    log = target.log_path.read_text()
    assert "refus" in log.lower(), log[-2000:]


def _frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body
