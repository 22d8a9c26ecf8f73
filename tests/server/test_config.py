"""Configuration: file < env < flags, and every bad value stops `kalamdb serve` naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kalamdb.config import ConfigError, load_config, resolve_jwt_secret


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_file_then_env_then_overrides_win_in_that_order(tmp_path):
    path = write(tmp_path, '[server]\nport = 9000\nhost = "127.0.0.2"\n[logging]\nlevel = "debug"\n')
    cfg = load_config(path, env={"KALAMDB_SERVER_PORT": "9001", "KALAMDB_LOG": "warn"},
                      overrides={"server.port": 9002, "server.host": None})
    assert (cfg.server.port, cfg.server.host, cfg.logging.level) == (9002, "127.0.0.2", "warn")


def test_env_variables_cover_the_documented_fields(tmp_path):
    cfg = load_config(env={
        "KALAMDB_SERVER_HOST": "0.0.0.0", "KALAMDB_SERVER_PORT": "8181", "KALAMDB_DATA_DIR": str(tmp_path),
        "KALAMDB_ROOT_PASSWORD": "pw", "KALAMDB_JWT_SECRET": "s" * 32, "KALAMDB_LOG": "error"})
    assert cfg.server.host == "0.0.0.0" and cfg.server.port == 8181
    assert cfg.storage.data_dir == str(tmp_path)
    assert (cfg.auth.root_password, cfg.auth.jwt_secret, cfg.logging.level) == ("pw", "s" * 32, "error")


def test_cluster_section_is_kept_for_the_cluster_layer(tmp_path):
    path = write(tmp_path, '[cluster]\nnode_id = 2\n[[cluster.peers]]\nnode_id = 1\nrpc_addr = "x:1"\n')
    cfg = load_config(path, env={})
    assert cfg.cluster == {"node_id": 2, "peers": [{"node_id": 1, "rpc_addr": "x:1"}]}


@pytest.mark.parametrize(("text", "env", "field"), [
    ("[server]\nport = 70000\n", {}, "server.port"),
    ("[server]\nport = \"http\"\n", {}, "server.port"),
    ("", {"KALAMDB_SERVER_PORT": "eighty"}, "server.port"),
    ("[server]\nbogus = 1\n", {}, "server.bogus"),
    ("[nonsense]\nx = 1\n", {}, "nonsense"),
    ("[logging]\nlevel = \"loud\"\n", {}, "logging.level"),
    ("[auth]\njwt_expiry_hours = 0\n", {}, "auth.jwt_expiry_hours"),
    ("[auth]\njwt_secret = \"short\"\n", {}, "auth.jwt_secret"),
    ("[limits]\nmax_body_bytes = 10\n", {}, "limits.max_body_bytes"),
    ("[server\nport = 1\n", {}, "--config"),
])
def test_bad_values_name_the_field(tmp_path, text, env, field):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert info.value.field == field
    assert field in str(info.value)


def test_generated_jwt_secret_is_persisted_and_reused(tmp_path):
    cfg = load_config(env={"KALAMDB_DATA_DIR": str(tmp_path)})
    first = resolve_jwt_secret(cfg)
    assert len(first) >= 32
    assert resolve_jwt_secret(cfg) == first
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KALAMDB_")}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "kalamdb", "serve", *args], check=False, capture_output=True,
                          text=True, env=clean, timeout=60)


@pytest.mark.parametrize(("args", "env", "field"), [
    (["--port", "70000"], {}, "server.port"),
    ([], {"KALAMDB_SERVER_PORT": "abc"}, "server.port"),
    (["--log-level", "chatty"], {}, "logging.level"),
])
def test_serve_exits_non_zero_naming_the_field(tmp_path, args, env, field):
    done = serve("--data-dir", str(tmp_path / "d"), *args, env=env)
    assert done.returncode != 0
    assert field in done.stderr, done.stderr


def test_serve_refuses_an_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = serve("--data-dir", str(blocker / "data"), "--port", "0")
    assert done.returncode != 0
    assert "storage.data_dir" in done.stderr, done.stderr


def test_serve_refuses_an_unknown_key_in_the_config_file(tmp_path):
    path = write(tmp_path, "[storage]\ndata_dirr = \"x\"\n")
    done = serve("--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert done.returncode != 0
    assert "storage.data_dirr" in done.stderr and "data_dir" in done.stderr
