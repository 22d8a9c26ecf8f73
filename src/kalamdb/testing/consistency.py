"""Comparing replicas for real: each node's answer from its own applied state, compared row by row.

Values are compared canonically and type-aware: 1, 1.0, "1" and True are four different values
(Python alone would call three of them equal), floats are compared to 9 decimal places, and nested
JSON compares by content. Row order matters only when the query orders (a top-level ORDER BY).

A report is truthy when every node answered and all answers agree. A divergence (`diverged`) is
nodes disagreeing: different rows, or one node erroring where others answer, or different errors;
the report then names each differing node with the rows it misses, the rows it has extra and the
rows whose values differ, so that pytest's assertion message says what is wrong without rerunning
anything. A query that failed on every node with the same error (a table that does not exist yet)
is not a divergence: the report says so (`failed_everywhere`, `error`) and is falsy only because
no rows were compared.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_LAST_PAREN_GROUP = re.compile(r"\([^()]*\)")


def canonical(cell: Any) -> Any:
    """A hashable value that equals another only for the same type and content."""
    if cell is None:
        return ("null",)
    if isinstance(cell, bool):
        return ("bool", cell)
    if isinstance(cell, int):
        return ("int", cell)
    if isinstance(cell, float):
        return ("float", round(cell, 9))
    if isinstance(cell, str):
        return ("str", cell)
    if isinstance(cell, list | tuple):
        return ("list", tuple(canonical(c) for c in cell))
    if isinstance(cell, dict):
        return ("map", tuple(sorted((str(k), canonical(v)) for k, v in cell.items())))
    return (type(cell).__name__, repr(cell))


def query_orders(query: str) -> bool:
    """True when the query's own (top-level) result is ordered: ORDER BY outside parentheses."""
    text = query
    while True:  # drop parenthesised parts (subqueries, window specs) innermost first
        stripped = _LAST_PAREN_GROUP.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    return bool(_ORDER_BY.search(text))


def _rows(resp: dict) -> list[tuple]:
    results = resp.get("results") or []
    return [tuple(row) for row in (results[-1].get("rows") or [])] if results else []


def _key(row: tuple) -> tuple:
    return tuple(canonical(c) for c in row)


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
    rows: list[tuple] = field(default_factory=list)  # the reference answer
    # "CODE: message" when every node failed the query with this same error (not a divergence)
    error: str | None = None
    failed_nodes: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.diffs and self.error is None

    @property
    def consistent(self) -> bool:
        """True when every node answered and all answers agree."""
        return bool(self)

    @property
    def diverged(self) -> bool:
        """True when nodes disagree (rows, or one erroring where others answer, or different errors)."""
        return bool(self.diffs)

    @property
    def failed_everywhere(self) -> bool:
        """Every node failed the query with the same error: nothing was compared, nothing diverged."""
        return self.error is not None

    @property
    def differing_nodes(self) -> list[int]:
        return [d.node_id for d in self.diffs]

    def diff_for(self, node_id: int) -> NodeDiff | None:
        return next((d for d in self.diffs if d.node_id == node_id), None)

    def __str__(self) -> str:
        if self.error is not None:
            return (f"the query {self.query!r} failed on every node ({len(self.failed_nodes)}: "
                    f"{self.failed_nodes}) with the same error at applied index {self.index}: {self.error}. "
                    "That is not a divergence (the replicas agree), but no rows were compared")
        if not self.diffs:
            return (f"all {len(self.row_counts)} nodes agree on {self.query!r} at index {self.index} "
                    f"({next(iter(self.row_counts.values()), 0)} rows)")
        if self.reference_nodes:
            ref = f"reference: nodes {self.reference_nodes}; row counts {self.row_counts}"
        else:
            ref = "every node failed, with different errors"
        lines = [f"replicas DIFFER on {self.query!r} at applied index {self.index} ({ref}):"]
        lines += [f"  {d}" for d in self.diffs]
        return "\n".join(lines)

    __repr__ = __str__


