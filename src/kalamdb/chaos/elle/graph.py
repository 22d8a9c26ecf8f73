"""The dependency graph between transactions: vertex i is txn i, an edge carries a bitmask of the
relations that order its ends (ww, wr, rw, process, realtime), and Tarjan's algorithm finds the
strongly connected components in which every cycle lives.

Edges only record *that* a relation holds; *why* (which key, which value) is worked out again by
the model's explainer for the few edges of a reported cycle, so a 10,000-transaction graph stays
small in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kalamdb.chaos.elle.history import Txn

WW, WR, RW, PROCESS, REALTIME = 1, 2, 4, 8, 16
DATA = WW | WR | RW
REL_NAMES = {WW: "ww", WR: "wr", RW: "rw", PROCESS: "process", REALTIME: "rt"}
RELS = (WW, WR, RW, PROCESS, REALTIME)


class GraphTooLarge(Exception):
    """More edges than the budget allows: the checker answers unknown instead of running out of memory."""


class DepGraph:
    """Adjacency maps `out[a][b] = relation bits`; self-edges are never stored (a transaction's own
    reads and writes are checked by the internal-consistency rules instead)."""

    def __init__(self, n: int, max_edges: int | None = None):
        self.n = n
        self.out: list[dict[int, int]] = [{} for _ in range(n)]
        self.edges = 0
        self.max_edges = max_edges
        self.counts = dict.fromkeys(REL_NAMES.values(), 0)

    def link(self, a: int, b: int, rel: int) -> None:
        if a == b:
            return
        d = self.out[a]
        old = d.get(b)
        if old is None:
            self.edges += 1
            if self.max_edges is not None and self.edges > self.max_edges:
                raise GraphTooLarge(f"the dependency graph has more than {self.max_edges} edges")
            d[b] = rel
            self.counts[REL_NAMES[rel]] += 1
        elif not old & rel:
            d[b] = old | rel
            self.counts[REL_NAMES[rel]] += 1

    def link_all(self, sources: Iterable[int], b: int, rel: int) -> None:
        for a in sources:
            self.link(a, b, rel)

    def rel(self, a: int, b: int) -> int:
        return self.out[a].get(b, 0)


def strongly_connected_components(graph: DepGraph, mask: int, vertices: Sequence[int] | None = None,
                                  member: Sequence[int] | None = None) -> list[list[int]]:
    """Tarjan's SCCs (iterative) of the subgraph of edges intersecting `mask`, restricted to
    `vertices`/`member` if given; only components with more than one vertex (no self-edges exist)."""
    out = graph.out
    n = graph.n
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    result: list[list[int]] = []
    counter = 0
    roots = range(n) if vertices is None else vertices
    for root in roots:
        if index[root] != -1:
            continue
        # frames of (vertex, iterator over its successors)
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, iter(out[root].items()))]
        while work:
            v, it = work[-1]
            advanced = False
            for w, rel in it:
                if not rel & mask or (member is not None and not member[w]):
                    continue
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, iter(out[w].items())))
                    advanced = True
                    break
                if on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    result.append(comp)
    return result


def add_realtime_edges(graph: DepGraph, txns: Sequence[Txn], in_graph: Sequence[bool]) -> None:
    """a -rt-> b when a completed (ok) before b was invoked. Only a transitive reduction is kept,
    as Elle does: each invoke links from the buffer of completions not yet followed by a later
    completion, so the edge count is about txns x concurrency, not txns squared."""
    moments: list[tuple[int, int, int]] = []  # (time, 0 completion / 1 invoke, txn)
    for t in txns:
        if not in_graph[t.index]:
            continue
        moments.append((t.call, 1, t.index))
        if t.ret is not None:
            moments.append((t.ret, 0, t.index))
    moments.sort()
    buffer: set[int] = set()
    preds: dict[int, frozenset[int]] = {}
    for _, kind, i in moments:
        if kind == 1:
            if buffer:
                graph.link_all(buffer, i, REALTIME)
                preds[i] = frozenset(buffer)
        else:
            before = preds.pop(i, None)
            if before:
                buffer -= before
            buffer.add(i)


def add_process_edges(graph: DepGraph, txns: Sequence[Txn], in_graph: Sequence[bool]) -> None:
    """a -process-> b when the same process performed a and then b (processes are sequential)."""
    last: dict = {}
    for t in sorted(txns, key=lambda t: t.call):
        if not in_graph[t.index]:
            continue
        try:
            prev = last.get(t.process)
        except TypeError:  # an unhashable process id: no process order for it
            continue
        if prev is not None:
            graph.link(prev, t.index, PROCESS)
        last[t.process] = t.index
