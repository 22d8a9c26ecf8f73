"""Clusters the kit did not start: `KALAMDB_CLUSTER_URLS=http://a,http://b,http://c`.

Everything that needs only HTTP (SQL on nodes, leader discovery, replication barriers, consistency
and digest checks, stats) works as on a kit-started cluster. Process control (kill, stop, pause,
restart, add or remove nodes) is impossible from here: inside a pytest test it skips the test with
a reason that says so; elsewhere it raises ProcessControlUnavailable.
"""

from __future__ import annotations

import os
from typing import Self
from urllib.parse import urlsplit

from kalamdb.testing.cluster import (
    ClusterError,
    ClusterOps,
    NodeHandle,
    ProcessControlUnavailable,
    default_seed,
)


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


def _needs_process_control(what: str) -> None:
    reason = (f"{what} needs process control, which the kit does not have over an external cluster "
              "(KALAMDB_CLUSTER_URLS)")
    if os.environ.get("PYTEST_CURRENT_TEST"):
        import pytest

        pytest.skip(reason)
    raise ProcessControlUnavailable(reason)


class ExternalCluster(ClusterOps):
    """The ClusterOps helpers over nodes at fixed URLs; lifecycle methods skip or refuse."""

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
        self.nodes: list[ExternalNode] = []
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

    # ---- process control: not ours --------------------------------------------------------------
    def start(self, i: int | None = None, **_: object) -> None:
        _needs_process_control(f"start({i})" if i is not None else "start()")

    def start_node(self, i: int, **_: object) -> None:
        _needs_process_control(f"start_node({i})")

    def kill(self, i: int) -> None:
        _needs_process_control(f"kill({i})")

    def stop(self, i: int) -> None:
        _needs_process_control(f"stop({i})")

    def restart(self, i: int, **_: object) -> None:
        _needs_process_control(f"restart({i})")

    def pause(self, i: int) -> None:
        _needs_process_control(f"pause({i})")

    def resume(self, i: int) -> None:
        _needs_process_control(f"resume({i})")

    def kill_all(self) -> None:
        _needs_process_control("kill_all()")

    def restart_all(self, **_: object) -> None:
        _needs_process_control("restart_all()")

    def add_node(self, **_: object) -> None:
        _needs_process_control("add_node()")

    def remove_node(self, i: int, **_: object) -> None:
        _needs_process_control(f"remove_node({i})")

    def heal(self) -> None:
        """Nothing to heal from here."""

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
