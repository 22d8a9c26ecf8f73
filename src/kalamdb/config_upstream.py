"""What an upstream KalamDB server.toml means to kalamdb (upstream's config schema at 66dc492,
backend/crates/kalamdb-configs): which of its keys kalamdb honours (and under which of its own
names), and which belong to parts kalamdb does not have (RocksDB, DataFusion, OAuth, CORS, ...):
those are ignored and reported once at start-up. A key that is neither kalamdb's nor upstream's in
a section kalamdb has is an error naming the key, as before."""

from __future__ import annotations

# upstream's dotted key -> kalamdb's dotted field
HONOURED: dict[str, str] = {
    "storage.data_path": "storage.data_dir",
    "authentication.root_password": "auth.root_password",
    "authentication.jwt_secret": "auth.jwt_secret",
    "authentication.jwt_expiry_hours": "auth.jwt_expiry_hours",
    "authentication.allow_remote_setup": "auth.allow_remote_setup",
    "security.max_request_body_size": "limits.max_body_bytes",
    "rate_limit.max_connections_per_ip": "limits.max_connections_per_address",
}

# sections kalamdb has, with upstream's keys there that kalamdb does not use (a key with a dot
# prefix, like "rocksdb.", stands for a whole sub-table)
IGNORED_KEYS: dict[str, tuple[str, ...]] = {
    "server": ("public_origin", "workers", "api_version", "enable_http2", "ui_path"),
    "storage": ("shared_tables_template", "user_tables_template", "rocksdb.", "remote_timeouts."),
    "limits": ("max_message_size", "max_query_limit", "default_query_limit"),
    "logging": ("logs_path", "log_to_console", "format", "targets.", "slow_query_threshold_ms", "otlp."),
    "auth": ("jwt_trusted_issuers", "cookie_secure", "min_password_length", "max_password_length", "bcrypt_cost",
             "enforce_password_complexity", "pg_auth_token", "disable_common_password_check",
             "auto_create_users_from_provider"),
    "rate_limit": ("max_queries_per_sec", "max_messages_per_sec", "max_subscriptions_per_user",
                   "max_requests_per_ip_per_sec", "request_body_limit_bytes", "ban_duration_seconds",
                   "enable_connection_protection", "cache_max_entries", "cache_ttl_seconds"),
    "security": ("cors.", "trusted_proxy_ranges", "max_ws_message_size", "strict_ws_origin_check"),
    "cluster": ("user_shards", "shared_shards", "max_snapshots_to_keep", "replication_timeout_ms",
                "reconnect_interval_ms", "peer_wait_max_retries", "peer_wait_initial_delay_ms",
                "peer_wait_max_delay_ms"),
}

# upstream's sections kalamdb has nothing of: every key in them is ignored
IGNORED_SECTIONS = frozenset({
    "performance", "datafusion", "flush", "manifest_cache", "retention", "stream", "topics", "websocket",
    "oauth", "user_management", "shutdown", "jobs", "execution", "files", "rpc_tls"})

# upstream's top-level keys (outside any section)
IGNORED_TOP_LEVEL = frozenset({"transaction_timeout_secs", "max_transaction_buffer_bytes"})

# upstream's name of a section -> kalamdb's
SECTION_ALIASES = {"authentication": "auth"}

# the jwt_secret upstream's sample server.toml ships with: signing tokens with a published secret
# would let anyone forge them, so a node refuses to start with it
PUBLISHED_JWT_SECRETS = frozenset({"your-secret-key-at-least-32-chars-change-me-in-production"})


def ignored(section: str, key: str) -> bool:
    """Whether `key` (dotted below its section) is upstream's and has no kalamdb meaning."""
    for known in IGNORED_KEYS.get(section, ()):
        if key == known or (known.endswith(".") and key.startswith(known)):
            return True
    return False
