"""The `[cluster]` section of server.toml and upstream's KALAMDB_CLUSTER_* environment variables.

Three processes given only the environment variables form one cluster, so every field has an
environment spelling, and every mistake names the field to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kalamdb.config import ConfigError

MIN_SECRET_CHARS = 16  # a cluster secret shorter than this is refused at start

_SNAPSHOT_POLICY = re.compile(r"^\s*LogsSinceLast\(\s*(\d+)\s*\)\s*$|^\s*Never\s*$", re.IGNORECASE)
DEFAULT_SNAPSHOT_EVERY = 20_000


@dataclass(frozen=True)
class Peer:
    node_id: int
    rpc_addr: str  # host:port
    api_addr: str  # http://host:port

    @property
    def rpc_hostport(self) -> tuple[str, int]:
        return split_hostport(self.rpc_addr, f"peer {self.node_id} rpc_addr")


@dataclass(frozen=True)
class ClusterConfig:
    node_id: int
    rpc_addr: str
    api_addr: str
    cluster_id: str = "kalamdb-cluster"
    peers: tuple[Peer, ...] = ()
    secret: str = ""
    heartbeat_interval_ms: int = 250
    election_timeout_ms: tuple[int, int] = (500, 1000)
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY  # LogsSinceLast(n); 0 = Never
    leader_wait_ms: int = 3000  # how long a write waits for a leader before 503
    write_timeout_ms: int = 10000  # proposed but not committed by then: indefinite 503
    forward_timeout_ms: int = 10000

    @property
    def rpc_hostport(self) -> tuple[str, int]:
        return split_hostport(self.rpc_addr, "cluster.rpc_addr")

    def peer(self, node_id: int) -> Peer | None:
        return next((p for p in self.peers if p.node_id == node_id), None)

    # Ticks: the core counts logical ticks; pick a tick fine enough for the election range.
    @property
    def tick_ms(self) -> int:
        return max(1, min(self.heartbeat_interval_ms, self.election_timeout_ms[0] // 10))

    @property
    def heartbeat_ticks(self) -> int:
        return max(1, round(self.heartbeat_interval_ms / self.tick_ms))

    @property
    def election_ticks(self) -> int:
        # The core draws timeouts in [E, 2E) ticks: E = the configured minimum.
        return max(self.heartbeat_ticks + 1, round(self.election_timeout_ms[0] / self.tick_ms))


def split_hostport(addr: str, what: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 < int(port) < 65536):
        raise ConfigError(what, f"'{addr}' is not host:port")
    return host.strip("[]"), int(port)


def _api_url(addr: str, what: str) -> str:
    url = addr if "://" in addr else f"http://{addr}"
    if not re.match(r"^https?://[^/:]+(:\d+)?/?$", url):
        raise ConfigError(what, f"'{addr}' is not an HTTP address like http://127.0.0.1:8080")
    return url.rstrip("/")


def parse_peers(text: str) -> list[Peer]:
    """Upstream's KALAMDB_CLUSTER_PEERS: `2@host:rpc@http://host:api;3@...`."""
    peers = []
    for i, item in enumerate(p for p in text.split(";") if p.strip()):
        parts = item.strip().split("@")
        if len(parts) != 3 or not parts[0].isdigit():
            raise ConfigError("KALAMDB_CLUSTER_PEERS",
                              f"entry {i + 1} '{item}' is not node_id@rpc_host:port@http://api_host:port")
        node_id = int(parts[0])
        split_hostport(parts[1], f"KALAMDB_CLUSTER_PEERS entry {i + 1} rpc address")
        peers.append(Peer(node_id, parts[1], _api_url(parts[2], f"KALAMDB_CLUSTER_PEERS entry {i + 1}")))
    return peers


_ENV = {
    "KALAMDB_CLUSTER_ID": "cluster_id",
    "KALAMDB_NODE_ID": "node_id",
    "KALAMDB_CLUSTER_RPC_ADDR": "rpc_addr",
    "KALAMDB_CLUSTER_API_ADDR": "api_addr",
    "KALAMDB_CLUSTER_PEERS": "peers",
    "KALAMDB_CLUSTER_SECRET": "secret",
    "KALAMDB_CLUSTER_HEARTBEAT_INTERVAL_MS": "heartbeat_interval_ms",
    "KALAMDB_CLUSTER_ELECTION_TIMEOUT_MS": "election_timeout_ms",
    "KALAMDB_CLUSTER_SNAPSHOT_POLICY": "snapshot_policy",
    "KALAMDB_CLUSTER_LEADER_WAIT_MS": "leader_wait_ms",
    "KALAMDB_CLUSTER_WRITE_TIMEOUT_MS": "write_timeout_ms",
    "KALAMDB_CLUSTER_FORWARD_TIMEOUT_MS": "forward_timeout_ms",
}
_KEYS = set(_ENV.values())


def cluster_requested(raw: Mapping[str, Any] | None, env: Mapping[str, str]) -> bool:
    return raw is not None or "KALAMDB_NODE_ID" in env or "KALAMDB_CLUSTER_PEERS" in env


def _int(value: Any, what: str, lo: int = 1, hi: int = 1 << 31) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(what, f"'{value}' is not an integer") from None
    if isinstance(value, bool) or not lo <= out <= hi:
        raise ConfigError(what, f"{out} is out of range [{lo}, {hi}]")
    return out


