"""Jepsen's partition shapes as grudges (receiver -> senders it drops), shared by every network
backend: the userspace proxy, the network namespaces and the kit's `c.net`."""

from __future__ import annotations


class Partitions:
    """Partition shapes as grudges (receiver -> senders it drops), shared by every network backend.

    A subclass provides ``nodes`` (sorted node ids) and ``partition_grudge(grudge)``.
    """

    @property
    def nodes(self) -> list[int]:
        raise NotImplementedError

    def partition_grudge(self, grudge: dict) -> None:
        raise NotImplementedError

    def partition(self, groups: list[list[int]]) -> None:
        """Nodes talk only within their group. Every known node must be in exactly one group."""
        nodes = set(self.nodes)
        listed = [n for g in groups for n in g]
        if len(listed) != len(set(listed)):
            raise ValueError(f"a node appears in two groups: {groups}")
        if set(listed) != nodes:
            raise ValueError(f"groups {groups} must cover exactly the nodes {sorted(nodes)}")
        group_of = {n: i for i, g in enumerate(groups) for n in g}
        self.partition_grudge({b: {a for a in nodes if group_of[a] != group_of[b]} for b in nodes})

    def isolate(self, i: int) -> None:
        """Node i can neither send to nor receive from any other node."""
        if i not in self.nodes:
            raise ValueError(f"unknown node {i}; nodes are {self.nodes}")
        others = [n for n in self.nodes if n != i]
        self.partition([[i], others])

    def partition_halves(self, order: list[int] | None = None) -> None:
        """Split the nodes (in ``order``, default sorted) into a smaller first half and the rest."""
        order = self._order(order)
        k = len(order) // 2
        self.partition([order[:k], order[k:]])

    def partition_majorities_ring(self, order: list[int] | None = None) -> None:
        """Each node sees a majority centred on itself in a ring; no two see the same majority
        (Jepsen's majorities-ring: grudges may be one-way, e.g. for 3 nodes)."""
        order = self._order(order)
        n = len(order)
        m = n // 2 + 1
        grudge = {}
        for start in range(n):
            window = [order[(start + k) % n] for k in range(m)]
            centre = window[m // 2]
            grudge[centre] = set(order) - set(window)
        self.partition_grudge(grudge)

    def partition_bridge(self, order: list[int] | None = None) -> None:
        """Two halves that cannot talk, joined by one bridge node (the middle one) that sees all."""
        order = self._order(order)
        n = len(order)
        if n < 3:
            raise ValueError("a bridge partition needs at least 3 nodes")
        k = n // 2
        left, bridge, right = order[:k], order[k], order[k + 1:]
        grudge = {x: set(right) for x in left}
        grudge.update({x: set(left) for x in right})
        grudge[bridge] = set()
        self.partition_grudge(grudge)

    def _order(self, order: list[int] | None) -> list[int]:
        nodes = self.nodes
        if order is None:
            return nodes
        if sorted(order) != nodes:
            raise ValueError(f"order {order} must be a permutation of the nodes {nodes}")
        return list(order)
