"""The kit's record of its own runs, and the sweep that cleans up after a run whose process died.

Every cluster the kit starts writes a small record (`<tmp>/kalamdb-kit-runs/<run id>.json`): the
pid and start time of the process that owns it, the pid and start time of every node process it
started, its data root and the kernel network objects it made (namespaces, host links). The record
is removed when the run shuts down normally.

Node processes already die with their parent (`kalamdb.lifeline`); the sweep is for what the kernel
does not clean up by itself -- network namespaces and host links outlive every process -- and for
nodes of a machine where the death signal is not available. `sweep_stale()` runs when a process
starts its first cluster: for each record whose owner is no longer running it kills the recorded
processes that are still the same processes (pid *and* start time match: a reused pid is never
touched), runs the cleanups registered for the record's network objects, removes a data root the
kit created itself, and deletes the record. Records of live owners, and anything not in a record,
are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

log = logging.getLogger("kalamdb.testing.runs")

_swept_in: int | None = None  # pid of the process that swept already
_sweep_lock = threading.Lock()
# kind -> cleanup(resource) for network objects named in records (registered by their backends)
_cleanups: dict[str, Callable[[str], None]] = {}


def runs_dir() -> Path:
    d = Path(os.environ.get("KALAMDB_KIT_RUNS_DIR") or Path(tempfile.gettempdir()) / "kalamdb-kit-runs")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _started(pid: int) -> float | None:
    """The start time of a running process (None: no such process, or only its zombie is left)."""
    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
    except psutil.Error:
        return None


def register_cleanup(kind: str, cleanup: Callable[[str], None]) -> None:
    """`cleanup(name)` removes one kernel object of `kind` that a dead run left (idempotent)."""
    _cleanups[kind] = cleanup


class RunRecord:
    """This process's record of one run (a cluster, or a network the kit made)."""

    def __init__(self, root: Path | None = None, *, owns_root: bool = False, label: str = "cluster"):
        self.run_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = runs_dir() / f"{self.run_id}.json"
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {
            "run_id": self.run_id, "label": label, "owner_pid": os.getpid(), "owner_started": _started(os.getpid()),
            "root": str(root) if root is not None else None, "owns_root": owns_root, "keep": False,
            "pids": {}, "resources": [],
        }
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self._data))
        os.replace(tmp, self.path)

    def add_process(self, pid: int) -> None:
        with self._lock:
            self._data["pids"][str(pid)] = _started(pid)
            self._write()

    def forget_process(self, pid: int) -> None:
        with self._lock:
            if self._data["pids"].pop(str(pid), None) is not None:
                self._write()

    def add_resource(self, kind: str, name: str) -> None:
        """A kernel object to remove if this process dies before `close()`."""
        with self._lock:
            self._data["resources"].append([kind, name])
            self._write()

    def forget_resource(self, kind: str, name: str) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._data["resources"].remove([kind, name])
            self._write()

    def set_keep(self, keep: bool) -> None:
        with self._lock:
            self._data["keep"] = keep
            self._write()

    def close(self) -> None:
        """The run ended normally: its record goes."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _owner_alive(data: dict) -> bool:
    pid = int(data.get("owner_pid") or 0)
    started = _started(pid) if pid else None
    if started is None:
        return False
    want = data.get("owner_started")
    return want is None or abs(started - float(want)) < 0.05


def sweep_stale(force: bool = False) -> list[str]:
    """Clean up after every recorded run whose owner died; once per process unless `force`.
    Returns a line per thing removed (for logs and tests)."""
    global _swept_in
    with _sweep_lock:
        if _swept_in == os.getpid() and not force:
            return []
        _swept_in = os.getpid()
    done: list[str] = []
    for path in sorted(runs_dir().glob("*.json")):
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if _owner_alive(data):
            continue
        done += _clean(data)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for line in done:
        log.warning("kit sweep: %s", line)
    return done


def _clean(data: dict) -> list[str]:
    done = []
    run = data.get("run_id")
    for pid_s, started in (data.get("pids") or {}).items():
        pid = int(pid_s)
        now = _started(pid)
        if now is None or started is None or abs(now - float(started)) >= 0.05:
            continue  # gone, or the pid belongs to another process now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed node process {pid} of dead run {run}")
    for kind, name in data.get("resources") or []:
        cleanup = _cleanups.get(kind)
        if cleanup is None and kind.startswith("netns"):
            import kalamdb.testing.netns  # noqa: F401 - registers its cleanups on import

            cleanup = _cleanups.get(kind)
        if cleanup is not None:
            try:
                cleanup(name)
                done.append(f"removed {kind} {name} of dead run {run}")
            except Exception as exc:  # noqa: BLE001 - a sweep never fails the run that sweeps
                done.append(f"could not remove {kind} {name} of dead run {run}: {exc}")
    root = data.get("root")
    if root and data.get("owns_root") and not data.get("keep"):
        shutil.rmtree(root, ignore_errors=True)
        done.append(f"removed data root {root} of dead run {run}")
    return done
