"""Finding a short cycle of each anomaly class inside one strongly connected component.

Every cycle of the dependency graph is an anomaly; which one depends on the relations along it
(see `consistency.classify`). For each class, most severe first, we look for a shortest cycle of
that class: pick a *pivot* edge carrying the relation the class cannot do without (a wr edge for
G1c, an rw edge for G-single and G2-item, a real-time edge for the -realtime variants, ...), then
breadth-first search from the pivot's head back to its tail over (vertex, state) pairs, where the
state counts rw edges, remembers whether the last edge was rw (for G-nonadjacent) and which
required relations were seen. The search is restricted to the component of the class's own
relations, and it is bounded by a deadline: when time runs out we still report *a* cycle of the
component (one breadth-first search always finds one), classified by what it really is.

A found walk may pass a vertex twice (in two states); it is then split into simple cycles and the
most severe one is reported, so every reported cycle is simple and its class is exact.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from kalamdb.chaos.elle.consistency import CYCLE_TYPES, classify, implied
from kalamdb.chaos.elle.graph import (
    PROCESS,
    REALTIME,
    REL_NAMES,
    RELS,
    RW,
    WR,
    WW,
    DepGraph,
    strongly_connected_components,
)

SEVERITY = {t: i for i, t in enumerate(CYCLE_TYPES)}


@dataclass(frozen=True)
class CycleSpec:
    """What a cycle of one class may contain: `allowed` relations, how many rw edges (`rw_min`..
    `rw_max`), whether rw edges may be adjacent, and relations needed at least once."""

    name: str
    allowed: int
    pivot: int
    rw_min: int = 0
    rw_max: int = 0
    nonadjacent: bool = False
    need_wr: bool = False
    variant: int = 0  # PROCESS or REALTIME: at least one such edge


def _spec(name: str) -> CycleSpec:
    variant = REALTIME if name.endswith("-realtime") else PROCESS if name.endswith("-process") else 0
    base = name.removesuffix("-realtime").removesuffix("-process")
    if base == "G0":
        return CycleSpec(name, WW | variant, variant or WW, variant=variant)
    if base == "G1c":
        return CycleSpec(name, WW | WR | variant, WR, need_wr=True, variant=variant)
    if base == "G-single":
        return CycleSpec(name, WW | WR | RW | variant, RW, 1, 1, variant=variant)
    if base == "G-nonadjacent":
        return CycleSpec(name, WW | WR | RW | variant, RW, 2, 1 << 30, nonadjacent=True, variant=variant)
    if base == "G2-item":
        return CycleSpec(name, WW | WR | RW | variant, RW, 2, 1 << 30, variant=variant)
    raise ValueError(f"unknown cycle anomaly {name!r}")


SPECS = {t: _spec(t) for t in CYCLE_TYPES}


@dataclass
class Cycle:
    """A simple cycle: steps (a, b, relation name), a's successor being b, the last b the first a."""

    type: str
    steps: list[tuple[int, int, str]]

    @property
    def txns(self) -> list[int]:
        return [a for a, _, _ in self.steps]


class SearchTimeout(Exception):
    pass


def _state(rw: int, last_rw: bool, wr: bool, var: bool) -> int:
    return rw | (last_rw << 2) | (wr << 3) | (var << 4)


def _bfs(graph: DepGraph, member: Sequence[int], spec: CycleSpec, start: int, target: int, state0: int,
         first_rw: bool, deadline: float) -> list[tuple[int, int, str]] | None:
    """Shortest path start -> target over allowed relations that completes a cycle of `spec`
    (the pivot target -> start already taken, leaving state0). Returns the path's steps."""
    out = graph.out
    allowed = spec.allowed
    rw_max = min(spec.rw_max, 2)
    parent: dict[tuple[int, int], tuple[int, int, int] | None] = {(start, state0): None}
    queue = deque([(start, state0)])
    steps = 0
    while queue:
        v, s = queue.popleft()
        steps += 1
        if steps & 1023 == 0 and time.monotonic() > deadline:
            raise SearchTimeout
        rw_count, last_rw, wr_seen, var_seen = s & 3, bool(s & 4), bool(s & 8), bool(s & 16)
        for w, mask in out[v].items():
            if not member[w]:
                continue
            rels = mask & allowed
            while rels:
                r = rels & -rels
                rels ^= r
                if r == RW:
                    if rw_count >= rw_max and spec.rw_max < 2:
                        continue
                    if spec.nonadjacent and last_rw:
                        continue
                    nrw, nlast = min(rw_count + 1, 2), True
                else:
                    nrw, nlast = rw_count, False
                ns = _state(nrw, nlast, wr_seen or r == WR, var_seen or r == spec.variant)
                key = (w, ns)
                if key in parent:
                    continue
                if w == target:
                    if nrw < spec.rw_min or (spec.need_wr and not ns & 8) or (spec.variant and not ns & 16):
                        continue
                    if spec.nonadjacent and nlast and first_rw:
                        continue
                    parent[key] = (v, s, r)
                    return _path(parent, key)
                parent[key] = (v, s, r)
                queue.append(key)
    return None


