"""kalamdb.testing: the cluster test kit. `from kalamdb.testing import get_cluster_server,
start_cluster_server, ClusterTestServer` (loaded on first use, so importing another module of this
package stays cheap)."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ClusterTestServer": "kalamdb.testing.cluster",
    "ClusterError": "kalamdb.testing.nodes",
    "NodeHandle": "kalamdb.testing.nodes",
    "NodeProcess": "kalamdb.testing.process",
    "ProcessControl": "kalamdb.testing.process",
    "ClusterNetwork": "kalamdb.testing.network",
    "FaultNotSupported": "kalamdb.testing.network",
    "get_cluster_server": "kalamdb.testing.cluster",
    "start_cluster_server": "kalamdb.testing.cluster",
    "shutdown_cluster_server": "kalamdb.testing.cluster",
    "ExternalCluster": "kalamdb.testing.external",
    "connect_external_cluster": "kalamdb.testing.external",
    "ConsistencyReport": "kalamdb.testing.consistency",
    "DigestReport": "kalamdb.testing.consistency",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kalamdb.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
