"""Nothing outlives its parent (ARCHITECTURE.md decision 17): SIGKILL of a process that started
nodes -- a pytest run with a cluster, `kalamdb cluster up`, a benchmark, a chaos run -- leaves no node
running 5 s later; and the kit's sweep cleans up after dead runs without touching anything else."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import psutil
import pytest

from kalamdb.lifeline import death_signal_supported
from kalamdb.testing import runs
from kalamdb.testing.ports import free_port_block
from kalamdb.testing.waiting import wait_for

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(not death_signal_supported(), reason="PR_SET_PDEATHSIG is Linux-only")]

GONE_WITHIN_S = 5.0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _serve_children(pid: int, name: str = "serve") -> list[int]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if name in " ".join(k.cmdline()) and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k.pid)
        except psutil.Error:
            continue
    return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALAMDB_", "PYTEST_"))}
    env["KALAMDB_LOG"] = "warn"
    return env


def _kill_and_check(parent: subprocess.Popen, pids: list[int]) -> float:
    assert pids and all(_alive(p) for p in pids), pids
    t0 = time.monotonic()
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    try:
        wait_for(lambda: not any(_alive(p) for p in pids), GONE_WITHIN_S, f"node processes {pids} to end")
    finally:
        for p in pids:  # never leave them behind, even when the assertion fails
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    return time.monotonic() - t0


SUITE = textwrap.dedent('''
    import os, signal, threading, time
    import pytest

    @pytest.mark.cluster(nodes=2)
    def test_hangs_with_a_cluster(fresh_cluster):
        c = fresh_cluster
        # a node restarted from a thread that then ends: the death signal must not follow that thread
        t = threading.Thread(target=lambda: c.processes.restart(1, kill=True))
        t.start(); t.join()
        c.processes.pause(0)  # a stopped (SIGSTOP) node must die too
        with open(os.environ["PIDS_FILE"], "w") as f:
            f.write(" ".join(str(n.pid) for n in c.nodes))
        threading.Event().wait(120)  # killed by the test long before
''')


def test_sigkill_of_pytest_running_a_cluster_leaves_no_node(tmp_path: Path):
    (tmp_path / "test_hang.py").write_text(SUITE)
    pids_file = tmp_path / "pids"
    env = {**_env(), "PIDS_FILE": str(pids_file)}
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hang.py"],
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pids_file.exists() and pids_file.read_text().strip() != "", 60, "the cluster to run")
        pids = [int(x) for x in pids_file.read_text().split()]
        took = _kill_and_check(p, pids)
    finally:
        p.kill()
        p.wait()
    print(f"both nodes (one paused, one started from an ended thread) gone {took:.2f}s after SIGKILL of pytest")


def test_sigkill_of_cluster_up_leaves_no_node(tmp_path: Path):
    base = free_port_block(4)
    p = subprocess.Popen([sys.executable, "-m", "kalamdb", "cluster", "up", "--nodes", "2", "--data-dir",
                          str(tmp_path / "data"), "--base-port", str(base), "--rpc-base-port", str(base + 2),
                          "--log-level", "warn"],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in p.stdout:
            if "Cluster ready" in line:
                break
        else:
            pytest.fail(f"cluster up ended with {p.wait()} before the cluster was ready")
        took = _kill_and_check(p, _serve_children(p.pid))
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    print(f"cluster up's nodes gone {took:.2f}s after SIGKILL of cluster up")


def test_sigkill_of_a_chaos_run_leaves_no_node(tmp_path: Path):
    p = subprocess.Popen([sys.executable, "-m", "kalamdb", "chaos", "--nodes", "2", "--time", "60",
                          "--workload", "register", "--faults", "pause,cpu", "--seed", "5",
                          "--out", str(tmp_path / "run")],
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (tmp_path / "run" / "history.jsonl").exists()
                 and (tmp_path / "run" / "history.jsonl").stat().st_size > 0, 60, "the chaos run's clients")
        took = _kill_and_check(p, _serve_children(p.pid))
    finally:
        p.kill()
        p.wait()
    print(f"chaos run's nodes gone {took:.2f}s after SIGKILL of kalamdb chaos")


BENCH = textwrap.dedent('''
    import sys, threading
    from kalamdb.bench.cluster import start_kalamdb
    from kalamdb.bench.etcd import EtcdCluster
    c = start_kalamdb(nodes=1)
    e = EtcdCluster(size=1).start()
    print(" ".join(str(p) for p in [n.pid for n in c.nodes] + e.pids()), flush=True)
    threading.Event().wait(120)
''')


@pytest.mark.skipif(shutil.which("etcd") is None,
                    reason="etcd is not installed (apt-get install etcd-server)")
def test_sigkill_of_a_benchmark_leaves_no_kalamdb_node_or_etcd_member():
    p = subprocess.Popen([sys.executable, "-c", BENCH], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert len(pids) == 2, pids
        took = _kill_and_check(p, pids)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    print(f"the benchmark's kalamdb node and etcd member gone {took:.2f}s after SIGKILL")


def test_sweep_cleans_dead_runs_only_and_never_a_reused_pid(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KALAMDB_KIT_RUNS_DIR", str(tmp_path / "runs"))
    # plain Popen (no death signal): stands for a node left by a run on a machine without it
    leftover = subprocess.Popen(["sleep", "60"])
    innocent = subprocess.Popen(["sleep", "60"])
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    try:
        root = tmp_path / "dead-root"
        root.mkdir()
        d = runs.runs_dir()

        def record(name: str, owner: int, owner_started, pids: dict, **extra) -> Path:
            path = d / f"{name}.json"
            path.write_bytes(orjson.dumps({"run_id": name, "owner_pid": owner, "owner_started": owner_started,
                                           "pids": pids, "resources": [], **extra}))
            return path

        started = psutil.Process(leftover.pid).create_time()
        dead = record("dead", dead_owner.pid, 1.0, {str(leftover.pid): started}, root=str(root), owns_root=True)
        # same pid, another start time: the pid was reused by a process that is not ours
        reused = record("reused", dead_owner.pid, 1.0, {str(innocent.pid): started - 100})
        live = record("live", os.getpid(), psutil.Process().create_time(), {str(innocent.pid): None})
        done = runs.sweep_stale(force=True)
        assert leftover.wait(5) == -signal.SIGKILL, done
        assert innocent.poll() is None, "the sweep killed a process that was not the recorded one"
        assert not root.exists() and not dead.exists() and not reused.exists()
        assert live.exists(), "a live run's record was swept"
        assert any(f"killed node process {leftover.pid}" in line for line in done), done
    finally:
        for p in (leftover, innocent):
            p.kill()
            p.wait()
