"""Jepsen's set-full checker: elements are added concurrently and the whole set is read now and
then; every acknowledged add must show up in later reads and stay there.

Per element: `known` is when it was certainly in the set (its add was acknowledged, or a read that
contained it returned). Reads that began after `known` must contain it:
- lost: acknowledged or seen, yet the last read begun after it was known lacks it;
- stale: some read begun after it was known missed it, but a later one has it again
  (an error when the system promises linearizable reads);
- never_read: no read began after its add was called (the history cannot tell);
- duplicated: a read listing it more than once;
- unexpected: read but never (successfully or indeterminately) added.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from kalamdb.chaos.history import Operation
from kalamdb.chaos.result import CheckerResult


def check_set_full(
    ops: Iterable[Operation], *, add: str = "add", read: str = "read", linearizable: bool = True
) -> CheckerResult:
    ops = list(ops)
    adds: dict[Any, Operation] = {}
    for op in ops:
        if op.f == add:
            prev = adds.get(op.value)
            if prev is None or (prev.ret is None and op.ret is not None):
                adds[op.value] = op  # an acknowledged add of the same element wins
    reads = sorted((op for op in ops if op.f == read and op.ret is not None), key=lambda o: o.call)
    duplicated: dict[Any, int] = {}
    unexpected: set[Any] = set()
    contents: list[set[Any]] = []
    for r in reads:
        items = list(r.output or [])
        counts = Counter(items)
        for element, n in counts.items():
            if n > 1:
                duplicated[element] = max(n, duplicated.get(element, 0))
            if element not in adds:
                unexpected.add(element)
        contents.append(set(counts))

    lost, stale, never_read, stable = [], [], [], 0
    for element, op in adds.items():
        seen_at = [r.returned for r, c in zip(reads, contents) if element in c]
        candidates = ([op.ret] if op.ret is not None else []) + ([min(seen_at)] if seen_at else [])
        if not candidates:
            if not any(r.call > op.call for r in reads):
                never_read.append(element)
            continue  # indeterminate and never seen: it may simply not have happened
        known = min(candidates)
        after = [(r, c) for r, c in zip(reads, contents) if r.call > known]
        if not after:
            never_read.append(element)
            continue
        if element not in after[-1][1]:
            lost.append(element)
        elif any(element not in c for _, c in after):
            stale.append(element)
        else:
            stable += 1
    valid = not lost and not duplicated and not unexpected and not (linearizable and stale)
    return CheckerResult(
        "set-full",
        valid,
        {
            "lost": sorted(lost, key=repr),
            "stale": sorted(stale, key=repr),
            "duplicated": duplicated,
            "unexpected": sorted(unexpected, key=repr),
            "never_read": sorted(never_read, key=repr),
        },
        {"attempted": len(adds), "stable": stable, "reads": len(reads)},
    )
