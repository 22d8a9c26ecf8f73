"""Anomaly names, which anomalies imply which, and which anomalies each consistency model forbids
(after Adya's thesis and Elle's `consistency-model` tables, reduced to the models we check).

Cycle anomalies, from most to least severe (each also exists with a `-process` suffix, when the
cycle needs process order, and `-realtime`, when it needs real-time order):

| name | cycle made of |
|---|---|
| G0 | write-write edges only (dirty write) |
| G1c | ww and wr edges, at least one wr (circular information flow) |
| G-single | exactly one rw edge, the rest ww/wr (read skew, lost update) |
| G-nonadjacent | several rw edges, no two adjacent |
| G2-item | several rw edges, some adjacent (write skew) |

Anomalies seen without a cycle: G1a (aborted read), G1b (intermediate read), dirty-update,
internal, future-read, incompatible-order, duplicate-elements, garbage-read, cyclic-versions,
lost-update. Newer Elle versions call the item-only cycles G-single-item and G-nonadjacent-item;
we have no predicates, so every cycle here is an item cycle and keeps the classic name.
"""

from __future__ import annotations

BASE_CYCLES = ("G0", "G1c", "G-single", "G-nonadjacent", "G2-item")
VARIANTS = ("", "-process", "-realtime")
# search and report order: pure data cycles first, then the process and real-time variants
CYCLE_TYPES = tuple(b + v for v in VARIANTS for b in BASE_CYCLES)

NON_CYCLE = ("G1a", "G1b", "dirty-update", "internal", "future-read", "incompatible-order",
             "duplicate-elements", "garbage-read", "cyclic-versions", "lost-update")

# X -> anomalies that are necessarily present whenever X is (Elle's implied-anomalies, reduced)
_IMPLIES: dict[str, tuple[str, ...]] = {
    "G0": ("G1c", "G0-process"),
    "G0-process": ("G1c-process", "G0-realtime"),
    "G0-realtime": ("G1c-realtime",),
    "G1c": ("G-single", "G1c-process"),
    "G1c-process": ("G1c-realtime", "G-single-process"),
    "G1c-realtime": ("G-single-realtime",),
    "G-single": ("G-nonadjacent", "G-single-process"),
    "G-single-process": ("G-nonadjacent-process", "G-single-realtime"),
    "G-single-realtime": ("G-nonadjacent-realtime",),
    "G-nonadjacent": ("G2-item", "G-nonadjacent-process"),
    "G-nonadjacent-process": ("G2-item-process", "G-nonadjacent-realtime"),
    "G-nonadjacent-realtime": ("G2-item-realtime",),
    "G2-item": ("G2-item-process",),
    "G2-item-process": ("G2-item-realtime",),
}


def implied(anomaly: str) -> set[str]:
    """Every anomaly implied by `anomaly`, transitively (used to skip redundant cycle searches)."""
    seen: set[str] = set()
    todo = [anomaly]
    while todo:
        for nxt in _IMPLIES.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycles(*bases: str, variants: tuple[str, ...] = ("",)) -> set[str]:
    return {b + v for b in bases for v in variants}


_READ_COMMITTED = {"G0", "G1a", "G1b", "G1c", "dirty-update", "future-read", "incompatible-order",
                   "duplicate-elements", "garbage-read", "cyclic-versions"}
_SI = _READ_COMMITTED | {"internal", "G-single", "G-nonadjacent", "lost-update"}
_REPEATABLE_READ = _READ_COMMITTED | {"internal", "G-single", "G-nonadjacent", "G2-item", "lost-update"}
_SERIALIZABLE = _SI | _REPEATABLE_READ

# model -> anomalies it forbids. Under the session and strict models a cycle needing process
# (or real-time) order is forbidden too.
MODELS: dict[str, frozenset[str]] = {
    "read-committed": frozenset(_READ_COMMITTED),
    "snapshot-isolation": frozenset(_SI),
    "repeatable-read": frozenset(_REPEATABLE_READ),
    "serializable": frozenset(_SERIALIZABLE),
    "strong-session-serializable": frozenset(_SERIALIZABLE | _cycles(*BASE_CYCLES, variants=("-process",))),
    "strict-serializable": frozenset(_SERIALIZABLE | _cycles(*BASE_CYCLES, variants=("-process", "-realtime"))),
}
DEFAULT_MODEL = "strict-serializable"


def order_edges_for(model: str) -> str | None:
    """Which extra order a model needs in the graph: 'realtime' (strict: process order is real-time
    order too, so it is covered), 'process' (strong session) or None."""
    if model == "strict-serializable":
        return "realtime"
    if model == "strong-session-serializable":
        return "process"
    return None


def classify(rels: list[str]) -> str:
    """The anomaly a cycle is, from the relation chosen for each of its edges, in order."""
    rw = rels.count("rw")
    if rw == 1:
        base = "G-single"
    elif rw > 1:
        adjacent = any(rels[i] == "rw" and rels[(i + 1) % len(rels)] == "rw" for i in range(len(rels)))
        base = "G2-item" if adjacent else "G-nonadjacent"
    elif "wr" in rels:
        base = "G1c"
    else:
        base = "G0"
    if "rt" in rels:
        return base + "-realtime"
    if "process" in rels:
        return base + "-process"
    return base
