"""An upstream KalamDB server.toml starts a kalamdb node: the keys kalamdb has are honoured, the
ones for parts it does not have are reported once as ignored, and a misspelled key in a section
kalamdb has is still an error naming the key.

UPSTREAM_SAMPLE restates the sections and keys of the sample server.toml in upstream's repository
(github.com/jamals86/KalamDB, server.toml at 66dc492, Apache-2.0) with its default values."""

from __future__ import annotations

import pytest

from kalamdb.config import ConfigError, load_config
from kalamdb.testing.single import start_server, toml_dumps

UPSTREAM_SAMPLE: dict = {
    "server": {"host": "127.0.0.1", "port": 8080, "public_origin": "", "workers": 0, "enable_http2": True,
               "api_version": "v1"},
    "storage": {"data_path": "./data", "shared_tables_template": "{namespace}/{tableName}",
                "user_tables_template": "{namespace}/{tableName}/{userId}",
                "rocksdb": {"block_cache_size": 2097152, "max_background_jobs": 4,
                            "cf_profiles": {p: {"write_buffer_size": 32768, "max_write_buffers": 2}
                                            for p in ("system_meta", "system_index", "hot_data", "hot_index",
                                                      "raft")}}},
    "datafusion": {"memory_limit": 67108864, "query_parallelism": 2, "max_partitions": 4, "batch_size": 1024},
    "manifest_cache": {"eviction_interval_seconds": 300, "max_entries": 500, "eviction_ttl_days": 7,
                       "user_table_weight_factor": 10},
    "flush": {"default_row_limit": 10000, "default_time_interval": 300, "flush_batch_size": 10000,
              "check_interval_seconds": 60},
    "retention": {"default_deleted_retention_hours": 168},
    "stream": {"default_ttl_seconds": 10, "default_max_buffer": 10000, "eviction_interval_seconds": 60},
    "limits": {"max_message_size": 1048576, "max_query_limit": 1000, "default_query_limit": 50},
    "logging": {"level": "debug", "logs_path": "./logs", "log_to_console": True, "format": "json",
                "slow_query_threshold_ms": 1000,
                "otlp": {"enabled": True, "endpoint": "http://127.0.0.1:4317", "protocol": "grpc",
                         "service_name": "kalamdb-server", "timeout_ms": 3000}},
    "performance": {"request_timeout": 30, "keepalive_timeout": 75, "max_connections": 25000},
    "rate_limit": {"max_queries_per_sec": 100000, "max_messages_per_sec": 10000, "max_subscriptions_per_user": 100,
                   "max_auth_requests_per_ip_per_sec": 50},
    "security": {"max_request_body_size": 10485760, "max_ws_message_size": 1048576, "strict_ws_origin_check": False,
                 "cors": {"allowed_origins": ["http://localhost:4173", "http://127.0.0.1:8080"],
                          "allowed_methods": ["GET", "POST"], "allowed_headers": ["Authorization"],
                          "expose_headers": [], "allow_credentials": True, "max_age": 3600,
                          "allow_private_network": False}},
    "authentication": {"bcrypt_cost": 12, "min_password_length": 8, "max_password_length": 72,
                       "disable_common_password_check": False,
                       "jwt_secret": "your-secret-key-at-least-32-chars-change-me-in-production",
                       "allow_remote_setup": False, "jwt_trusted_issuers": "",
                       "auto_create_users_from_provider": False},
    "shutdown": {"flush": {"timeout": 300}},
    "jobs": {"max_concurrent": 10, "max_retries": 3, "retry_backoff_ms": 100, "wal_cleanup_interval_seconds": 300},
    "execution": {"handler_timeout_seconds": 30, "max_parameters": 50, "max_parameter_size_bytes": 524288,
                  "sql_plan_cache_max_entries": 200, "sql_plan_cache_ttl_seconds": 900},
    "cluster": {"node_id": 1, "user_shards": 32},
}


def write(tmp_path, config: dict):
    path = tmp_path / "server.toml"
    path.write_text(toml_dumps(config), encoding="utf-8")
    return path