def _path(parent: dict, key: tuple[int, int]) -> list[tuple[int, int, str]]:
    steps = []
    while parent[key] is not None:
        v, s, r = parent[key]
        steps.append((v, key[0], REL_NAMES[r]))
        key = (v, s)
    steps.reverse()
    return steps


def simple_cycles(walk: list[tuple[int, int, str]]) -> list[list[tuple[int, int, str]]]:
    """Split a closed walk into simple cycles."""
    out = []
    stack: list[tuple[int, int, str]] = []
    pos: dict[int, int] = {}
    for step in walk:
        a, b, _ = step
        pos.setdefault(a, len(stack))
        stack.append(step)
        if b in pos:
            i = pos[b]
            cyc = stack[i:]
            del stack[i:]
            for x, _, _ in cyc:
                pos.pop(x, None)
            out.append(cyc)
    return out


def _best(walk: list[tuple[int, int, str]]) -> Cycle:
    cycles = [Cycle(classify([r for _, _, r in c]), c) for c in simple_cycles(walk)]
    return min(cycles, key=lambda c: (SEVERITY[c.type], len(c.steps)))


def find_cycle(graph: DepGraph, scc: Sequence[int], spec: CycleSpec, deadline: float) -> Cycle | None:
    """A shortest-per-pivot cycle of class `spec` in the component `scc`, or None; raises
    SearchTimeout past the deadline."""
    n = graph.n
    in_scc = bytearray(n)
    for v in scc:
        in_scc[v] = 1
    subs = strongly_connected_components(graph, spec.allowed, scc, in_scc)
    out = graph.out
    for sub in subs:
        member = bytearray(n)
        for v in sub:
            member[v] = 1
        for a in sorted(sub):
            for b, mask in out[a].items():
                if not member[b] or not mask & spec.pivot:
                    continue
                r = spec.pivot
                s0 = _state(int(r == RW), r == RW, r == WR, r == spec.variant)
                path = _bfs(graph, member, spec, b, a, s0, r == RW, deadline)
                if path is not None:
                    return _best([(a, b, REL_NAMES[r]), *path])
                if time.monotonic() > deadline:
                    raise SearchTimeout
    return None


def fallback_cycle(graph: DepGraph, scc: Sequence[int], mask: int) -> Cycle:
    """Some cycle of a strongly connected component (one BFS from its first vertex back to it),
    each edge labelled with its data relation if it has one."""
    n = graph.n
    member = bytearray(n)
    for v in scc:
        member[v] = 1
    start = min(scc)
    parent: dict[int, int | None] = {start: None}
    queue = deque([start])
    out = graph.out
    while queue:
        v = queue.popleft()
        for w, rel in out[v].items():
            if not member[w] or not rel & mask:
                continue
            if w == start:
                steps = [(v, start, _label(rel & mask))]
                while (p := parent[v]) is not None:
                    steps.append((p, v, _label(out[p][v] & mask)))
                    v = p
                steps.reverse()
                return _best(steps)
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component always has a cycle")


def _label(mask: int) -> str:
    for r in RELS:  # ww, wr, rw, process, realtime: data relations first
        if mask & r:
            return REL_NAMES[r]
    raise AssertionError("an edge with no relation")


@dataclass
class SccResult:
    cycles: list[Cycle]
    timed_out: list[str]  # classes whose search ran out of time
    size: int


def search_scc(graph: DepGraph, scc: Sequence[int], wanted: set[str], mask: int, *, type_budget: float,
               deadline: float) -> SccResult:
    """The most severe cycle of each wanted class in one component, skipping classes implied by
    one already found (as Elle does); a fallback cycle when a search ran out of time."""
    found: list[Cycle] = []
    timed_out: list[str] = []
    redundant: set[str] = set()
    present = 0
    for v in scc:
        for rel in graph.out[v].values():
            present |= rel
    for name in CYCLE_TYPES:
        if name not in wanted or name in redundant:
            continue
        spec = SPECS[name]
        if spec.allowed & ~present & (spec.variant | spec.pivot) or (spec.need_wr and not present & WR):
            continue  # a relation the class needs does not occur in this component
        now = time.monotonic()
        if now > deadline:
            timed_out.append(name)
            continue
        try:
            cycle = find_cycle(graph, scc, spec, min(deadline, now + type_budget))
        except SearchTimeout:
            timed_out.append(name)
            continue
        if cycle is not None:
            found.append(cycle)
            redundant |= {cycle.type, name} | implied(cycle.type)
    if timed_out and not found:
        found.append(fallback_cycle(graph, scc, mask))
    return SccResult(found, timed_out, len(scc))
