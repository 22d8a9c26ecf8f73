"""Server configuration: `server.toml`, then `KALAMDB_*` environment variables, then command-line flags.

One place decides every setting and checks it, so a mistake stops the server at start with a message
that names the field instead of surfacing later as a strange runtime failure.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalamdb import config_upstream as upstream

LOG_LEVELS = ("error", "warn", "info", "debug")
_LOG_LEVEL_ALIASES = {"warning": "warn", "trace": "debug"}
JWT_SECRET_FILE = "jwt_secret"


class ConfigError(ValueError):
    """A configuration value that cannot be used; `field` is its dotted name (e.g. `server.port`)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"invalid configuration {field_name}: {message}")
        self.field = field_name


@dataclass
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass
class StorageSection:
    data_dir: str = "./data"
    # how often the node proposes deletion of expired STREAM rows
    expiry_interval_ms: int = 1000


@dataclass
class AuthSection:
    root_password: str | None = None
    jwt_secret: str | None = None
    jwt_expiry_hours: float = 24.0
    # root with no password may log in with an empty one from this machine (`make run` sets this);
    # off: root without a password answers 428 setup_required until POST /v1/api/auth/setup
    allow_empty_root_on_localhost: bool = False
    # POST /v1/api/auth/setup and GET /v1/api/auth/status from other machines (upstream's key)
    allow_remote_setup: bool = False
    # this many failed logins in a row lock an account for lockout_minutes (upstream: 5, 15)
    max_failed_logins: int = 5
    lockout_minutes: int = 15
    # password checks per user name and second, on each node (429 beyond)
    max_login_attempts_per_user_per_sec: int = 10


@dataclass
class RateLimitSection:
    # password checks (login, refresh, setup, Basic credentials) per client address and second
    max_auth_requests_per_ip_per_sec: int = 20


@dataclass
class LoggingSection:
    level: str = "info"


@dataclass
class LimitsSection:
    # a request body larger than this is refused with 413 before it is parsed
    max_body_bytes: int = 4 * 1024 * 1024
    # admission control (server/admission.py): SQL threads, waiting requests, one user's requests
    sql_workers: int = 2
    max_queued_requests: int = 512
    max_requests_per_user: int = 128
    # an HTTP connection with no request running (idle, or stuck in its headers) is closed after this
    http_idle_timeout_s: float = 30.0  # above the forwarder's 15 s idle replacement (server/forward.py)
    # one client address may hold at most this many HTTP connections
    max_connections_per_address: int = 1024


@dataclass
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    storage: StorageSection = field(default_factory=StorageSection)
    auth: AuthSection = field(default_factory=AuthSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    rate_limit: RateLimitSection = field(default_factory=RateLimitSection)
    # `[cluster]` is parsed by the cluster layer; kept raw here (None = single node)
    cluster: dict[str, Any] | None = None
    # settings of an upstream KalamDB server.toml that kalamdb has no use for (reported at start-up)
    ignored: list[str] = field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.storage.data_dir)