def test_upstreams_sample_loads(tmp_path):
    cfg = load_config(write(tmp_path, UPSTREAM_SAMPLE), env={})
    assert (cfg.server.host, cfg.server.port, cfg.storage.data_dir, cfg.logging.level) == \
        ("127.0.0.1", 8080, "./data", "debug")
    assert cfg.rate_limit.max_auth_requests_per_ip_per_sec == 50
    assert cfg.limits.max_body_bytes == 10485760  # security.max_request_body_size
    assert cfg.auth.allow_remote_setup is False
    assert cfg.auth.jwt_secret is None  # the published sample secret is never used to sign tokens
    assert cfg.cluster is None  # [cluster] without peers: a node of its own
    for key in ("datafusion.memory_limit", "storage.rocksdb.cf_profiles.raft.write_buffer_size", "server.workers",
                "logging.otlp.endpoint", "security.cors.allowed_origins", "authentication.bcrypt_cost",
                "cluster.user_shards", "shutdown.flush.timeout", "limits.max_query_limit",
                "rate_limit.max_queries_per_sec"):
        assert key in cfg.ignored, key
    assert any(i.startswith("authentication.jwt_secret") for i in cfg.ignored)


@pytest.mark.parametrize("section,key,value", [
    ("server", "prot", 8080), ("storage", "data_pth", "./x"), ("authentication", "jwt_secrt", "x" * 40),
    ("rate_limit", "max_auth_requests_per_ip", 5), ("logging", "levl", "info"), ("limits", "max_body_byte", 2048),
    ("security", "max_request_body_sze", 1),
])
def test_a_misspelled_key_in_a_section_kalamdb_has_is_an_error(tmp_path, section, key, value):
    config = {s: dict(v) for s, v in UPSTREAM_SAMPLE.items()}
    config[section][key] = value
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, config), env={})
    assert key in str(info.value)


def test_an_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, {**UPSTREAM_SAMPLE, "sevrer": {"port": 1}}), env={})
    assert "sevrer" in str(info.value)


def test_a_cluster_section_keeps_its_own_keys_and_drops_upstreams_extras(tmp_path):
    cluster = {"cluster_id": "c1", "node_id": 2, "rpc_addr": "127.0.0.1:9189", "api_addr": "http://127.0.0.1:8081",
               "user_shards": 32, "shared_shards": 1, "heartbeat_interval_ms": 50,
               "peers": [{"node_id": 1, "rpc_addr": "127.0.0.1:9188", "api_addr": "http://127.0.0.1:8080",
                          "rpc_server_name": "node1"}]}
    cfg = load_config(write(tmp_path, {"cluster": cluster}), env={})
    assert cfg.cluster["node_id"] == 2 and cfg.cluster["peers"] == [
        {"node_id": 1, "rpc_addr": "127.0.0.1:9188", "api_addr": "http://127.0.0.1:8080"}]
    assert {"cluster.user_shards", "cluster.shared_shards", "cluster.peers[0].rpc_server_name"} <= set(cfg.ignored)


def test_kalamdbs_own_names_still_work(tmp_path):
    cfg = load_config(write(tmp_path, {"auth": {"jwt_secret": "s" * 20, "allow_empty_root_on_localhost": True},
                                       "storage": {"data_dir": "./d"}}), env={})
    assert cfg.auth.jwt_secret == "s" * 20 and cfg.storage.data_dir == "./d" and cfg.ignored == []


def test_a_node_starts_from_upstreams_sample_and_reports_what_it_ignores(tmp_path):
    server = start_server(tmp_path / "data", config={s: dict(v) for s, v in UPSTREAM_SAMPLE.items()})
    try:
        with server.client() as c:
            assert c.sql("CREATE NAMESPACE up_cfg").ok
        lines = [ln for ln in server.log_path.read_text().splitlines() if "setting(s) ignored" in ln]
        assert len(lines) == 1 and "datafusion.memory_limit" in lines[0] and "cluster.user_shards" in lines[0]
    finally:
        server.kill()
