"""The server process's life: open the database, listen, announce the bound port, stop gracefully.

SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish (their writes are applied
and acknowledged), drain the writer, then close the database.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from kalamdb.config import Config, prepare_data_dir, resolve_jwt_secret
from kalamdb.server.admission import SqlWorkers
from kalamdb.server.app import ServerState, create_app
from kalamdb.server.auth import Authenticator
from kalamdb.server.connguard import ConnectionGuard
from kalamdb.server.logins import LoginPolicy
from kalamdb.server.sql_lane import LaneSite, SqlLane, lane_connections
from kalamdb.server.standalone import StandaloneNode

if TYPE_CHECKING:
    from kalamdb.engine import Database
    from kalamdb.node.api import Node
    from kalamdb.node.config import ClusterConfig

log = logging.getLogger("kalamdb.server")

_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
SHUTDOWN_TIMEOUT_S = 30.0


class StartupError(RuntimeError):
    """The server cannot start (storage unreadable, port taken...); the message says why."""


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system once the node has started (glibc's
    `malloc_trim`). Start-up (imports, catalog load, the first compiles) leaves freed memory in the
    heap that malloc keeps for reuse; returning it cut an idle node's RSS by 1.1-1.3 MB, to under
    the 60 MB target (docs/PERFORMANCE.md). A no-op on a C library without it."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to release this way
        pass


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=_LEVELS[level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def write_port_file(path: Path, host: str, port: int) -> None:
    """Atomically publish the bound port (a reader never sees a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


def build_node(cfg: Config, db: Database, data_dir: Path, cluster_cfg: ClusterConfig | None = None, *,
               rpc_sock: socket.socket | None = None) -> Node:
    """The node the server talks to: a Raft cluster member (with `rpc_sock`, the peer port its parent
    bound for it) or a single node."""
    if cluster_cfg is not None:
        from kalamdb.node.cluster_node import ClusterNode

        node = ClusterNode(cluster_cfg, db, data_dir, expiry_interval_s=cfg.storage.expiry_interval_ms / 1000.0)
        node.driver.rpc_sock = rpc_sock
        return node
    return StandaloneNode(db, node_id=1, expiry_interval_s=cfg.storage.expiry_interval_ms / 1000.0)


def load_cluster(cfg: Config) -> ClusterConfig | None:
    """The [cluster] section merged with KALAMDB_CLUSTER_* variables; None for a single node."""
    from kalamdb.node.config import load_cluster_config

    return load_cluster_config(cfg.cluster, default_api_addr=f"http://{cfg.server.host}:{cfg.server.port}")


async def serve(cfg: Config, *, port_file: Path | None = None, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, listen_fd: int | None = None,
                rpc_fd: int | None = None) -> None:
    """Run until SIGTERM/SIGINT (or until `stop` is set)."""
    from kalamdb.engine import Database

    if cfg.ignored:  # an upstream server.toml: say once what it asks for that kalamdb does not have
        log.warning("server.toml: %d setting(s) ignored (parts of upstream KalamDB that kalamdb does not have): %s",
                    len(cfg.ignored), ", ".join(cfg.ignored))
    data_dir = prepare_data_dir(cfg)
    cluster_cfg = load_cluster(cfg)
    if cluster_cfg is not None and not cfg.auth.jwt_secret:
        # A token from one node must be valid on every node: derive the JWT key from the shared
        # cluster secret instead of each node inventing its own.
        secret = hmac.new(cluster_cfg.secret.encode(), b"kalamdb-jwt", hashlib.sha256).hexdigest()
    else:
        secret = resolve_jwt_secret(cfg)
    # A single node's acknowledgement is SQLite's fsync; in a cluster the fsynced Raft log is the
    # durable record and SQLite is replayed from it, so SQLite need not fsync each batch.
    durable = cluster_cfg is None
    loop = asyncio.get_running_loop()
    try:
        db = await loop.run_in_executor(
            None, lambda: Database(data_dir, node_id=cluster_cfg.node_id if cluster_cfg else 1, durable=durable,
                               root_password=cfg.auth.root_password))
    except Exception as exc:
        log.exception("cannot open the database")
        raise StartupError(f"cannot open the database in {data_dir}: {type(exc).__name__}: {exc}") from None
    node = build_node(cfg, db, data_dir, cluster_cfg,
                      rpc_sock=socket.socket(fileno=rpc_fd) if rpc_fd is not None and cluster_cfg is not None else None)
    authenticator = Authenticator(
        verify_password=db.authenticate,
        principal_for=db.principal_for,
        jwt_secret=secret,
        jwt_expiry_hours=cfg.auth.jwt_expiry_hours,
        # followers learn of user changes only through the log: the storage's counter tells the cache
        users_version=lambda: db.users_version,
        policy=LoginPolicy.from_config(cfg),
    )
    workers = SqlWorkers(workers=cfg.limits.sql_workers, max_queued=cfg.limits.max_queued_requests,
                         max_requests_per_user=cfg.limits.max_requests_per_user)
    state = ServerState(db=db, node=node, authenticator=authenticator, max_body_bytes=cfg.limits.max_body_bytes,
                        workers=workers)
    if cluster_cfg is not None:
        from kalamdb.server.forward import Forwarder

        state.sql.forwarder = Forwarder(cluster_cfg.node_id, cluster_cfg.forward_timeout_ms / 1000)
    app = create_app(state)
    guard = ConnectionGuard(idle_timeout_s=cfg.limits.http_idle_timeout_s,  # idle/partial-request timeout,
                            max_per_address=cfg.limits.max_connections_per_address)  # per-address cap
    guard.install(app)
    access_log = logging.getLogger("aiohttp.access") if cfg.logging.level == "debug" else None
    runner = web.AppRunner(app, access_log=access_log, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (embedded use)
            pass
    try:
        await node.start()
        await runner.setup()
        if runner.server is None:  # setup() made it
            raise RuntimeError("the HTTP runner has no server after setup()")
        # The SQL lane serves POST /v1/api/sql without aiohttp's per-request machinery; it is off
        # at log level debug, where every request must reach aiohttp's access log.
        lane = None if cfg.logging.level == "debug" else SqlLane(
            state.sql, runner.server, max_body_bytes=cfg.limits.max_body_bytes, guard=guard)
        state.lane = lane
        guard_task = asyncio.create_task(guard.run(runner.server, lane_connections(lane)), name="connection-guard")
        listen_sock = socket.socket(fileno=listen_fd) if listen_fd is not None else None
        site: web.BaseSite
        if lane is not None:
            site = LaneSite(runner, lane, host=cfg.server.host, port=cfg.server.port, sock=listen_sock,
                            shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        elif listen_sock is not None:
            site = web.SockSite(runner, listen_sock)
        else:
            site = web.TCPSite(runner, cfg.server.host, cfg.server.port, backlog=2048, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror or exc}") from None
        port = runner.addresses[0][1]
        log.info("kalamdb listening on http://%s:%d (data dir %s, applied index %d)",
                 cfg.server.host, port, data_dir, node.applied_index)
        if port_file is not None:
            write_port_file(port_file, cfg.server.host, port)
        # everything loaded so far lives as long as the process: keep it out of every GC pass
        gc.freeze()
        release_free_heap()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: refusing new connections, finishing in-flight requests")
        db.stop_reads()  # a long read would otherwise hold the stop for up to its whole time budget
    finally:
        if "guard_task" in locals():
            guard_task.cancel()
        await runner.cleanup()
        if state.sql.forwarder is not None:
            await state.sql.forwarder.close()
        await node.stop()
        workers.close()
        applied = db.applied_index
        await loop.run_in_executor(None, db.close)
        log.info("stopped cleanly at applied index %d", applied)


def run(cfg: Config, *, port_file: Path | None = None, listen_fd: int | None = None,
        rpc_fd: int | None = None) -> None:
    """Blocking entry point on uvloop."""
    setup_logging(cfg.logging.level)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(cfg, port_file=port_file, listen_fd=listen_fd, rpc_fd=rpc_fd))
