"""`kalamdb cluster up`: a local N-node cluster of real processes in the foreground.

Node i (1-based) serves HTTP on base_port + i - 1 and Raft RPC on rpc_base_port + i - 1, with its
data under DATA_DIR/node<i>. Without --rpc-base-port the RPC ports follow the base port
(base_port + 1108: 8080 gives upstream's 9188), so two local clusters on different base ports never
collide; when those ports are taken, free ones are picked. Both are printed. Running it again on the same data dir restarts the same cluster (nodes
with state never bootstrap again). Ctrl-C stops every node gracefully.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from kalamdb import lifeline

READY_TIMEOUT_S = 60.0
RPC_PORT_OFFSET = 1108  # upstream KalamDB's defaults: HTTP 8080, Raft RPC 9188
MAX_PORT = 65535


def _health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/api/cluster/health", timeout=1.0) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _busy_ports(host: str, ports: list[int]) -> list[int]:
    """The ports of `ports` that cannot be bound on `host` right now."""
    busy = []
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


def choose_rpc_ports(host: str, api_ports: list[int], rpc_base_port: int | None) -> tuple[list[int], str]:
    """The RPC port of each node and how it was chosen (said to the user). An explicit
    --rpc-base-port is taken as given; otherwise base_port + RPC_PORT_OFFSET, or a free block when
    those ports are taken or out of range. A free port can still be taken before the node binds it:
    the node then exits saying so, and running the command again picks again."""
    count = len(api_ports)
    if rpc_base_port is not None:
        return [rpc_base_port + i for i in range(count)], "from --rpc-base-port"
    derived = [api_ports[0] + RPC_PORT_OFFSET + i for i in range(count)]
    if derived[-1] <= MAX_PORT and not set(derived) & set(api_ports) and not _busy_ports(host, derived):
        return derived, f"base port + {RPC_PORT_OFFSET}"
    from kalamdb.node.ports import free_port_block

    for _ in range(20):
        base = free_port_block(count)
        ports = [base + i for i in range(count)]
        if not set(ports) & set(api_ports) and not _busy_ports(host, ports):
            why = "out of range" if derived[-1] > MAX_PORT else "in use"
            return ports, f"free ports: {derived[0]}-{derived[-1]} were {why}"
    raise click.ClickException("no free block of RPC ports found; pass --rpc-base-port")


def _cluster_secret(data_dir: Path) -> str:
    """One secret per local cluster, kept beside the nodes' data so restarts reuse it."""
    path = data_dir / "cluster.secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_hex(32)
    # private from creation, and complete or absent: never readable by others, never half-written
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret


@click.group("cluster")
def cluster_command() -> None:
    """Run a local kalamdb cluster."""


@cluster_command.command("up")
@click.option("--nodes", "count", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default="./data", show_default=True)
@click.option("--base-port", type=click.IntRange(1, 65000), default=8080, show_default=True,
              help="HTTP port of node 1; node i uses base-port + i - 1.")
@click.option("--rpc-base-port", type=click.IntRange(1, 65000), default=None,
              help=f"Raft RPC port of node 1; node i uses rpc-base-port + i - 1. "
                   f"[default: base-port + {RPC_PORT_OFFSET}, or free ports when those are taken]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--heartbeat-ms", type=click.IntRange(1, 60000), default=50, show_default=True)
@click.option("--election-ms", default="150,300", show_default=True, help="min,max election timeout.")
@click.option("--log-level", type=click.Choice(["error", "warn", "info", "debug"]), default="info",
              show_default=True)
