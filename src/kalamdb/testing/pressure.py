"""CPU and memory pressure on real node processes, so tests see a slow or starving node.

Each function returns a ``PressureHandle`` whose ``.mechanism`` says how the pressure is applied
(cgroups are exact; the fallbacks work anywhere) and whose ``.release()`` undoes it:

* ``cpu_limit(pid, fraction)``: cgroup v1 ``cpu`` quota (``cpu.cfs_quota_us``) when writable, else a
  background thread duty-cycling SIGSTOP/SIGCONT (period 100 ms).
* ``memory_limit(pid, limit_bytes)``: cgroup v1 ``memory`` limit (the kernel OOM-kills the process past
  it), else a memory-hog process that eats ``limit_bytes`` of the machine's memory instead (pressure,
  not a limit: the only thing possible without cgroups).
* ``busy_hogs(n)``: n processes spinning on a core, competing with the nodes.

Cgroups are created below the target's current cgroup (container limits still apply), named
``kalamdb-<pid>-<random>``, and removed on release; the processes move back where they were.
Handles still alive at interpreter exit are released by an atexit hook.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Self

import psutil

from kalamdb import lifeline

_live: set[PressureHandle] = set()
_live_lock = threading.Lock()


class PressureHandle:
    """An applied pressure: ``mechanism`` names how, ``release()`` undoes it (idempotent)."""

    def __init__(self, mechanism: str, pids: list[int], undo: Callable[[], None], detail: str = "",
                 cgroup_path: str | None = None):
        self.mechanism = mechanism
        self.cgroup_path = cgroup_path  # the cgroup directory we created, when mechanism == "cgroup"
        self.pids = pids
        self.detail = detail
        self._undo = undo
        self._released = False
        self._lock = threading.Lock()
        with _live_lock:
            _live.add(self)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            self._undo()
        finally:
            with _live_lock:
                _live.discard(self)

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"PressureHandle(mechanism={self.mechanism!r}, pids={self.pids}, {self.detail})"


@atexit.register
def _release_all() -> None:
    with _live_lock:
        handles = list(_live)
    for h in handles:
        with contextlib.suppress(Exception):
            h.release()


# -- cgroup v1 -----------------------------------------------------------------------------------
def _v1_mount(controller: str) -> tuple[str, str] | None:
    """(mount point, mounted root) of the cgroup v1 hierarchy carrying ``controller``."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) >= 3 and rfields[0] == "cgroup" and controller in rfields[2].split(","):
            return fields[4], fields[3]
    return None


def _current_cgroup(pid: int, controller: str) -> str | None:
    """The pid's cgroup path (relative to its hierarchy root) for a v1 controller."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    return path
    except (OSError, ValueError):
        return None
    return None


def _cgroup_dir(pid: int, controller: str) -> str | None:
    """The directory of ``pid``'s current v1 cgroup for ``controller``, if we can create children in it."""
    mount = _v1_mount(controller)
    rel = _current_cgroup(pid, controller)
    if mount is None or rel is None:
        return None
    mountpoint, root = mount
    if root != "/" and rel.startswith(root):
        rel = rel[len(root):]
    path = os.path.join(mountpoint, rel.lstrip("/"))
    if os.path.isdir(path) and os.access(path, os.W_OK):
        return path
    return None


def cgroup_v1_writable(controller: str) -> bool:
    """Whether this process may create a v1 cgroup for ``controller`` (tests skip on False)."""
    parent = _cgroup_dir(os.getpid(), controller)
    if parent is None:
        return False
    probe = os.path.join(parent, f"kalamdb-probe-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def _write(path: str, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _tree(pid: int) -> list[int]:
    """pid and its live descendants (children forked later inherit the cgroup by themselves)."""
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess as e:
        raise ProcessLookupError(f"no process with pid {pid}") from e


class _Cgroup:
    """One v1 cgroup we created, holding some processes until ``remove``."""

    def __init__(self, controller: str, pid: int):
        parent = _cgroup_dir(pid, controller)
        if parent is None:
            raise PermissionError(f"cgroup v1 {controller!r} controller is not writable")
        self.controller = controller
        self.parent = parent
        self.path = os.path.join(parent, f"kalamdb-{pid}-{uuid.uuid4().hex[:8]}")
        os.mkdir(self.path)
        self.moved: list[int] = []

    def set(self, knob: str, value: int | str) -> None:
        _write(os.path.join(self.path, knob), value)

    def has(self, knob: str) -> bool:
        return os.path.exists(os.path.join(self.path, knob))

    def add(self, pids: list[int]) -> None:
        for p in pids:
            try:
                _write(os.path.join(self.path, "cgroup.procs"), p)
                self.moved.append(p)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        """Move survivors back to the parent and delete the cgroup (retrying while tasks exit)."""
        procs = os.path.join(self.path, "cgroup.procs")
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with open(procs) as f:
                    left = [int(x) for x in f.read().split()]
            except FileNotFoundError:
                return
            for p in left:
                with contextlib.suppress(ProcessLookupError, OSError):
                    _write(os.path.join(self.parent, "cgroup.procs"), p)
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)  # an exiting task leaves the cgroup a moment after it dies


