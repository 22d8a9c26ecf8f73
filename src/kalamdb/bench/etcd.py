"""A 3-node etcd cluster on loopback, started and stopped by the bench, as the reference system.

etcd is Debian's `etcd-server` (3.4 here). Writes go through its v3 JSON gateway (`POST /v3/kv/put`
with base64 key and value), so the bench drives it with the same aiohttp client code as kalamdb.
Ports: etcd cannot inherit listening sockets, so free ports are picked by binding port 0 and a
start that loses a port race is retried with new ports.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import orjson

from kalamdb import lifeline
from kalamdb.bench.load import Request, Target

INSTALL_HINT = ("etcd is not installed: on Debian/Ubuntu run `sudo apt-get install -y etcd-server` "
                "(or `make bench` as root), or put an `etcd` binary on PATH / pass --etcd-bin")
GATEWAY_PATHS = ("/v3/kv/put", "/v3beta/kv/put")


class EtcdUnavailable(RuntimeError):
    """etcd could not be found or started; the message says how to fix it."""


def find_etcd(explicit: str | None = None) -> str:
    path = explicit or shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if not path:
        raise EtcdUnavailable(INSTALL_HINT)
    return path


def etcd_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EtcdUnavailable(f"{binary} --version failed: {exc}") from exc
    first = out.splitlines()[0] if out else "unknown"
    return first.replace("etcd Version:", "").strip()


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class EtcdCluster:
    size: int = 3
    binary: str | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kalamdb-bench-etcd-")))
    procs: list[subprocess.Popen] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    put_path: str = "/v3/kv/put"
    version: str = ""
    start_seconds: float = 0.0

    def start(self, timeout: float = 30.0, attempts: int = 3) -> EtcdCluster:
        self.binary = find_etcd(self.binary)
        self.version = etcd_version(self.binary)
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                self._start_once(timeout, attempt)
                return self
            except EtcdUnavailable as exc:  # most likely a lost port race: new ports, new dirs
                last = exc
                self._kill()
        raise EtcdUnavailable(f"etcd did not start after {attempts} attempts: {last}")

    def _start_once(self, timeout: float, attempt: int) -> None:
        binary = self.binary
        if binary is None:
            raise EtcdUnavailable("no etcd binary: start() looks it up first")
        t0 = time.monotonic()
        ports = _free_ports(2 * self.size)
        names = [f"e{i}" for i in range(self.size)]
        peer_urls = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(self.size)]
        self.client_urls = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(self.size)]
        initial = ",".join(f"{n}={u}" for n, u in zip(names, peer_urls, strict=True))
        for i, name in enumerate(names):
            data = self.root / f"try{attempt}" / name
            data.mkdir(parents=True, exist_ok=True)
            cmd = [binary, "--name", name, "--data-dir", str(data),
                   "--listen-peer-urls", peer_urls[i], "--initial-advertise-peer-urls", peer_urls[i],
                   "--listen-client-urls", self.client_urls[i], "--advertise-client-urls", self.client_urls[i],
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", f"bench-{ports[0]}", "--log-level", "error",
                   "--logger", "zap"]
            log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its life
            self.procs.append(lifeline.spawn_server(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL))
            log.close()
        deadline = time.monotonic() + timeout
        while True:  # poll each member's /health until all report a leader (bounded by the deadline)
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise EtcdUnavailable(f"an etcd member exited with {dead[0].returncode}: {self.log_tail()}")
            if all(_healthy(u) for u in self.client_urls):
                break
            if time.monotonic() > deadline:
                raise EtcdUnavailable(f"etcd cluster not healthy after {timeout}s: {self.log_tail()}")
            time.sleep(0.02)
        self.put_path = self._find_gateway()
        self.start_seconds = time.monotonic() - t0

    def _find_gateway(self) -> str:
        body = json.dumps({"key": _b64(b"probe"), "value": _b64(b"1")}).encode()
        for path in GATEWAY_PATHS:
            req = urllib.request.Request(self.client_urls[0] + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with contextlib.suppress(urllib.error.URLError, OSError), \
                    urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return path
        raise EtcdUnavailable(f"no etcd JSON gateway answered at {GATEWAY_PATHS}")

    def log_tail(self, lines: int = 5) -> str:
        out = []
        for f in sorted(self.root.glob("*.log")):
            out.append(f"{f.name}: " + " | ".join(f.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def _kill(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self.procs = []

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def put_target(self, value_bytes: int = 32) -> Target:
        """One key put per request, to a random member (followers forward to the leader as kalamdb's do)."""
        urls = [u + self.put_path for u in self.client_urls]
        headers = {"Content-Type": "application/json"}
        value = _b64(b"x" * value_bytes)

        def make(n: int, rng: random.Random) -> Request:
            body = orjson.dumps({"key": _b64(b"bench/%d" % n), "value": value})
            return Request(rng.choice(urls), body, headers)

        return Target("etcd", make)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return json.loads(resp.read()).get("health") in ("true", True)
    except (urllib.error.URLError, OSError, ValueError):
        return False
