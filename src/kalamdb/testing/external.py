"""Clusters the kit did not start: `KALAMDB_CLUSTER_URLS=http://a,http://b,http://c`.

Everything that needs only HTTP (SQL on nodes, leader discovery, replication barriers, consistency
and digest checks, stats, run-time failpoints) works as on a kit-started cluster. Process control,
network faults and pressure are things the kit cannot have over processes it did not start, so an
`ExternalCluster` simply has no `processes`, `net` or `pressure`: tests that need them carry
`@pytest.mark.process_control` (or use `fresh_cluster`) and the plugin skips them in external mode.
"""

from __future__ import annotations

import os
from typing import Self
from urllib.parse import urlsplit

from kalamdb.testing.nodes import ClusterError, NodeHandle
from kalamdb.testing.ops import ClusterOps
from kalamdb.testing.seeds import default_seed


class ExternalNode(NodeHandle):
    """A node reached by URL only: no pid, data dir or log the kit could look at."""

    def __init__(self, index: int, node_id: int, url: str, root_password: str):
        super().__init__(index, node_id, root_password)
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    def is_running(self) -> bool:
        return True  # as far as the kit can know; a dead node shows up as "not answering"

    def log_tail(self, lines: int = 30) -> str:
        return f"(external node {self.url}: its log is where it runs)"

    def __repr__(self) -> str:
        return f"<external node {self.node_id} (index {self.index}) {self.url}>"


class ExternalCluster(ClusterOps[ExternalNode]):
    """The ClusterOps helpers over nodes at fixed URLs (no process control, no network faults)."""

    external = True
    root = None

    def __init__(self, urls: list[str], root_password: str = "", *, verbose: bool = False,
                 seed: int | None = None):
        if not urls:
            raise ValueError("an external cluster needs at least one URL")
        self.urls = urls
        self.root_password = root_password
        self.verbose = verbose
        self.seed = default_seed() if seed is None else seed
        self._init_ops()
        self.nodes = []
        for i, url in enumerate(urls):
            probe = ExternalNode(i, -1, url, root_password)
            try:
                h = probe.health(timeout=5.0)
            except OSError as exc:
                raise ClusterError(f"external cluster node {url} does not answer: {exc}") from None
            if h.http_status != 200 or "node_id" not in h:
                raise ClusterError(f"{url} gave no cluster health (is it a kalamdb node, and is "
                                   f"KALAMDB_ROOT_PASSWORD right?): HTTP {h.http_status} {dict(h)}")
            if not h.get("is_cluster_mode"):
                raise ClusterError(f"{url} is a single node, not a cluster member")
            probe.node_id = int(h["node_id"])
            self.nodes.append(probe)
        ids = [n.node_id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ClusterError(f"KALAMDB_CLUSTER_URLS name the same node twice (node ids {ids} for {urls})")

    def shutdown(self) -> None:
        """Leave the cluster running (it is not ours); close our connections."""
        for n in self.nodes:
            n.drop_client()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def parse_cluster_urls(text: str) -> list[str]:
    """`http://a:1,http://b:2` -> a list of validated http URLs (clear error on anything else)."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("KALAMDB_CLUSTER_URLS is empty; expected http://host:port,http://host:port,...")
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"KALAMDB_CLUSTER_URLS entry {u!r} is not an http://host:port URL")
    return urls


def connect_external_cluster(urls: str | list[str], root_password: str | None = None, *,
                             verbose: bool = False) -> ExternalCluster:
    """Connect to the running cluster at `urls` (a comma-separated string or a list); the root
    password defaults to KALAMDB_ROOT_PASSWORD."""
    url_list = parse_cluster_urls(urls) if isinstance(urls, str) else parse_cluster_urls(",".join(urls))
    if root_password is None:
        root_password = os.environ.get("KALAMDB_ROOT_PASSWORD", "")
    return ExternalCluster(url_list, root_password, verbose=verbose)
