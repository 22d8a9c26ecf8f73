"""CPU and memory pressure on real child processes, through cgroups and through the fallbacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kalamdb.testing import pressure
from kalamdb.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ALLOCATE = r"""
import sys
sys.stdin.readline()  # wait until the parent has put us under the limit
blocks = []
for _ in range(400):
    b = bytearray(1 << 20)
    for i in range(0, len(b), 4096):
        b[i] = 1
    blocks.append(b)
print("survived", flush=True)
"""


@pytest.fixture
def spawn():
    procs = []

    def start(code: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", code], **kw)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait(10)
            for s in (p.stdin, p.stdout):
                if s is not None:
                    s.close()


def cpu_share(pid: int, window: float = 1.5) -> float:
    """CPU seconds per wall second used by ``pid`` over a measurement window."""
    proc = psutil.Process(pid)
    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
    time.sleep(window)  # a measurement window, not a wait for a state
    return (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)


cgroup_cpu = pytest.mark.skipif(not pressure.cgroup_v1_writable("cpu"),
                                reason="cgroup v1 cpu controller is not writable here")
cgroup_memory = pytest.mark.skipif(not pressure.cgroup_v1_writable("memory"),
                                   reason="cgroup v1 memory controller is not writable here")


@pytest.mark.parametrize("mechanism", [pytest.param("cgroup", marks=cgroup_cpu), "signals"])
def test_cpu_limit_holds_a_busy_child_near_its_share(spawn, mechanism):
    child = spawn("while True: pass")
    free = cpu_share(child.pid, 0.5)  # what it gets unlimited on this (shared) machine right now
    with pressure.cpu_limit(child.pid, 0.2, mechanism=mechanism) as h:
        assert h.mechanism == mechanism
        share = cpu_share(child.pid)
    assert share <= 0.35, f"{mechanism}: child used {share:.2f} CPU under a 0.2 limit"
    # Not frozen either: at least a third of its 20% of what it could get.
    assert share >= 0.2 * min(free, 1.0) / 3, f"{mechanism}: only {share:.3f} CPU (unlimited: {free:.2f})"
    assert h.released
    assert psutil.Process(child.pid).status() != psutil.STATUS_STOPPED  # never left frozen


@cgroup_cpu
def test_cpu_cgroup_is_removed_and_the_process_moves_back(spawn):
    child = spawn("while True: pass")
    own = Path(f"/proc/{child.pid}/cgroup")
    before = own.read_text()
    h = pressure.cpu_limit(child.pid, 0.5)
    path = Path(h.cgroup_path)
    assert (path / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert str(child.pid) in (path / "cgroup.procs").read_text().split()
    h.release()
    h.release()  # idempotent
    assert not path.exists()
    assert own.read_text() == before


@cgroup_memory
def test_memory_limit_gets_a_greedy_child_oom_killed(spawn):
    child = spawn(ALLOCATE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with pressure.memory_limit(child.pid, 50 * 1024 * 1024) as h:
        assert h.mechanism == "cgroup"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(30) == -signal.SIGKILL
        assert child.stdout.read() == ""  # it never got past the limit


def test_memory_hog_fallback_holds_that_much_memory():
    with pressure.memory_limit(os.getpid(), 64 * 1024 * 1024, mechanism="hog") as h:
        assert h.mechanism == "hog"
        (hog,) = h.pids
        assert psutil.Process(hog).memory_info().rss >= 60 * 1024 * 1024
    assert not psutil.pid_exists(hog) or psutil.Process(hog).status() == psutil.STATUS_ZOMBIE


def test_busy_hogs_spin_and_are_killed_on_release():
    with pressure.busy_hogs(2) as h:
        assert h.mechanism == "processes" and len(h.pids) == 2
        procs = [psutil.Process(p) for p in h.pids]
        wait_for(lambda: min(sum(p.cpu_times()[:2]) for p in procs) >= 0.05, 10, "the hogs to burn CPU",
                 poll_s=0.02)
    for p in h.pids:
        assert not psutil.pid_exists(p)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="fraction"):
        pressure.cpu_limit(os.getpid(), 0)
    with pytest.raises(ValueError, match="mechanism"):
        pressure.cpu_limit(os.getpid(), 0.5, mechanism="magic")
    with pytest.raises(ValueError, match="> 0 bytes"):
        pressure.memory_limit(os.getpid(), 0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(ProcessLookupError):
        pressure.cpu_limit(dead.pid, 0.5)
