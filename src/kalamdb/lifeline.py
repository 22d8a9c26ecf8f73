"""Child processes that die with their parent (ARCHITECTURE.md decision 17).

Every process that kalamdb's own tools start -- the test kit's nodes, `kalamdb cluster up`, the
benchmarks' nodes and etcd members, chaos runs, CPU and memory hogs -- goes through `spawn`, so a
parent killed with SIGKILL (a CI timeout, the OOM killer, Ctrl-\\) never leaves nodes running as
orphans that hold ports and CPU.

How: Linux's PR_SET_PDEATHSIG, set in the child between fork and exec (it survives exec), asks
the kernel to send a signal to the child when its parent dies. The kernel's "parent" is the
*thread* that forked, not the process: a node started from a short-lived thread (the chaos
nemesis, a pool worker) would be killed when that thread ends. So every spawn is done by one
long-lived daemon thread of this module, which lives exactly as long as the process. SIGKILL is the
default signal because it also ends a node that is stopped (SIGSTOP) at that moment, which no
signal handler and no lifeline pipe could. A parent that died between fork and prctl is caught by
comparing getppid() with the pid the child expects.

Elsewhere than Linux the signal cannot be asked for; `spawn` still works and `death_signal_supported`
says so (the kit's stale-run sweep is then the only guard).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.prctl
        fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        fn.restype = ctypes.c_int
        return fn
    return None


_prctl = _load_prctl()  # looked up once, before any fork: the child only calls it


def death_signal_supported() -> bool:
    """True where children can be told to die with their parent (Linux)."""
    return _prctl is not None


def _child_setup(death_signal: int, parent_pid: int) -> None:
    # Runs in the child between fork and exec: no locks, no allocation beyond the call itself.
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)


class _Spawner:
    """One daemon thread that does every fork, so the kernel's notion of "parent" (the forking
    thread) lives exactly as long as the process."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[Future, list[str], dict[str, Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = 0

    def _ensure_thread(self) -> None:
        with self._lock:
            # after a fork of this process the thread does not exist in the child: start a new one
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._requests = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._serve, args=(self._requests,),
                                                name="kalamdb-spawner", daemon=True)
                self._thread.start()

    @staticmethod
    def _serve(requests: queue.SimpleQueue) -> None:
        while True:
            fut, argv, kwargs = requests.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def spawn(self, argv: list[str], kwargs: dict[str, Any]) -> subprocess.Popen:
        if threading.current_thread() is self._thread:
            return subprocess.Popen(argv, **kwargs)
        self._ensure_thread()
        fut: Future[subprocess.Popen] = Future()
        self._requests.put((fut, argv, kwargs))
        return fut.result()


_spawner = _Spawner()


def spawn(argv: list[str], *, death_signal: int = signal.SIGKILL, **popen_kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(argv, **popen_kwargs)` for a child that gets `death_signal` when this
    process dies, however it dies. `preexec_fn` is taken by this function."""
    if "preexec_fn" in popen_kwargs:
        raise TypeError("lifeline.spawn sets preexec_fn itself")
    parent = os.getpid()
    popen_kwargs["preexec_fn"] = lambda: _child_setup(death_signal, parent)
    return _spawner.spawn(list(argv), popen_kwargs)


def spawn_server(argv: list[str], *, death_signal: int = signal.SIGKILL, **popen_kwargs: Any) -> subprocess.Popen:
    """`spawn` for a server the caller runs beside itself (a kalamdb node, an etcd member): a
    process group of its own, so it is signalled and paused as one, but in the caller's session.
    With the kernel's autogroup each session is one scheduling group, and three nodes as three
    groups on a small machine left a busy node's Raft thread waiting 200+ ms for a CPU behind its
    own apply thread (docs/PERFORMANCE.md, step 20); in the caller's group the scheduler weighs
    threads, and a Raft thread that mostly sleeps runs as soon as it wakes."""
    return spawn(argv, death_signal=death_signal, process_group=0, **popen_kwargs)


__all__ = ["death_signal_supported", "spawn", "spawn_server"]
