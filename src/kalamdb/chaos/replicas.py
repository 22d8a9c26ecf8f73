"""Checks across replicas: reads on one node never go back in time, and nodes that have applied
the same log hold the same state (compared by content or by digest)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kalamdb.chaos.history import Operation
from kalamdb.chaos.result import CheckerResult


def check_monotonic_reads(
    ops: Iterable[Operation], *, version: Callable[[Operation], Any] = lambda op: op.output, read: str = "read"
) -> CheckerResult:
    """Per (node, key): a read that began after another read on the same node returned must not
    see an older version (e.g. a smaller applied index or counter value)."""
    groups: dict[tuple, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.f == read and op.ret is not None and version(op) is not None:
            groups[(op.node, op.key)].append(op)
    violations = []
    for (node, key), reads in groups.items():
        by_ret = sorted(reads, key=lambda o: o.returned)
        i = 0
        best: Operation | None = None
        for op in sorted(reads, key=lambda o: o.call):
            while i < len(by_ret) and by_ret[i].returned < op.call:
                if best is None or version(by_ret[i]) > version(best):
                    best = by_ret[i]
                i += 1
            if best is not None and version(op) < version(best):
                violations.append({"node": node, "key": key, "earlier": best, "later": op,
                                   "went_from": version(best), "to": version(op)})
    return CheckerResult("monotonic-reads", not violations, {"went_backwards": violations},
                         {"nodes": len({n for n, _ in groups})})


def _majority(values: Mapping[str, Any]) -> Any:
    counts: dict[str, tuple[int, Any]] = {}
    for v in values.values():
        r = repr(v)
        counts[r] = (counts.get(r, (0, v))[0] + 1, v)
    return max(counts.values(), key=lambda cv: cv[0])[1]


def check_final_states(states: Mapping[str, Any]) -> CheckerResult:
    """Every node's final state (e.g. table -> rows, read locally after a replication barrier)
    must be equal; for mappings the report names the differing keys per node."""
    if not states:
        return CheckerResult("final-state", False, {"no_nodes": ["no node states given"]})
    reference = _majority(states)
    differences: dict[str, Any] = {}
    for node, state in states.items():
        if state == reference:
            continue
        if isinstance(state, Mapping) and isinstance(reference, Mapping):
            keys = sorted(
                {k for k in set(state) | set(reference) if state.get(k) != reference.get(k)}, key=repr
            )
            differences[node] = {"differing_keys": keys}
        else:
            differences[node] = {"state": state, "majority": reference}
    return CheckerResult("final-state", not differences, {"diverged": differences}, {"nodes": len(states)})


def check_digests(digests: Mapping[str, tuple[int, str]]) -> CheckerResult:
    """`node -> (applied_index, digest)`: all nodes must be at one applied index with one digest.
    A node at another index is reported as lagging (its digest says nothing yet)."""
    if not digests:
        return CheckerResult("digest", False, {"no_nodes": ["no digests given"]})
    index_counts: dict[int, int] = defaultdict(int)
    for index, _ in digests.values():
        index_counts[index] += 1
    target = max(index_counts, key=lambda i: (index_counts[i], i))
    lagging = {n: idx for n, (idx, _) in digests.items() if idx != target}
    at_target = {n: d for n, (idx, d) in digests.items() if idx == target}
    by_digest: dict[str, list[str]] = defaultdict(list)
    for node, d in at_target.items():
        by_digest[d].append(node)
    mismatched = {} if len(by_digest) <= 1 else {d: sorted(ns) for d, ns in by_digest.items()}
    return CheckerResult(
        "digest", not lagging and not mismatched, {"lagging": lagging, "mismatched": mismatched},
        {"nodes": len(digests), "applied_index": target},
    )