def compare_results(query: str, index: int, answers: dict[int, dict]) -> ConsistencyReport:
    """Compare each node's answer to the reference: the answer most nodes gave (ties: the one of
    the lowest node id). An error where other nodes answer, or errors that differ, are differences;
    the same error on every node is reported as such (`failed_everywhere`), not as a divergence."""
    ordered = query_orders(query)
    rows: dict[int, list[tuple]] = {}
    errors: dict[int, str] = {}
    for nid, resp in answers.items():
        if resp.get("status") == "success":
            rows[nid] = _rows(resp)
        else:
            err = resp.get("error") or {}
            errors[nid] = f"{err.get('code')}: {err.get('message')}"

    def answer_key(r: list[tuple]) -> tuple:
        keys = [_key(row) for row in r]
        return tuple(keys) if ordered else tuple(sorted(keys, key=repr))

    if errors and not rows and len(set(errors.values())) == 1:
        return ConsistencyReport(query, index, {}, [], [], error=next(iter(errors.values())),
                                 failed_nodes=sorted(errors))
    votes = Counter(answer_key(r) for r in rows.values())
    diffs = [NodeDiff(nid, error=msg) for nid, msg in sorted(errors.items())]
    if not votes:
        return ConsistencyReport(query, index, {}, [], diffs, failed_nodes=sorted(errors))
    best = max(votes.values())
    ref_key = next(k for nid, r in sorted(rows.items()) if votes[(k := answer_key(r))] == best)
    ref_nodes = sorted(nid for nid, r in rows.items() if answer_key(r) == ref_key)
    ref = rows[ref_nodes[0]]
    for nid, r in sorted(rows.items()):
        if answer_key(r) != ref_key:
            diffs.append(_diff(nid, r, ref, ordered))
    return ConsistencyReport(query, index, {nid: len(r) for nid, r in rows.items()}, ref_nodes, diffs, ref,
                             failed_nodes=sorted(errors))


def _diff(nid: int, got: list[tuple], ref: list[tuple], ordered: bool) -> NodeDiff:
    d = NodeDiff(nid)
    raw = {_key(r): r for r in ref}
    raw.update({_key(r): r for r in got})
    have, want = Counter(_key(r) for r in got), Counter(_key(r) for r in ref)
    if have == want:
        d.order_differs = ordered
        return d
    missing = list((want - have).elements())
    extra = list((have - want).elements())
    # Rows with the same first column (usually the key) but other values are "different".
    by_first: dict[Any, list[tuple]] = {}
    for r in missing:
        if r:
            by_first.setdefault(r[0], []).append(r)
    unpaired_extra = []
    for r in extra:
        candidates = by_first.get(r[0]) if r else None
        if candidates:
            m = candidates.pop(0)
            d.different.append((raw[r], raw[m]))
            missing.remove(m)
        else:
            unpaired_extra.append(r)
    d.missing = [raw[r] for r in missing]
    d.extra = [raw[r] for r in unpaired_extra]
    return d


@dataclass
class DigestReport:
    """State digests of the running nodes at one applied index; truthy when all are equal."""

    index: int
    digests: dict[int, dict]

    def __bool__(self) -> bool:
        return len({(d.get("applied_index"), d.get("digest")) for d in self.digests.values()}) == 1

    @property
    def differing_nodes(self) -> list[int]:
        """Nodes whose (applied index, digest) is not the one most nodes have."""
        votes = Counter((d.get("applied_index"), d.get("digest")) for d in self.digests.values())
        if len(votes) <= 1:
            return []
        best = max(votes.values())
        ref = next(k for _, d in sorted(self.digests.items())
                   if votes[(k := (d.get("applied_index"), d.get("digest")))] == best)
        return sorted(nid for nid, d in self.digests.items() if (d.get("applied_index"), d.get("digest")) != ref)

    def __str__(self) -> str:
        state = "equal" if self else f"DIFFER (differing: nodes {self.differing_nodes})"
        body = ", ".join(f"node {nid}: {str(d.get('digest', '?'))[:16]}@{d.get('applied_index')}"
                         for nid, d in sorted(self.digests.items()))
        return f"state digests {state} after barrier at index {self.index}: {body}"

    __repr__ = __str__
