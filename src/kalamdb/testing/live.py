"""Live queries from the kit: `cluster.subscribe(node, sql)` opens a `LiveSubscription` on one node
(as root, or as `user`/`password`), optionally allowed to reconnect to the other nodes, so tests can
watch what a subscriber of a given node receives while the cluster is written to and broken."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kalamdb.live.client import LiveSubscription

if TYPE_CHECKING:
    from kalamdb.testing.ops import ClusterOps, NodeRef


def subscribe(cluster: ClusterOps[Any], node: NodeRef, sql: str, *, failover: bool = False, user: str = "root",
              password: str | None = None, **options: Any) -> LiveSubscription:
    """A subscription on `node` (index or handle). `failover=True`: after a disconnect it resumes on
    the next node (any node serves any subscriber); by default it reconnects to the same node.
    Options as LiveSubscription's (batch_size, last_rows, from_seq, initial_data, ...). Use it with
    `async with` and iterate its events."""
    first = cluster.get_node(node)
    urls = [first.url] + ([n.url for n in cluster.nodes if n is not first] if failover else [])
    if password is None:
        password = first.root_password if user == "root" else ""
    return LiveSubscription(urls, sql, user=user, password=password, **options)
