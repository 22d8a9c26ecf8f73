"""`kalamdb cluster up`: the main job. Real processes, one token valid on every node, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from kalamdb.client import Client
from kalamdb.testing.ports import free_port_block

pytestmark = pytest.mark.cluster


def test_cluster_up_serves_one_cluster_with_shared_tokens_and_stops_cleanly(tmp_path):
    base = free_port_block(6)
    api, rpc = base, base + 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kalamdb", "cluster", "up", "--nodes", "3", "--data-dir", str(tmp_path),
         "--base-port", str(api), "--rpc-base-port", str(rpc), "--log-level", "warn"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("Cluster ready" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
        urls = [f"http://127.0.0.1:{api + i}" for i in range(3)]
        with Client(urls[0], user=None) as c1:
            assert c1.login("root", "").ok
            token = c1.token
        with Client(urls[1], user=None, token=token) as c2:
            created = c2.sql("CREATE NAMESPACE up_demo")
            assert created.ok, created  # a token issued by node 1 works on node 2 (and is forwarded)
        with Client(urls[2], user=None, token=token) as c3:
            shown = c3.sql("SHOW NAMESPACES", consistency="local", min_applied_index=created.raft_index)
            assert ["up_demo"] in [r[:1] for r in shown.raise_for_error().rows]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "All nodes stopped." in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
