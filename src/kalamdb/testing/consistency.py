"""Comparing replicas for real: each node's answer from its own applied state, compared row by row.

A report is truthy when every node agrees and otherwise names each differing node with the rows it
misses, the rows it has extra and the rows whose values differ, so that pytest's assertion message
says what is wrong without rerunning anything.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def _canon(cell: Any) -> Any:
    if isinstance(cell, float):
        return round(cell, 9)
    if isinstance(cell, list):
        return tuple(_canon(c) for c in cell)
    if isinstance(cell, dict):
        return tuple(sorted((k, _canon(v)) for k, v in cell.items()))
    return cell


def _rows(resp: dict) -> list[tuple]:
    results = resp.get("results") or []
    return [tuple(_canon(c) for c in row) for row in (results[-1].get("rows") or [])] if results else []


@dataclass
class NodeDiff:
    node_id: int
    error: str | None = None
    missing: list[tuple] = field(default_factory=list)
    extra: list[tuple] = field(default_factory=list)
    different: list[tuple[tuple, tuple]] = field(default_factory=list)
    order_differs: bool = False

    def __str__(self) -> str:
        if self.error:
            return f"node {self.node_id}: error {self.error}"
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)} row(s) {self.missing[:5]}")
        if self.extra:
            parts.append(f"extra {len(self.extra)} row(s) {self.extra[:5]}")
        if self.different:
            parts.append(f"{len(self.different)} different row(s) "
                         + ", ".join(f"{a} != expected {b}" for a, b in self.different[:5]))
        if self.order_differs:
            parts.append("same rows in a different order")
        return f"node {self.node_id}: " + "; ".join(parts)


@dataclass
class ConsistencyReport:
    query: str
    index: int
    row_counts: dict[int, int]
    reference_nodes: list[int]
    diffs: list[NodeDiff]

    def __bool__(self) -> bool:
        return not self.diffs

    @property
    def consistent(self) -> bool:
        return not self.diffs

    def __str__(self) -> str:
        if not self.diffs:
            return (f"all {len(self.row_counts)} nodes agree on {self.query!r} at index {self.index} "
                    f"({next(iter(self.row_counts.values()), 0)} rows)")
        lines = [(f"replicas DIFFER on {self.query!r} at applied index {self.index} "
                 f"(reference: nodes {self.reference_nodes}; row counts {self.row_counts}):")]
        lines += [f"  {d}" for d in self.diffs]
        return "\n".join(lines)

    __repr__ = __str__


def compare_results(query: str, index: int, answers: dict[int, dict]) -> ConsistencyReport:
    """The reference is the answer most nodes gave (ties: the lowest node ids)."""
    ordered = bool(_ORDER_BY.search(query))
    rows: dict[int, list[tuple]] = {}
    errors: dict[int, str] = {}
    for nid, resp in answers.items():
        if resp.get("status") == "success":
            rows[nid] = _rows(resp)
        else:
            err = resp.get("error") or {}
            errors[nid] = f"{err.get('code')}: {err.get('message')}"

    def key(r: list[tuple]) -> tuple:
        return tuple(r) if ordered else tuple(sorted(r, key=repr))

    votes = Counter(key(r) for r in rows.values())
    diffs = [NodeDiff(nid, error=msg) for nid, msg in sorted(errors.items())]
    if not votes:
        return ConsistencyReport(query, index, {}, [], diffs)
    best = max(votes.values())
    ref_key = next(k for nid, r in sorted(rows.items()) if votes[(k := key(r))] == best)
    ref_nodes = sorted(nid for nid, r in rows.items() if key(r) == ref_key)
    ref = rows[ref_nodes[0]]
    for nid, r in sorted(rows.items()):
        if key(r) == ref_key:
            continue
        diffs.append(_diff(nid, r, ref, ordered))
    return ConsistencyReport(query, index, {nid: len(r) for nid, r in rows.items()}, ref_nodes, diffs)


def _diff(nid: int, got: list[tuple], ref: list[tuple], ordered: bool) -> NodeDiff:
    d = NodeDiff(nid)
    have, want = Counter(got), Counter(ref)
    if have == want:
        d.order_differs = ordered
        return d
    missing = list((want - have).elements())
    extra = list((have - want).elements())
    # Rows with the same first column (usually the key) but other values are "different".
    by_key = {r[0]: r for r in missing if r}
    for r in list(extra):
        if r and r[0] in by_key:
            d.different.append((r, by_key.pop(r[0])))
            extra.remove(r)
    d.missing = [r for r in missing if not r or r[0] in by_key]
    d.extra = extra
    return d


@dataclass
class DigestReport:
    index: int
    digests: dict[int, dict]

    def __bool__(self) -> bool:
        return len({(d.get("applied_index"), d.get("digest")) for d in self.digests.values()}) == 1

    def __str__(self) -> str:
        state = "equal" if self else "DIFFER"
        body = ", ".join(f"node {nid}: {d.get('digest', '?')[:16]}@{d.get('applied_index')}"
                         for nid, d in sorted(self.digests.items()))
        return f"state digests {state} after barrier at index {self.index}: {body}"

    __repr__ = __str__