def up_command(count: int, data_dir: str, base_port: int, rpc_base_port: int | None, host: str, heartbeat_ms: int,
               election_ms: str, log_level: str) -> None:
    """Start COUNT nodes, wait until they form one cluster, and keep them running until Ctrl-C."""
    root = Path(data_dir).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"--data-dir {root} cannot be created: {exc}") from None
    api_ports = [base_port + i for i in range(count)]
    busy = _busy_ports(host, api_ports)
    if busy:
        raise click.ClickException(f"HTTP port(s) {busy} on {host} are in use (another cluster?); "
                                   "choose another --base-port")
    rpc_ports, rpc_choice = choose_rpc_ports(host, api_ports, rpc_base_port)
    if set(api_ports) & set(rpc_ports):
        raise click.ClickException("--base-port and --rpc-base-port ranges overlap; choose ports further apart")
    urls = [f"http://{host}:{p}" for p in api_ports]
    peers = ";".join(f"{i + 1}@{host}:{rpc_ports[i]}@{urls[i]}" for i in range(count))
    secret = _cluster_secret(root)
    procs: list[subprocess.Popen] = []
    logs = []
    for i in range(count):
        nid = i + 1
        env = dict(os.environ)
        env.update({
            "KALAMDB_NODE_ID": str(nid), "KALAMDB_CLUSTER_ID": "local",
            "KALAMDB_CLUSTER_RPC_ADDR": f"{host}:{rpc_ports[i]}", "KALAMDB_CLUSTER_API_ADDR": urls[i],
            "KALAMDB_CLUSTER_PEERS": peers, "KALAMDB_CLUSTER_SECRET": secret,
            "KALAMDB_CLUSTER_HEARTBEAT_INTERVAL_MS": str(heartbeat_ms),
            "KALAMDB_CLUSTER_ELECTION_TIMEOUT_MS": election_ms, "KALAMDB_LOG": log_level,
        })
        log_path = root / f"node{nid}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child writes to it until it exits
        logs.append(log)
        # a node gets SIGTERM (a graceful stop) if this supervisor dies, even by SIGKILL
        procs.append(lifeline.spawn_server(
            [sys.executable, "-m", "kalamdb", "serve", "--data-dir", str(root / f"node{nid}"),
             "--host", host, "--port", str(api_ports[i])],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            death_signal=signal.SIGTERM))
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    t0 = time.monotonic()
    try:
        click.echo(f"Starting {count} nodes (data under {root}): HTTP {_span(api_ports)}, "
                   f"Raft RPC {_span(rpc_ports)} ({rpc_choice})…")
        leader = _wait_ready(urls, procs, root, lambda: stopping)
        if leader is None:
            return
        click.echo(f"Cluster ready in {time.monotonic() - t0:.2f}s\n")
        for i, url in enumerate(urls):
            role = "leader" if i + 1 == leader else "follower"
            click.echo(f"  node {i + 1}  {url}  rpc {host}:{rpc_ports[i]}  {role}  log {root / f'node{i + 1}.log'}")
        password = os.environ.get("KALAMDB_ROOT_PASSWORD", "")
        if password:
            login = f"root:{password}"
        elif os.environ.get("KALAMDB_ALLOW_EMPTY_ROOT", "").lower() in ("1", "true", "yes", "on"):
            login = "root:  (empty root password: localhost only, KALAMDB_ALLOW_EMPTY_ROOT)"
        else:
            login = ("root after setup: root has no password yet; POST /v1/api/auth/setup from this machine "
                     "(or start with KALAMDB_ROOT_PASSWORD, or KALAMDB_ALLOW_EMPTY_ROOT=1 as `make run` does)")
        click.echo(f"\nLog in as {login}. For example:\n"
                   f"  curl -s -u 'root:{password}' -X POST {urls[0]}/v1/api/sql "
                   "-H 'Content-Type: application/json' -d '{\"sql\": \"SELECT * FROM system.cluster\"}'\n"
                   f"  kalamdb sql --url {urls[-1]} \"SHOW NAMESPACES\"\n"
                   "Ctrl-C stops all nodes.")
        while not stopping:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    click.echo(f"node {i + 1} exited with code {p.returncode}; see {root / f'node{i + 1}.log'}",
                               err=True)
                    stopping = True
            time.sleep(0.2)  # supervising children; woken early by Ctrl-C
    finally:
        click.echo("Stopping all nodes…")
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            with contextlib.suppress(OSError):
                log.close()
        click.echo("All nodes stopped.")


def _span(ports: list[int]) -> str:
    return str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"


def _wait_ready(urls: list[str], procs: list[subprocess.Popen], root: Path, stopping) -> int | None:
    """The leader id once every node answers and all agree on it and on the voters."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    want = list(range(1, len(urls) + 1))
    while time.monotonic() < deadline and not stopping():
        for i, p in enumerate(procs):
            if p.poll() is not None:
                tail = (root / f"node{i + 1}.log").read_text(errors="replace").splitlines()[-15:]
                raise click.ClickException(f"node {i + 1} exited with code {p.returncode}:\n" + "\n".join(tail))
        hs = [h for u in urls if (h := _health(u))]
        if len(hs) == len(urls):
            leaders = {h.get("leader_id") for h in hs}
            if len(leaders) == 1 and None not in leaders and all(h.get("voters") == want for h in hs):
                return leaders.pop()
        time.sleep(0.05)  # polling other processes, bounded by the deadline
    if stopping():
        return None
    raise click.ClickException(f"the cluster did not form within {READY_TIMEOUT_S:.0f}s; see the logs in {root}")