# environment variable -> dotted field
ENV_VARS: dict[str, str] = {
    "KALAMDB_SERVER_HOST": "server.host",
    "KALAMDB_SERVER_PORT": "server.port",
    "KALAMDB_DATA_DIR": "storage.data_dir",
    "KALAMDB_ROOT_PASSWORD": "auth.root_password",
    "KALAMDB_JWT_SECRET": "auth.jwt_secret",
    "KALAMDB_JWT_EXPIRY_HOURS": "auth.jwt_expiry_hours",
    "KALAMDB_ALLOW_EMPTY_ROOT": "auth.allow_empty_root_on_localhost",
    "KALAMDB_LOG": "logging.level",
    "KALAMDB_MAX_BODY_BYTES": "limits.max_body_bytes",
    "KALAMDB_SQL_WORKERS": "limits.sql_workers",
    "KALAMDB_MAX_QUEUED_REQUESTS": "limits.max_queued_requests",
    "KALAMDB_MAX_REQUESTS_PER_USER": "limits.max_requests_per_user",
}


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a checked Config: file values, overridden by env, overridden by `overrides`
    (dotted field -> value, e.g. {"server.port": 0}; None values are ignored)."""
    cfg = Config()
    if path is not None:
        _apply_file(cfg, Path(path))
    env = os.environ if env is None else env
    for var, dotted in ENV_VARS.items():
        if var in env:
            _set(cfg, dotted, env[var], source=var)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(cfg, dotted, value, source=dotted)
    validate(cfg)
    return cfg


def _apply_file(cfg: Config, path: Path) -> None:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--config", f"file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    for section, values in raw.items():
        if not isinstance(values, dict):
            if section in upstream.IGNORED_TOP_LEVEL:
                cfg.ignored.append(section)
                continue
            raise ConfigError(section, f"unknown setting '{section}' outside a section (known sections: "
                              f"{', '.join(_sections())})")
        if section in upstream.IGNORED_SECTIONS:  # upstream's, for parts kalamdb does not have
            cfg.ignored.extend(f"{section}.{k}" for k in _flatten(values))
            continue
        if section == "cluster":
            cfg.cluster = _cluster_section(cfg, values)
            continue
        ours = upstream.SECTION_ALIASES.get(section, section)
        target = getattr(cfg, ours, None)
        has_fields = ours != "cluster" and dataclasses.is_dataclass(target)
        if not has_fields and ours not in upstream.IGNORED_KEYS:  # e.g. [security]: only upstream's keys
            raise ConfigError(section, f"unknown section [{section}] (known: {', '.join(_sections())})")
        fields = {f.name for f in dataclasses.fields(target)} if has_fields and target is not None else set()
        for key, value in values.items():
            mapped = upstream.HONOURED.get(f"{section}.{key}") or upstream.HONOURED.get(f"{ours}.{key}")
            if key in fields and not isinstance(value, dict):
                if ours == "auth" and key == "jwt_secret" and value in upstream.PUBLISHED_JWT_SECRETS:
                    cfg.ignored.append(f"{section}.jwt_secret (upstream's published sample secret: this node "
                                       "uses a secret of its own)")
                    continue
                _set(cfg, f"{ours}.{key}", value, source=f"{section}.{key}")
            elif mapped is not None:
                _set(cfg, mapped, value, source=f"{section}.{key}")
            elif isinstance(value, dict) and all(upstream.ignored(ours, f"{key}.{k}") for k in _flatten(value)):
                cfg.ignored.extend(f"{section}.{key}.{k}" for k in _flatten(value))
            elif not isinstance(value, dict) and upstream.ignored(ours, key):
                cfg.ignored.append(f"{section}.{key}")
            elif has_fields:
                _set(cfg, f"{ours}.{key}", value, source=f"{section}.{key}")  # the error names the key
            else:
                raise ConfigError(f"{section}.{key}", f"unknown key '{key}' in [{section}]")


def _flatten(table: dict, prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in table.items():
        if isinstance(v, dict):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


def _cluster_section(cfg: Config, values: dict) -> dict[str, Any] | None:
    """[cluster] for the cluster layer, without upstream's keys kalamdb does not use; a [cluster]
    with neither peers nor rpc_addr (upstream's sample has only node_id) is a single node."""
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if upstream.ignored("cluster", key):
            cfg.ignored.append(f"cluster.{key}")
        elif key == "peers" and isinstance(value, list):
            peers = []
            for i, peer in enumerate(value):
                if isinstance(peer, dict) and "rpc_server_name" in peer:
                    cfg.ignored.append(f"cluster.peers[{i}].rpc_server_name")
                    peer = {k: v for k, v in peer.items() if k != "rpc_server_name"}
                peers.append(peer)
            kept[key] = peers
        else:
            kept[key] = value
    if not kept.get("peers") and "rpc_addr" not in kept:
        cfg.ignored.append("cluster (no peers and no rpc_addr: this node runs alone)")
        return None
    return kept


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name != "ignored"]


