"""Node-level findings of the adversarial review (issue 11), on real server processes: no cluster
node with a guessable secret, private files, bounded HTTP connections, no version banner."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from kalamdb.testing.ports import free_port_block
from kalamdb.testing.single import start_server
from kalamdb.testing.waiting import wait_for


def _serve_cluster_node(tmp_path, secret: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    env.update({"KALAMDB_NODE_ID": "1", "KALAMDB_CLUSTER_RPC_ADDR": f"127.0.0.1:{free_port_block(1)}"})
    if secret is not None:
        env["KALAMDB_CLUSTER_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "kalamdb", "serve", "--port", "0", "--data-dir", str(tmp_path / "d")],
                          env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("secret", [None, "", "short"])
def test_a_cluster_node_without_a_real_secret_refuses_to_start(tmp_path, secret):
    done = _serve_cluster_node(tmp_path, secret)
    assert done.returncode != 0
    assert "cluster.secret" in done.stderr and "sign a root token" in done.stderr, done.stderr


def test_data_files_and_directories_are_private(tmp_path):
    server = start_server(tmp_path / "data")
    try:
        server.client().sql("CREATE USER carol WITH PASSWORD 'carol-password' ROLE user").raise_for_error()
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "data", *(tmp_path / "data").rglob("*")]}
    finally:
        server.stop()
    assert any(p.name == "state.sqlite" for p in modes) and len(modes) > 2
    for path, mode in modes.items():
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: readable by other local users"


def test_the_local_cluster_secret_is_private_from_creation(tmp_path):
    from kalamdb.node.cluster_cli import _cluster_secret

    secret = _cluster_secret(tmp_path)
    path = tmp_path / "cluster.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(secret) >= 32
    assert _cluster_secret(tmp_path) == secret  # restarts reuse it
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def guarded_server(tmp_path):
    server = start_server(tmp_path / "data", config={"limits": {"http_idle_timeout_s": 1.0,
                                                                 "max_connections_per_address": 20}})
    yield server
    server.kill()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_and_half_sent_connections_are_closed(guarded_server):
    idle = socket.create_connection(("127.0.0.1", guarded_server.port))
    partial = socket.create_connection(("127.0.0.1", guarded_server.port))
    partial.sendall(b"POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nContent-Le")  # never finishes its headers
    for s in (idle, partial):
        s.settimeout(0.2)
    started = time.monotonic()
    wait_for(lambda: _closed_by_peer(idle) and _closed_by_peer(partial), timeout=10,
             what="the idle and the half-sent connection to be closed")
    assert time.monotonic() - started < 8
    assert guarded_server.client().health()["status"] == "healthy"


def test_a_body_that_never_finishes_arriving_is_cut_like_an_idle_connection(guarded_server):
    slow = socket.create_connection(("127.0.0.1", guarded_server.port))
    slow.sendall(b"POST /v1/api/sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"sql\": ")  # 90 short
    slow.settimeout(0.2)
    started = time.monotonic()
    wait_for(lambda: _closed_by_peer(slow), timeout=10, what="the connection with the unfinished body to be closed")
    assert time.monotonic() - started < 8
    assert guarded_server.client().health()["status"] == "healthy"


def test_one_address_cannot_hold_more_than_its_share_of_connections(guarded_server):
    socks = [socket.create_connection(("127.0.0.1", guarded_server.port)) for _ in range(40)]
    for s in socks:
        s.settimeout(0.1)
    wait_for(lambda: sum(_closed_by_peer(s) for s in socks) >= 20, timeout=10,
             what="the connections above the per-address limit to be closed")
    assert guarded_server.client().health()["status"] == "healthy"
    for s in socks:
        s.close()


def test_responses_do_not_name_python_or_aiohttp(server):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v1/api/healthcheck", timeout=10) as r:
        banner = r.headers.get("Server", "")
    assert "Python" not in banner and "aiohttp" not in banner and banner == "kalamdb"
