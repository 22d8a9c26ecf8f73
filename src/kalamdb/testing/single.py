"""Real single-node servers for tests: `python -m kalamdb serve` as a child process.

The server binds port 0 and writes the port it got to a file, so concurrent test runs never race
for ports. Startup waits on that file and on the health endpoint with a deadline, and a server that
dies during startup fails with the tail of its log. Every process started here is killed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

from kalamdb import lifeline
from kalamdb.client import Client, Response

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

# shortcut keyword -> (section, key) in server.toml
CONFIG_SHORTCUTS: dict[str, tuple[str, str]] = {
    "root_password": ("auth", "root_password"),
    "jwt_secret": ("auth", "jwt_secret"),
    "jwt_expiry_hours": ("auth", "jwt_expiry_hours"),
    "log_level": ("logging", "level"),
    "max_body_bytes": ("limits", "max_body_bytes"),
    "expiry_interval_ms": ("storage", "expiry_interval_ms"),
}

_live: set[ServerProcess] = set()
_live_lock = threading.Lock()


class ServerStartError(RuntimeError):
    """The server process did not become healthy; the message carries its log tail."""


def toml_dumps(config: dict[str, dict[str, Any]]) -> str:
    """Minimal TOML writer for server.toml (tables, arrays of tables, scalars, lists of scalars)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(name: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) and not _is_table_list(v)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)
            elif _is_table_list(v):
                for item in v:
                    lines.append(f"[[{name}.{k}]]")
                    lines.extend(f"{ik} = {value(iv)}" for ik, iv in item.items())
                    lines.append("")

    for section, body in config.items():
        table(section, body)
    return "\n".join(lines)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


class ServerProcess:
    """One `kalamdb serve` child process with its own data directory."""

    def __init__(self, data_dir: str | Path | None = None, *, config: dict | None = None,
                 env: dict[str, str] | None = None, **shortcuts: Any):
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="kalamdb-"))
        self.run_dir = self.data_dir.parent / f"{self.data_dir.name}.run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (config or {}).items()}
        self.config.setdefault("logging", {}).setdefault("level", "info")
        for name, val in shortcuts.items():
            if name not in CONFIG_SHORTCUTS:
                raise TypeError(f"unknown server option {name!r} (known: {', '.join(CONFIG_SHORTCUTS)}; "
                                "or pass config={'section': {...}})")
            section, key = CONFIG_SHORTCUTS[name]
            self.config.setdefault(section, {})[key] = val
        if not self.config.get("auth", {}).get("root_password") and "KALAMDB_ROOT_PASSWORD" not in (env or {}):
            # no root password given: keep the kit's empty-root-on-localhost logins (the server's flag)
            self.config.setdefault("auth", {}).setdefault("allow_empty_root_on_localhost", True)
        self.env = dict(env or {})
        self.config_path = self.run_dir / "server.toml"
        self.port_file = self.run_dir / "port"
        self.log_path = self.run_dir / "server.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._client: Client | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("server not started")
        return self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, port: int = 0, timeout: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        if self.is_running():
            raise RuntimeError(f"server already running (pid {self.pid})")
        self.config_path.write_text(toml_dumps(self.config), encoding="utf-8")
        self.port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "kalamdb", "serve", "--config", str(self.config_path),
               "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(port),
               "--port-file", str(self.port_file)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
        env.update(self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it after Popen
        try:
            self.proc = lifeline.spawn_server(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env)
        finally:
            log.close()
        with _live_lock:
            _live.add(self)
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        proc = self.proc
        if proc is None:
            raise ServerStartError("kalamdb serve was never spawned")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"kalamdb serve exited with code {proc.returncode} during startup:\n{self.log_tail()}")
            if self.port is None and self.port_file.exists():
                text = self.port_file.read_text().strip()
                if text:
                    self.port = int(text)
            if self.port is not None:
                try:
                    with Client(self.url, timeout=2.0) as probe:
                        if probe.health().get("status") == "healthy":
                            return
                except OSError:
                    pass
            time.sleep(delay)  # polling interval for an external process, bounded by the deadline
            delay = min(delay * 2, 0.1)
        raise ServerStartError(f"kalamdb serve not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    def kill(self) -> int | None:
        """SIGKILL (a crash: no shutdown code runs). Returns the exit code."""
        return self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait for the graceful stop (SIGKILL if it does not come in time)."""
        return self._signal_and_wait(signal.SIGTERM, timeout)

    def _signal_and_wait(self, sig: int, timeout: float) -> int | None:
        self._drop_client()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with _live_lock:
            _live.discard(self)
        return self.proc.returncode

    def restart(self, *, kill: bool = False, timeout: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        """Stop (or crash with kill=True) and start again on the same data dir and, if free, port."""
        old_port = self.port
        self.kill() if kill else self.stop()
        self.port = None
        try:
            return self.start(port=old_port or 0, timeout=timeout)
        except ServerStartError:
            self.port = None
            return self.start(port=0, timeout=timeout)

    def close(self) -> None:
        """Stop the process and remove a data dir this object created."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ---- convenience --------------------------------------------------------------------------
    def client(self, user: str | None = "root", password: str | None = None, **kwargs: Any) -> Client:
        """A new Client for this server (root with the configured password by default)."""
        if password is None and user == "root":
            password = self.config.get("auth", {}).get("root_password") or self.env.get("KALAMDB_ROOT_PASSWORD", "")
        return Client(self.url, user=user, password=password, **kwargs)

    def sql(self, text: str, params: list | None = None, namespace_id: str | None = None, **extra: Any) -> Response:
        """Run SQL as root over a kept-alive connection."""
        if self._client is None:
            self._client = self.client()
        return self._client.sql(text, params, namespace_id, **extra)

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(data_dir: str | Path | None = None, **config: Any) -> ServerProcess:
    """Start a real server process and return it once healthy. Options: the shortcuts in
    CONFIG_SHORTCUTS (e.g. root_password="pw"), `config={"section": {...}}`, `env={...}`."""
    return ServerProcess(data_dir, **config).start()


_global: ServerProcess | None = None
_global_lock = threading.Lock()


def get_global_server() -> ServerProcess:
    """One shared server per test session, started on first use and stopped at interpreter exit."""
    global _global
    with _global_lock:
        if _global is None or not _global.is_running():
            _global = start_server(log_level="warn")
        return _global


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live)
    for server in procs:
        with contextlib.suppress(Exception):
            if server is _global:
                server.close()
            else:
                server.kill()
