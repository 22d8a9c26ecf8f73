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


def _cluster_up(data_dir, *args: str) -> tuple[subprocess.Popen, list[str]]:
    """`kalamdb cluster up ARGS` in its own session; returns once it printed its node table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    env["KALAMDB_ALLOW_EMPTY_ROOT"] = "1"  # as `make run` does: root without a password, from localhost
    proc = subprocess.Popen(
        [sys.executable, "-m", "kalamdb", "cluster", "up", "--data-dir", str(data_dir), "--log-level", "warn",
         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while not any("Log in as" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
    except BaseException:
        _stop(proc)
        raise
    return proc, lines


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def test_cluster_up_serves_one_cluster_with_shared_tokens_and_stops_cleanly(tmp_path):
    base = free_port_block(6)
    api, rpc = base, base + 3
    proc, lines = _cluster_up(tmp_path, "--nodes", "3", "--base-port", str(api), "--rpc-base-port", str(rpc))
    try:
        assert f"Raft RPC {rpc}-{rpc + 2} (from --rpc-base-port)" in lines[0]
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
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "All nodes stopped." in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_two_clusters_on_different_base_ports_get_their_own_rpc_ports(tmp_path):
    """Without --rpc-base-port the RPC ports follow the base port (base + 1108), so a second local
    cluster does not collide with the first on RPC; each prints the ports it uses."""
    bases = [free_port_block(2)]
    while len(bases) < 2:  # two blocks whose HTTP and derived RPC ports are all distinct
        base = free_port_block(2)
        wanted = {p + d for p in (*bases, base) for d in (0, 1, 1108, 1109)}
        if len(wanted) == 8:
            bases.append(base)
    procs, outputs = [], []
    try:
        for i, base in enumerate(bases):
            proc, lines = _cluster_up(tmp_path / f"c{i}", "--nodes", "2", "--base-port", str(base))
            procs.append(proc)
            outputs.append("".join(lines))
        rpc = []
        for base, text in zip(bases, outputs, strict=True):
            nodes = [line.split() for line in text.splitlines() if line.strip().startswith("node ")]
            assert [n[2] for n in nodes] == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"], text
            ports = [int(n[4].rsplit(":", 1)[1]) for n in nodes]
            derived = [base + 1108, base + 1109]
            assert ports == derived or "free ports" in text, text  # derived, or free ones when taken
            rpc += ports
        assert len(set(rpc)) == 4
        for i, base in enumerate(bases):  # two separate clusters: a namespace made in one is not in the other
            with Client(f"http://127.0.0.1:{base}") as c:
                c.sql(f"CREATE NAMESPACE only_in_{i}").raise_for_error()
        with Client(f"http://127.0.0.1:{bases[1]}") as c:
            names = [r[0] for r in c.sql("SHOW NAMESPACES").raise_for_error().rows]
            assert "only_in_1" in names and "only_in_0" not in names
    finally:
        for proc in procs:
            _stop(proc)
    assert [p.returncode for p in procs] == [0, 0]