def _set(cfg: Config, dotted: str, value: Any, *, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    section = getattr(cfg, section_name, None)
    if section is None or not dataclasses.is_dataclass(section) or isinstance(section, type):
        raise ConfigError(dotted, f"unknown section '{section_name}'")
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(dotted, f"unknown key '{key}' in [{section_name}] (known: {', '.join(fields)})")
    default = getattr(type(section)(), key)
    setattr(section, key, _coerce(dotted, value, default, source))


def _coerce(dotted: str, value: Any, default: Any, source: str) -> Any:
    """Convert env strings and TOML values to the field's type, or say what was expected."""
    kind = type(default) if default is not None else str
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif kind is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(dotted, f"expected {kind.__name__}, got {value!r} (from {source})")


def validate(cfg: Config) -> None:
    """Check ranges and relations between fields; raise ConfigError naming the first bad field."""
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError("server.port", f"{cfg.server.port} is not a TCP port (0-65535; 0 = any free port)")
    if not cfg.server.host.strip():
        raise ConfigError("server.host", "must not be empty")
    if not cfg.storage.data_dir.strip():
        raise ConfigError("storage.data_dir", "must not be empty")
    if cfg.storage.expiry_interval_ms < 10:
        raise ConfigError("storage.expiry_interval_ms", "must be at least 10")
    level = _LOG_LEVEL_ALIASES.get(cfg.logging.level.lower(), cfg.logging.level.lower())
    if level not in LOG_LEVELS:
        raise ConfigError("logging.level", f"{cfg.logging.level!r} is not one of {', '.join(LOG_LEVELS)}")
    cfg.logging.level = level
    if not cfg.auth.jwt_expiry_hours > 0:
        raise ConfigError("auth.jwt_expiry_hours", "must be greater than 0")
    for name in ("max_failed_logins", "lockout_minutes", "max_login_attempts_per_user_per_sec"):
        if getattr(cfg.auth, name) < 1:
            raise ConfigError(f"auth.{name}", "must be at least 1")
    if cfg.rate_limit.max_auth_requests_per_ip_per_sec < 1:
        raise ConfigError("rate_limit.max_auth_requests_per_ip_per_sec", "must be at least 1")
    if cfg.auth.jwt_secret is not None and len(cfg.auth.jwt_secret) < 16:
        raise ConfigError("auth.jwt_secret", "must be at least 16 characters")
    if cfg.limits.max_body_bytes < 1024:
        raise ConfigError("limits.max_body_bytes", "must be at least 1024")
    for name in ("sql_workers", "max_queued_requests", "max_requests_per_user"):
        if getattr(cfg.limits, name) < 1:
            raise ConfigError(f"limits.{name}", "must be at least 1")
    if not 0.1 <= cfg.limits.http_idle_timeout_s <= 3600:
        raise ConfigError("limits.http_idle_timeout_s", "must be between 0.1 and 3600 seconds")
    if cfg.limits.max_connections_per_address < 1:
        raise ConfigError("limits.max_connections_per_address", "must be at least 1")


def prepare_data_dir(cfg: Config) -> Path:
    """Create the data directory and prove it is writable (a probe file is written and fsynced)."""
    path = cfg.data_path
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)  # also when it existed: the database holds password hashes
        probe = path / ".write_probe"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise ConfigError("storage.data_dir", f"{path} is not a writable directory: {exc.strerror or exc}") from None
    return path


def resolve_jwt_secret(cfg: Config) -> str:
    """The configured secret, else the one persisted in the data dir, else a new one persisted there
    (so tokens survive restarts without the operator having to invent a secret)."""
    if cfg.auth.jwt_secret:
        return cfg.auth.jwt_secret
    secret_path = cfg.data_path / JWT_SECRET_FILE
    try:
        existing = secret_path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    tmp = secret_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, secret_path)
    return secret