def load_cluster_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None,
                        *, default_api_addr: str | None = None) -> ClusterConfig | None:
    """[cluster] from server.toml, overridden by environment variables; None = single node."""
    env = os.environ if env is None else env
    if not cluster_requested(raw, env):
        return None
    values: dict[str, Any] = dict(raw or {})
    for key in values:
        if key not in _KEYS:
            raise ConfigError(f"cluster.{key}", f"unknown key (known: {', '.join(sorted(_KEYS))})")
    for var, key in _ENV.items():
        if var in env:
            values[key] = env[var]

    if "node_id" not in values:
        raise ConfigError("cluster.node_id", "is required in cluster mode (KALAMDB_NODE_ID)")
    node_id = _int(values["node_id"], "cluster.node_id", 1, 1023)
    if "rpc_addr" not in values:
        raise ConfigError("cluster.rpc_addr", "is required in cluster mode (KALAMDB_CLUSTER_RPC_ADDR)")
    rpc_addr = str(values["rpc_addr"])
    split_hostport(rpc_addr, "cluster.rpc_addr")
    api = values.get("api_addr", default_api_addr)
    if api is None:
        raise ConfigError("cluster.api_addr", "is required in cluster mode (KALAMDB_CLUSTER_API_ADDR)")
    api_addr = _api_url(str(api), "cluster.api_addr")

    peers_raw = values.get("peers", [])
    if isinstance(peers_raw, str):
        peers = parse_peers(peers_raw)
    elif isinstance(peers_raw, list):
        peers = []
        for i, p in enumerate(peers_raw):
            if not isinstance(p, dict) or set(p) - {"node_id", "rpc_addr", "api_addr"} or len(p) != 3:
                raise ConfigError(f"cluster.peers[{i}]", "needs exactly node_id, rpc_addr, api_addr")
            split_hostport(str(p["rpc_addr"]), f"cluster.peers[{i}].rpc_addr")
            peers.append(Peer(_int(p["node_id"], f"cluster.peers[{i}].node_id", 1, 1023), str(p["rpc_addr"]),
                              _api_url(str(p["api_addr"]), f"cluster.peers[{i}].api_addr")))
    else:
        raise ConfigError("cluster.peers", "must be a list of tables or a KALAMDB_CLUSTER_PEERS string")
    peers = [p for p in peers if p.node_id != node_id]  # a peer list may include this node
    ids = [p.node_id for p in peers]
    if len(ids) != len(set(ids)):
        raise ConfigError("cluster.peers", f"duplicate node ids in {sorted(ids)}")

    cluster_id = str(values.get("cluster_id", "kalamdb-cluster"))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cluster_id):
        raise ConfigError("cluster.cluster_id", f"'{cluster_id}' must be 1-64 of A-Z a-z 0-9 _ . -")
    secret = str(values.get("secret", ""))
    if len(secret) < MIN_SECRET_CHARS:
        # A secret derived from public data would let anyone who reaches the RPC port join the
        # cluster, read every replicated write, and sign a root token for the HTTP API.
        raise ConfigError("cluster.secret", (
            "is not set" if not secret else f"is shorter than {MIN_SECRET_CHARS} characters") + ": without "
            "a secret shared by the nodes, anyone who can reach the RPC port could join the cluster, read every "
            "replicated write and sign a root token for the HTTP API. Set KALAMDB_CLUSTER_SECRET (the same "
            "random value on every node, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`) or "
            "[cluster] secret in server.toml; `kalamdb cluster up` generates one for a local cluster")

    hb = _int(values.get("heartbeat_interval_ms", 250), "cluster.heartbeat_interval_ms", 1, 60_000)
    et = values.get("election_timeout_ms", (500, 1000))
    if isinstance(et, str):
        et = [x for x in re.split(r"[,\s\-]+", et.strip("[]() ")) if x]
    if not isinstance(et, (list, tuple)) or len(et) != 2:
        raise ConfigError("cluster.election_timeout_ms", f"'{et}' must be [min, max] in ms, e.g. [150, 300]")
    lo = _int(et[0], "cluster.election_timeout_ms", 1, 600_000)
    hi = _int(et[1], "cluster.election_timeout_ms", 1, 600_000)
    if not hb < lo <= hi:
        raise ConfigError("cluster.election_timeout_ms",
                          f"needs heartbeat_interval_ms ({hb}) < min ({lo}) <= max ({hi})")

    policy = str(values.get("snapshot_policy", f"LogsSinceLast({DEFAULT_SNAPSHOT_EVERY})"))
    m = _SNAPSHOT_POLICY.match(policy)
    if not m:
        raise ConfigError("cluster.snapshot_policy", f"'{policy}' must be LogsSinceLast(n) or Never")
    snapshot_every = int(m.group(1)) if m.group(1) else 0

    return ClusterConfig(
        node_id=node_id, rpc_addr=rpc_addr, api_addr=api_addr, cluster_id=cluster_id, peers=tuple(peers),
        secret=secret, heartbeat_interval_ms=hb, election_timeout_ms=(lo, hi), snapshot_every=snapshot_every,
        leader_wait_ms=_int(values.get("leader_wait_ms", 3000), "cluster.leader_wait_ms", 0, 600_000),
        write_timeout_ms=_int(values.get("write_timeout_ms", 10000), "cluster.write_timeout_ms", 1, 600_000),
        forward_timeout_ms=_int(values.get("forward_timeout_ms", 10000), "cluster.forward_timeout_ms", 1, 600_000),
    )