# -- CPU -----------------------------------------------------------------------------------------
def cpu_limit(pid: int, fraction: float, mechanism: str = "auto", period_ms: float = 100.0) -> PressureHandle:
    """Let ``pid`` (and its current children) use at most ``fraction`` of one CPU.

    mechanism: "auto" (cgroup if writable, else signals), "cgroup" or "signals".
    """
    if not fraction > 0:
        raise ValueError(f"CPU fraction must be > 0, got {fraction}")
    if mechanism not in ("auto", "cgroup", "signals"):
        raise ValueError(f"unknown mechanism {mechanism!r}: use auto, cgroup or signals")
    pids = _tree(pid)
    if mechanism in ("auto", "cgroup"):
        try:
            return _cpu_cgroup(pid, pids, fraction, period_ms)
        except PermissionError:
            if mechanism == "cgroup":
                raise
    if fraction >= 1:
        raise ValueError("the signals mechanism can only limit to less than one CPU")
    return _cpu_signals(pids, fraction, period_ms)


def _cpu_cgroup(pid: int, pids: list[int], fraction: float, period_ms: float) -> PressureHandle:
    cg = _Cgroup("cpu", pid)
    try:
        period = int(period_ms * 1000)
        cg.set("cpu.cfs_period_us", period)
        cg.set("cpu.cfs_quota_us", max(1000, int(period * fraction)))
        cg.add(pids)
    except BaseException:
        cg.remove()
        raise
    return PressureHandle("cgroup", pids, cg.remove, f"cpu quota {fraction:.2f}", cg.path)


def _cpu_signals(pids: list[int], fraction: float, period_ms: float) -> PressureHandle:
    stop = threading.Event()
    run_s = period_ms / 1000 * fraction
    stopped_s = period_ms / 1000 - run_s

    def signal_all(sig: int) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def duty_cycle() -> None:
        try:
            while not stop.is_set():
                signal_all(signal.SIGCONT)
                if stop.wait(run_s):
                    break
                signal_all(signal.SIGSTOP)
                stop.wait(stopped_s)
        finally:
            signal_all(signal.SIGCONT)

    t = threading.Thread(target=duty_cycle, name=f"kalamdb-cpu-limit-{pids[0]}", daemon=True)
    t.start()

    def undo() -> None:
        stop.set()
        t.join(5.0)

    return PressureHandle("signals", pids, undo, f"SIGSTOP/SIGCONT duty cycle {fraction:.2f}")


# -- memory --------------------------------------------------------------------------------------
def memory_limit(pid: int, limit_bytes: int, mechanism: str = "auto") -> PressureHandle:
    """Cap ``pid``'s memory at ``limit_bytes`` (the kernel OOM-kills it past the cap).

    mechanism: "auto" (cgroup if writable, else hog), "cgroup" or "hog". The hog fallback cannot
    cap one process: it takes ``limit_bytes`` from the whole machine to create pressure instead.
    """
    if limit_bytes <= 0:
        raise ValueError(f"memory limit must be > 0 bytes, got {limit_bytes}")
    if mechanism not in ("auto", "cgroup", "hog"):
        raise ValueError(f"unknown mechanism {mechanism!r}: use auto, cgroup or hog")
    pids = _tree(pid)
    if mechanism in ("auto", "cgroup"):
        try:
            return _memory_cgroup(pid, pids, limit_bytes)
        except PermissionError:
            if mechanism == "cgroup":
                raise
    return memory_hog(limit_bytes)


def _memory_cgroup(pid: int, pids: list[int], limit_bytes: int) -> PressureHandle:
    cg = _Cgroup("memory", pid)
    try:
        cg.set("memory.limit_in_bytes", limit_bytes)
        if cg.has("memory.memsw.limit_in_bytes"):  # no escaping into swap
            cg.set("memory.memsw.limit_in_bytes", limit_bytes)
        if cg.has("memory.swappiness"):
            with contextlib.suppress(OSError):
                cg.set("memory.swappiness", 0)
        cg.add(pids)
    except BaseException:
        cg.remove()
        raise
    return PressureHandle("cgroup", pids, cg.remove, f"memory limit {limit_bytes} B", cg.path)


_HOG_MEMORY = r"""
import sys
n = int(sys.argv[1])
block = bytearray(n)
for i in range(0, n, 4096):
    block[i] = 1  # touch every page so it is really resident
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()  # hold until our parent closes stdin or kills us
"""


def memory_hog(nbytes: int, timeout: float = 30.0) -> PressureHandle:
    """A process holding ``nbytes`` of resident memory until released."""
    proc = lifeline.spawn([sys.executable, "-c", _HOG_MEMORY, str(int(nbytes))],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = threading.Event()

    def wait_allocated() -> None:
        if proc.stdout is not None and proc.stdout.readline():  # (stdout is a pipe: never None)
            ready.set()

    threading.Thread(target=wait_allocated, daemon=True).start()
    if not ready.wait(timeout):
        _kill([proc])
        raise RuntimeError(f"memory hog did not allocate {nbytes} bytes within {timeout}s")
    return PressureHandle("hog", [proc.pid], lambda: _kill([proc]), f"hog holding {nbytes} B")


# -- competing processes -------------------------------------------------------------------------
def busy_hogs(n: int) -> PressureHandle:
    """Start ``n`` processes that each spin on a CPU until released."""
    if n < 0:
        raise ValueError("n must be >= 0")
    procs = [lifeline.spawn([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
             for _ in range(n)]
    return PressureHandle("processes", [p.pid for p in procs], lambda: _kill(procs), f"{n} busy hogs")


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
    for p in procs:
        p.wait(10)
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
