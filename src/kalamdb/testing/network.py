"""Network faults of a kit cluster: one seam (`NetworkFaults`, by node id) with two backends, and the
object a test uses (`ClusterNetwork`, by node index or handle, as everywhere in the kit).

Backends:
  * `ProxyNetwork` (mode "proxy", no privileges): every directed peer link a->b -- the Raft RPC
    link (framed: loss drops whole messages) and the HTTP link a follower forwards writes on -- runs
    through a userspace proxy of `kalamdb.testing.netproxy`, and so does each node's client link.
  * `kalamdb.testing.netns_cluster.NetnsFaults` (mode "netns", root): every node in its own network
    namespace with its own IP; faults are nftables rules in the kernel.

`c.net` on a cluster started with `faults=True` is a `ClusterNetwork`. Its scopes: `heal()` removes
partitions, cuts, clogs and client cuts; `clear()` does that and also removes delay, loss and
bandwidth limits. Reports (`reachability`, `stats`) are keyed by node index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kalamdb.testing.netproxy import CLIENT, LinkStats, NetworkController, Partitions
from kalamdb.testing.netproxy_links import Pair
from kalamdb.testing.nodes import ClusterError, NodeHandle

if TYPE_CHECKING:
    from kalamdb.testing.netns import RuleStats
    from kalamdb.testing.ops import ClusterOps, NodeRef

Link = tuple[int, int]
FEATURES = ("partition", "loss", "delay", "bandwidth", "clog", "reset", "clients")


class FaultNotSupported(ClusterError):
    """This network mode cannot produce the fault (e.g. delay without tc netem in netns mode)."""


class NetworkFaults(Protocol):
    """A network fault backend, by node id. `links` are directions (src id, dst id); None: every
    peer direction, now and later."""

    mode: str

    def supports(self, feature: str) -> bool: ...
    def partition_grudge(self, grudge: dict[int, set[int]]) -> None: ...
    def cut(self, a: int, b: int) -> None: ...
    def uncut(self, a: int, b: int) -> None: ...
    def heal(self) -> None: ...
    def clear(self) -> None: ...
    def delay(self, ms: float, jitter_ms: float, links: list[Link] | None) -> None: ...
    def loss(self, p: float, links: list[Link] | None) -> None: ...
    def bandwidth(self, kbps: float | None, links: list[Link] | None) -> None: ...
    def clog(self, a: int, b: int) -> None: ...
    def unclog(self, a: int, b: int) -> None: ...
    def reset(self, a: int, b: int) -> int: ...
    def isolate_client(self, node_id: int) -> None: ...
    def unisolate_client(self, node_id: int) -> None: ...
    def reachability(self, node_ids: list[int]) -> dict[Link, bool]: ...
    def stats(self) -> dict[str, dict[Pair, LinkStats]] | dict[str, dict[Link, RuleStats]]:
        """Counters per direction and layer: the proxy's per link (client endpoints included), or
        what the kernel dropped."""
        ...
    def close(self) -> None: ...


class ProxyNetwork:
    """Userspace proxies per directed link: two controllers, because a controller holds one link
    per (src, dst) and Raft RPC is framed (loss = lost messages) while HTTP is a byte stream."""

    mode = "proxy"

    def __init__(self, seed: int, proxy_clients: bool = True):
        self.rpc = NetworkController(seed=seed)
        self.http = NetworkController(seed=seed + 1)
        self.proxy_clients = proxy_clients

    def supports(self, feature: str) -> bool:
        return feature in FEATURES and (feature != "clients" or self.proxy_clients)

    def _both(self) -> tuple[NetworkController, NetworkController]:
        return self.rpc, self.http

    # ---- wiring ----------------------------------------------------------------------------------
    def link(self, src: int, dst: int, rpc_target: tuple[str, int], http_target: tuple[str, int]
             ) -> tuple[tuple[str, int], tuple[str, int]]:
        """The proxy addresses (rpc, http) node `src` uses to reach node `dst` (created on first use)."""
        try:
            return self.rpc.proxy_addr(src, dst), self.http.proxy_addr(src, dst)
        except KeyError:
            return (self.rpc.add_link(src, dst, rpc_target, framed=True),
                    self.http.add_link(src, dst, http_target, framed=False))

    def client_link(self, node_id: int, http_target: tuple[str, int]) -> tuple[str, int]:
        try:
            return self.http.proxy_addr(CLIENT, node_id)
        except KeyError:
            return self.http.add_client_link(node_id, http_target)

    # ---- faults ----------------------------------------------------------------------------------
    def partition_grudge(self, grudge: dict[int, set[int]]) -> None:
        for net in self._both():
            net.partition_grudge({dst: srcs for dst, srcs in grudge.items()})  # node ids as proxy endpoints

    def cut(self, a: int, b: int) -> None:
        for net in self._both():
            net.cut(a, b)

    def uncut(self, a: int, b: int) -> None:
        for net in self._both():
            net.uncut(a, b)

    def heal(self) -> None:
        for net in self._both():
            net.heal()

    def clear(self) -> None:
        for net in self._both():
            net.clear_all()

    def delay(self, ms: float, jitter_ms: float, links: list[Link] | None) -> None:
        for net in self._both():
            net.delay(ms, jitter_ms, links=links)

    def loss(self, p: float, links: list[Link] | None) -> None:
        # HTTP forwarding is TCP, where loss shows up as retransmission delay, not as a hole in the
        # stream: only Raft messages are dropped (delay covers the HTTP links).
        self.rpc.loss(p, links=links)

    def bandwidth(self, kbps: float | None, links: list[Link] | None) -> None:
        for net in self._both():
            net.bandwidth(kbps, links=links)

    def clog(self, a: int, b: int) -> None:
        for net in self._both():
            net.clog(a, b)

    def unclog(self, a: int, b: int) -> None:
        for net in self._both():
            net.unclog(a, b)

    def reset(self, a: int, b: int) -> int:
        return sum(net.reset(a, b) for net in self._both())

    def isolate_client(self, node_id: int) -> None:
        self.http.isolate_client(node_id)

    def unisolate_client(self, node_id: int) -> None:
        self.http.unisolate_client(node_id)

    def reachability(self, node_ids: list[int]) -> dict[Link, bool]:
        known = self.rpc.reachability()
        return {(a, b): known.get((a, b), True) for a in node_ids for b in node_ids if a != b}

    def stats(self) -> dict[str, dict[Pair, LinkStats]]:
        return {"rpc": self.rpc.stats(), "http": self.http.stats()}

    def close(self) -> None:
        for net in self._both():
            net.close()


class _Shapes(Partitions):
    """Jepsen's partition shapes over the cluster's current nodes (ids in node order)."""

    def __init__(self, net: ClusterNetwork):
        self._net = net

    @property
    def nodes(self) -> list[int]:
        return sorted(n.node_id for n in self._net._cluster.nodes)

    def partition_grudge(self, grudge: dict) -> None:
        self._net.backend.partition_grudge({int(k): set(v) for k, v in grudge.items()})


class ClusterNetwork:
    """The network faults of one kit cluster (`c.net`), taking node indexes or handles."""

    def __init__(self, cluster: ClusterOps[Any], backend: NetworkFaults):
        self._cluster = cluster
        self.backend = backend
        self._shapes = _Shapes(self)

    @property
    def mode(self) -> str:
        """"proxy" or "netns"."""
        return self.backend.mode

    def supports(self, feature: str) -> bool:
        return self.backend.supports(feature)

    def _need(self, feature: str) -> None:
        if not self.backend.supports(feature):
            raise FaultNotSupported(f"network mode {self.mode!r} cannot {feature}: see docs/faults.md "
                                    "('Which network mode')")

    def _id(self, node: NodeRef) -> int:
        return self._cluster.get_node(node).node_id

    def _order(self) -> list[int]:
        return [n.node_id for n in self._cluster.nodes]

    def _links(self, nodes: Iterable[NodeRef] | None) -> list[Link] | None:
        if nodes is None:
            return None
        ids = {self._id(n) for n in nodes}
        every = self._order()
        return [(a, b) for a in every for b in every if a != b and (a in ids or b in ids)]

    # ---- partitions (silence, never an error) ---------------------------------------------------
    def partition(self, groups: Sequence[Sequence[NodeRef]]) -> None:
        """Nodes talk only within their group; every node in exactly one group."""
        self._shapes.partition([[self._id(n) for n in g] for g in groups])

    def partition_grudge(self, grudge: dict[NodeRef, Iterable[NodeRef]]) -> None:
        """Any shape: receiver -> senders whose bytes it drops (one-way allowed)."""
        self.backend.partition_grudge({self._id(dst): {self._id(s) for s in srcs} for dst, srcs in grudge.items()})

    def isolate(self, node: NodeRef) -> None:
        """The node can neither send to nor receive from any other node."""
        self._shapes.isolate(self._id(node))

    def isolate_leader(self, timeout: float = 10.0) -> NodeHandle:
        """Isolate the current leader from every peer; returns it."""
        lead = self._cluster.leader(timeout)
        self.isolate(lead)
        return lead

    def partition_halves(self) -> None:
        self._shapes.partition_halves(self._order())

    def partition_majorities_ring(self) -> None:
        self._shapes.partition_majorities_ring(self._order())

    def partition_bridge(self) -> None:
        self._shapes.partition_bridge(self._order())

    def cut(self, a: NodeRef, b: NodeRef) -> None:
        """One way: bytes from node a no longer reach node b (its requests and its replies)."""
        self.backend.cut(self._id(a), self._id(b))

    def uncut(self, a: NodeRef, b: NodeRef) -> None:
        self.backend.uncut(self._id(a), self._id(b))

    def heal(self) -> None:
        """Remove every partition, cut, clog and client cut (delay, loss, bandwidth stay: `clear`)."""
        self.backend.heal()

    def clear(self) -> None:
        """A perfect network again: `heal`, and no delay, loss or bandwidth limit."""
        self.backend.clear()

    # ---- link quality ---------------------------------------------------------------------------
    def delay(self, ms: float, jitter_ms: float = 0.0, nodes: Iterable[NodeRef] | None = None) -> None:
        """Each frame on the peer links of `nodes` (None: every peer link) waits ms +/- jitter."""
        self._need("delay")
        self.backend.delay(ms, jitter_ms, self._links(nodes))

    def loss(self, p: float, nodes: Iterable[NodeRef] | None = None) -> None:
        """Drop each Raft message (proxy) or packet (netns) on those links with probability p."""
        self._need("loss")
        self.backend.loss(p, self._links(nodes))

    def bandwidth(self, kbps: float | None, nodes: Iterable[NodeRef] | None = None) -> None:
        """Limit each direction of those links to kbps kilobits/s (None: unlimited)."""
        self._need("bandwidth")
        self.backend.bandwidth(kbps, self._links(nodes))

    def clog(self, a: NodeRef, b: NodeRef) -> None:
        """Hold a's bytes to b until unclog/heal, then deliver them in order."""
        self._need("clog")
        self.backend.clog(self._id(a), self._id(b))

    def unclog(self, a: NodeRef, b: NodeRef) -> None:
        self._need("clog")
        self.backend.unclog(self._id(a), self._id(b))

    def reset(self, a: NodeRef, b: NodeRef) -> int:
        """RST every open connection between a and b; returns how many."""
        self._need("reset")
        return self.backend.reset(self._id(a), self._id(b))

    # ---- clients ---------------------------------------------------------------------------------
    def isolate_client(self, node: NodeRef) -> None:
        """Clients (the kit's own requests to the node included) can no longer reach it."""
        self._need("clients")
        self.backend.isolate_client(self._id(node))

    def unisolate_client(self, node: NodeRef) -> None:
        self._need("clients")
        self.backend.unisolate_client(self._id(node))

    # ---- inspection -------------------------------------------------------------------------------
    def reachability(self) -> dict[tuple[int, int], bool]:
        """(i, j) by node index -> whether node i's messages reach node j now."""
        index_of = {n.node_id: n.index for n in self._cluster.nodes}
        got = self.backend.reachability(self._order())
        return {(index_of[a], index_of[b]): ok for (a, b), ok in got.items() if a in index_of and b in index_of}

    def quorum_hubs(self) -> list[NodeHandle]:
        """Running nodes with a two-way link to enough others to form a majority with them: the
        nodes that could lead now. Empty means Raft cannot make progress (e.g. the 3-node
        majorities ring is a directed cycle in which no two nodes hear each other)."""
        reach = self.reachability()
        nodes = self._cluster.nodes
        up = [n for n in nodes if n.is_up()]
        need = len(nodes) // 2  # others needed besides the node itself
        return [n for n in up
                if sum(1 for m in up if m is not n and reach[(n.index, m.index)] and reach[(m.index, n.index)]) >= need]

    def stats(self) -> dict[str, dict[tuple[int, int], LinkStats | RuleStats]]:
        """Counters per direction between nodes, keyed by (src index, dst index); the keys of the
        outer mapping name the layer ("rpc", "http" in proxy mode, with LinkStats; "kernel" in
        netns mode, with RuleStats)."""
        index_of = {n.node_id: n.index for n in self._cluster.nodes}
        out: dict[str, dict[tuple[int, int], LinkStats | RuleStats]] = {}
        for layer, per_link in self.backend.stats().items():
            out[layer] = {(index_of[a], index_of[b]): s for (a, b), s in per_link.items()
                          if isinstance(a, int) and isinstance(b, int) and a in index_of and b in index_of}
        return out
