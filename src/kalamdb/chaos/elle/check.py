"""`check_txns`: the whole transactional check of one history, with a verdict a script can act on.

1. The model's inference (list-append or rw-register) finds the anomalies visible without a
   cycle and adds ww/wr/rw edges; the consistency model decides whether real-time (strict
   serializability) or process order (strong session) edges are added.
2. Tarjan's algorithm finds the strongly connected components; in each, `search.search_scc`
   finds a short cycle of every class the consistency model forbids, most severe first.
3. Each reported cycle is explained edge by edge, as Elle does ("T1 < T2, because T2 observed
   T1's append of 3 to key 5 ... However, T3 < T1 ...: a contradiction!").

Valid: no forbidden anomaly. Invalid: at least one. Unknown: the history breaks an assumption of
the model (duplicate appends), the graph outgrew `max_edges` (memory), or a search ran out of
time in a component where the fallback cycle found is not itself forbidden.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kalamdb.chaos.elle.consistency import CYCLE_TYPES, DEFAULT_MODEL, MODELS, NON_CYCLE, order_edges_for
from kalamdb.chaos.elle.graph import (
    DATA,
    PROCESS,
    REALTIME,
    DepGraph,
    GraphTooLarge,
    add_process_edges,
    add_realtime_edges,
    strongly_connected_components,
)
from kalamdb.chaos.elle.history import Txn
from kalamdb.chaos.elle.list_append import ListAppend, UncheckableHistory
from kalamdb.chaos.elle.rw_register import ASSUMPTIONS, RwRegister
from kalamdb.chaos.elle.search import Cycle, search_scc

TXN_MODELS = ("list-append", "rw-register")
DEFAULT_MAX_EDGES = 5_000_000  # ~100 bytes each in Python dicts: about half a GB at most
MAX_CASES_PER_ANOMALY = 25     # explained in full; the rest are counted


@dataclass
class TxnCheckResult:
    model: str
    consistency: str
    valid: bool | None                 # None: unknown
    anomalies: dict[str, list[dict]]   # name -> cases (each has "text"; cycles also "txns"/"steps")
    counts: dict[str, int]             # name -> number found (may exceed the cases kept)
    forbidden: list[str]               # anomalies found that the consistency model forbids
    unknown_reasons: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "VALID" if self.valid else ("UNKNOWN" if self.valid is None else "INVALID")

    def summary(self) -> str:
        s = self.stats
        found = ", ".join(f"{k} x{self.counts[k]}" for k in self._ordered(self.counts)) or "no anomalies"
        edges = " ".join(f"{k}={v}" for k, v in s.get("edges", {}).items() if v)
        txns = s.get("txns", {})
        return (f"{self.verdict}: {found}; {txns.get('total', 0)} txns (ok {txns.get('ok', 0)}, info "
                f"{txns.get('info', 0)}, fail {txns.get('fail', 0)}), edges {edges or 'none'}, "
                f"{s.get('sccs', 0)} cyclic component(s), {s.get('elapsed', 0.0):.2f} s "
                f"[model {self.model}, {self.consistency}]")

    @staticmethod
    def _ordered(names: Iterable[str]) -> list[str]:
        rank = {n: i for i, n in enumerate((*CYCLE_TYPES, *NON_CYCLE))}
        return sorted(names, key=lambda n: (rank.get(n, 99), n))

    def format(self, limit: int = 5) -> str:
        """The anomalies, most severe first, each case explained (at most `limit` per kind)."""
        out = []
        for name in self._ordered(self.anomalies):
            cases = self.anomalies[name]
            note = "" if name in self.forbidden else f" (allowed under {self.consistency})"
            out.append(f"{name}: {self.counts[name]} found{note}")
            for i, case in enumerate(cases[:limit]):
                out.append(f"  {name} #{i + 1}")
                out.extend("    " + line for line in case["text"].splitlines())
            if len(cases) > limit:
                out.append(f"  ... {self.counts[name] - limit} more")
        for reason in self.unknown_reasons:
            out.append(f"unknown: {reason}")
        return "\n".join(out)

    def to_json(self) -> dict:
        return {"model": self.model, "consistency": self.consistency, "verdict": self.verdict,
                "valid": self.valid, "forbidden": self.forbidden, "counts": self.counts,
                "anomalies": self.anomalies, "unknown_reasons": self.unknown_reasons, "stats": self.stats}


def _explain_cycle(cycle: Cycle, txns: Sequence[Txn], inference: Any) -> dict:
    names = {t: f"T{i + 1}" for i, t in enumerate(cycle.txns)}
    steps = []
    for a, b, rel in cycle.steps:
        ta, tb = txns[a], txns[b]
        na, nb = names[a], names[b]
        if rel == "rt":
            if ta.line is not None and tb.call_line is not None:
                when = f"(line {ta.line}) before {nb} was invoked (line {tb.call_line})"
            else:
                when = f"(history position {ta.ret}) before {nb} was invoked (position {tb.call})"
            data = {"text": f"{na} completed {when}"}
        elif rel == "process":
            data = {"text": f"process {ta.process} performed {na} and then {nb}"}
        else:
            data = inference.explain(ta, tb, rel, na, nb)
        steps.append({"from": na, "to": nb, "rel": rel, **data})
    lines = ["Let:"]
    lines += [f"  {names[t]} = {txns[t].describe()}" for t in cycle.txns]
    lines.append("Then:")
    for i, s in enumerate(steps):
        last = i == len(steps) - 1
        lead = "However, " if last and len(steps) > 1 else ""
        tail = ": a contradiction!" if last else "."
        lines.append(f"  - {lead}{s['from']} < {s['to']}, because {s['text']}{tail} [{s['rel']}]")
    return {"type": cycle.type, "txns": [{"name": names[t], **txns[t].to_json()} for t in cycle.txns],
            "steps": steps, "text": "\n".join(lines)}


def _stats_txns(txns: Sequence[Txn]) -> dict[str, int]:
    out = {"total": len(txns), "ok": 0, "info": 0, "fail": 0}
    for t in txns:
        out[t.type] += 1
    return out


def check_txns(txns: Sequence[Txn], *, model: str = "list-append", consistency: str = DEFAULT_MODEL,
               timeout: float = 60.0, cycle_search_timeout: float = 1.0, max_edges: int = DEFAULT_MAX_EDGES,
               assumptions: Iterable[str] | None = None) -> TxnCheckResult:
    """Check a transactional history (see the module docstring). `assumptions` (rw-register only)
    defaults to what `consistency` guarantees: wfr and linearizable keys under strict
    serializability, wfr under the other serializable and snapshot models, none below."""
    if model not in TXN_MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(TXN_MODELS)}")
    if consistency not in MODELS:
        raise ValueError(f"unknown consistency model {consistency!r}; choose from {', '.join(MODELS)}")
    started = time.monotonic()
    deadline = started + timeout
    forbidden_kinds = MODELS[consistency]
    stats: dict[str, Any] = {"txns": _stats_txns(txns)}
    unknown: list[str] = []
    anomalies: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}

    def result(valid: bool | None) -> TxnCheckResult:
        stats["elapsed"] = round(time.monotonic() - started, 3)
        forbidden = [k for k in TxnCheckResult._ordered(counts) if k in forbidden_kinds]
        if forbidden:
            valid = False
        return TxnCheckResult(model, consistency, valid, anomalies, counts, forbidden, unknown, stats)

    if assumptions is None:
        if consistency == "strict-serializable":
            assumptions = ASSUMPTIONS
        elif consistency == "read-committed":
            assumptions = ()
        else:
            assumptions = ("wfr",)
    try:
        inference: ListAppend | RwRegister = ListAppend(txns) if model == "list-append" else \
            RwRegister(txns, assumptions)
    except UncheckableHistory as exc:
        unknown.append(str(exc))
        return result(None)
    if isinstance(inference, RwRegister):  # model == "rw-register"
        stats["version_sources"] = inference.sources
    for name, cases in inference.anomalies.items():
        counts[name] = len(cases)
        anomalies[name] = cases[:MAX_CASES_PER_ANOMALY]
    graph = DepGraph(len(txns), max_edges)
    in_graph = [t.type != "fail" for t in txns]
    order = order_edges_for(consistency)
    mask = DATA | (REALTIME if order == "realtime" else PROCESS if order == "process" else 0)
    try:
        inference.add_edges(graph)
        if order == "realtime":
            add_realtime_edges(graph, txns, in_graph)
        elif order == "process":
            add_process_edges(graph, txns, in_graph)
    except GraphTooLarge as exc:
        unknown.append(f"{exc} (raise --max-edges, or check a shorter history); cycles were not searched")
        stats["edges"] = dict(graph.counts)
        return result(None)
    stats["edges"] = dict(graph.counts)
    sccs = sorted(strongly_connected_components(graph, mask), key=len)
    stats["sccs"] = len(sccs)
    stats["largest_scc"] = len(sccs[-1]) if sccs else 0
    wanted = {t for t in CYCLE_TYPES if t in forbidden_kinds}
    timeouts: list[dict[str, Any]] = []
    for scc in sccs:
        res = search_scc(graph, scc, wanted, mask, type_budget=cycle_search_timeout, deadline=deadline)
        for cycle in res.cycles:
            counts[cycle.type] = counts.get(cycle.type, 0) + 1
            kept = anomalies.setdefault(cycle.type, [])
            if len(kept) < MAX_CASES_PER_ANOMALY:
                kept.append(_explain_cycle(cycle, txns, inference))
        if res.timed_out:
            timeouts.append({"scc_size": res.size, "classes": res.timed_out})
    if timeouts:
        stats["search_timeouts"] = timeouts
        unknown.append(f"the cycle search ran out of time in {len(timeouts)} component(s) (largest "
                       f"{max(t['scc_size'] for t in timeouts)} txns); a fallback cycle was reported for each")
    return result(None if timeouts else True)
