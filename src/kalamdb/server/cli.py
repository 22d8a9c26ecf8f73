"""`kalamdb serve`: configuration from file, environment and flags, then run the server."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kalamdb.config import ConfigError, load_config, prepare_data_dir


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Path to server.toml.")
@click.option("--host", help="Address to listen on (server.host).")
@click.option("--port", type=int, help="HTTP port; 0 picks a free one (server.port).")
@click.option("--data-dir", help="Where the database lives (storage.data_dir).")
@click.option("--log-level", help="error|warn|info|debug (logging.level; env KALAMDB_LOG).")
@click.option("--max-body-bytes", type=int, help="Largest accepted request body (limits.max_body_bytes).")
@click.option("--port-file", type=click.Path(dir_okay=False),
              help="Write the bound HTTP port to this file once listening (for --port 0).")
@click.option("--listen-fd", type=int, hidden=True,
              help="Serve HTTP on this inherited listening socket (the test kit binds ports race-free).")
@click.option("--rpc-fd", type=int, hidden=True, help="Serve Raft RPC on this inherited listening socket.")
def serve_command(config_path, host, port, data_dir, log_level, max_body_bytes, port_file, listen_fd,
                  rpc_fd) -> None:
    """Run a kalamdb server (a single node unless server.toml has a [cluster] section)."""
    # Everything the node writes (the database with its password hashes, the Raft log, snapshots,
    # logs) is private to the user running it, from creation on: 0600 files, 0700 directories.
    os.umask(0o077)
    try:
        cfg = load_config(config_path, overrides={
            "server.host": host,
            "server.port": port,
            "storage.data_dir": data_dir,
            "logging.level": log_level,
            "limits.max_body_bytes": max_body_bytes,
        })
        prepare_data_dir(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from kalamdb.server.runtime import StartupError, run

    try:
        run(cfg, port_file=Path(port_file) if port_file else None, listen_fd=listen_fd, rpc_fd=rpc_fd)
    except (ConfigError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None
