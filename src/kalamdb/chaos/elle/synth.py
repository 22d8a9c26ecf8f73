"""Synthetic transactional histories from a simulated database, for tests and benchmarks.

`simulate` runs `processes` clients against an in-memory store of lists (list-append) or registers
(rw-register). Each transaction takes effect at one instant between its invoke and its completion
(so the history is strictly serializable) unless a deliberate bug is chosen:

- `stale-reads`: reads are answered from the state at invoke time, writes applied later (reads
  outside the transaction's snapshot);
- `split-writes`: each micro-operation takes effect at its own instant (not atomic).

Some transactions fail (no effect) or end indeterminate (`info`: applied or not, by a coin), and
the client then continues as a new process, as Jepsen's do. Everything is drawn from `rng`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from kalamdb.chaos.history import Event

BUGS = (None, "stale-reads", "split-writes")


def simulate(rng: random.Random, n: int, *, model: str = "list-append", processes: int = 5, keys: int = 8,
             max_mops: int = 4, writes_per_key: int = 16, p_fail: float = 0.03, p_info: float = 0.03,
             bug: str | None = None) -> list[Event]:
    """A history of `n` transactions, as events in real-time order (positions are times)."""
    if bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}")
    write_f = "append" if model == "list-append" else "w"
    state: dict[Any, Any] = defaultdict(list) if model == "list-append" else {}
    active = list(range(keys))
    next_key = keys
    writes: dict[Any, int] = defaultdict(int)
    counter = 0
    events: list[Event] = []
    # process slot -> in-flight txn: dict(process, mops, done, snapshot, outcome)
    slots: dict[int, dict | None] = dict.fromkeys(range(processes))
    proc_of = {s: s for s in range(processes)}
    started = 0

    def read(k: Any, snap: dict | None) -> Any:
        src = state if snap is None else snap
        if model == "list-append":
            return list(src.get(k, []))
        return src.get(k)

    def apply_mop(i: int, txn: dict) -> None:
        f, k, v = txn["mops"][i]
        if f == "r":
            txn["result"][i] = (f, k, read(k, txn.get("snapshot")))
        elif model == "list-append":
            state[k].append(v)
            if txn.get("snapshot") is not None:
                txn["snapshot"].setdefault(k, []).append(v)
        else:
            state[k] = v
            if txn.get("snapshot") is not None:
                txn["snapshot"][k] = v

    while started < n or any(slots.values()):
        slot = rng.randrange(processes)
        txn = slots[slot]
        if txn is None:
            if started >= n:
                continue
            mops = []
            for _ in range(rng.randint(1, max_mops)):
                i = min(int(rng.expovariate(0.5)), len(active) - 1)
                k = active[i]
                if rng.random() < 0.5:
                    mops.append(["r", k, None])
                else:
                    counter += 1
                    mops.append([write_f, k, counter])
                    writes[k] += 1
                    if writes[k] >= writes_per_key:
                        active[i] = next_key
                        next_key += 1
            roll = rng.random()
            outcome = "fail" if roll < p_fail else "info" if roll < p_fail + p_info else "ok"
            txn = {"process": proc_of[slot], "mops": mops, "result": [tuple(m) for m in mops], "done": 0,
                   "outcome": outcome, "apply": outcome == "ok" or (outcome == "info" and rng.random() < 0.5)}
            if bug == "stale-reads":
                txn["snapshot"] = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
            slots[slot] = txn
            started += 1
            events.append(Event("invoke", txn["process"], "txn", None, [list(m) for m in mops], len(events)))
            continue
        if txn["apply"] and txn["done"] < len(txn["mops"]):
            if bug == "split-writes":
                apply_mop(txn["done"], txn)
                txn["done"] += 1
            else:
                for i in range(len(txn["mops"])):
                    apply_mop(i, txn)
                txn["done"] = len(txn["mops"])
            continue
        outcome = txn["outcome"]
        value = [list(m) for m in txn["result"]] if outcome == "ok" else [list(m) for m in txn["mops"]]
        events.append(Event(outcome, txn["process"], "txn", None, value, len(events)))
        if outcome == "info":
            proc_of[slot] += processes
        slots[slot] = None
    return events
