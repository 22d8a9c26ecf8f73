"""rw-register: transactions read (`r k -> v`) and write (`w k v`) registers; written values are
unique per key and every register starts as nil.

A read names the write it saw (wr edges), but unlike list-append a read says nothing about the
order of older versions, so the version order of each key is inferred, as Elle does, from sources
that each rest on a stated assumption:

- initial state: nil precedes every value (always);
- writes follow reads (`wfr`): a txn that read k = v1 and then wrote k = v2 orders v1 < v2
  (holds in every serializable or snapshot-isolated system);
- linearizable keys (`linearizable`): when txn A completed before txn B began and both touched k,
  A's last version of k precedes B's first (holds when each key is linearizable, which strict
  serializability implies). A transitive reduction of real time is used, as for rt edges.

If a source makes a key's version order cyclic, that is itself an anomaly (`cyclic-versions`: the
assumption is violated) and the source's edges are dropped, as Elle does. Each version edge
v1 < v2 of k then gives ww edges (writer of v1 -> writer of v2) and rw edges (every txn that read
v1 -> writer of v2). Only external reads (before the txn's own write of that key) and final
writes count, as in Adya's model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from kalamdb.chaos.elle.graph import RW, WR, WW, DepGraph
from kalamdb.chaos.elle.history import Txn, edn_str, plain
from kalamdb.chaos.elle.list_append import UncheckableHistory

ASSUMPTIONS = ("wfr", "linearizable")


def ext_reads(t: Txn) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    written: set = set()
    for f, k, v in t.value:
        if f == "w":
            written.add(k)
        elif k not in written and k not in out:
            out[k] = v
    return out


def ext_writes(t: Txn) -> dict[Any, Any]:
    return {k: v for f, k, v in t.value if f == "w"}


def _sccs(graph: dict[Any, set]) -> list[list[Any]]:
    """Components with more than one vertex of a small version graph (iterative Tarjan)."""
    index: dict[Any, int] = {}
    low: dict[Any, int] = {}
    on: set = set()
    stack: list = []
    out = []
    counter = 0
    for root in list(graph):
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        work: list[tuple[Any, Iterator[Any]]] = [(root, iter(graph.get(root, ())))]
        while work:
            v, it = work[-1]
            pushed = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    pushed = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if pushed:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


class RwRegister:
    name = "rw-register"

    def __init__(self, txns: Sequence[Txn], assumptions: Iterable[str] = ASSUMPTIONS):
        self.txns = txns
        self.assumptions = tuple(assumptions)
        bad = [a for a in self.assumptions if a not in ASSUMPTIONS]
        if bad:
            raise ValueError(f"unknown assumption {bad[0]!r}; choose from {', '.join(ASSUMPTIONS)}")
        for t in txns:
            for f, k, _ in t.value:
                if f not in ("r", "w"):
                    raise UncheckableHistory(f"txn {t.label} has a [:{f} ...] micro-operation; rw-register "
                                             "histories have only r and w (use --model list-append)")
        self.reads = [ext_reads(t) if t.ok else {} for t in txns]
        self.writes = [ext_writes(t) if t.type != "fail" else {} for t in txns]
        self.writer: dict[Any, dict[Any, int]] = defaultdict(dict)   # final writes of ok/info txns
        self.any_write: dict[Any, dict[Any, int]] = defaultdict(dict)
        self.failed: dict[Any, dict[Any, int]] = defaultdict(dict)
        self.intermediate: dict[Any, dict[Any, int]] = defaultdict(dict)
        for t in txns:
            last: dict[Any, Any] = {}
            for f, k, v in t.value:
                if f != "w":
                    continue
                if v in self.any_write[k]:
                    raise UncheckableHistory(f"value {edn_str(v)} is written to key {edn_str(k)} more than once "
                                             f"(txn {t.label}): rw-register needs unique writes")
                self.any_write[k][v] = t.index
                if t.type == "fail":
                    self.failed[k][v] = t.index
                if k in last:
                    self.intermediate[k][last[k]] = t.index
                last[k] = v
            if t.type != "fail":
                for k, v in self.writes[t.index].items():
                    self.writer[k][v] = t.index
        self.readers: dict[Any, dict[Any, list[int]]] = defaultdict(lambda: defaultdict(list))
        for t in txns:
            for k, v in self.reads[t.index].items():
                self.readers[k][v].append(t.index)
        self.anomalies: dict[str, list[dict]] = defaultdict(list)
        self._single_txn_anomalies()
        self._lost_updates()
        self.versions: dict[Any, dict[Any, set]] = defaultdict(lambda: defaultdict(set))
        self.why: dict[tuple, tuple] = {}  # (k, v1, v2) -> (source, txn a, txn b)
        self.sources: list[str] = []
        self._infer_versions()

    # ------------------------------------------------------------------ without cycles
    def _case(self, kind: str, t: Txn, mop: tuple, text: str, **extra: Any) -> None:
        self.anomalies[kind].append({"txn": t.to_json(), "mop": [mop[0], plain(mop[1]), plain(mop[2])],
                                     "text": f"{text}\n    in {t.describe()}", **extra})

    def _single_txn_anomalies(self) -> None:
        for t in self.txns:
            if not t.ok:
                continue
            state: dict[Any, Any] = {}
            for f, k, v in t.value:
                mop = (f, k, v)
                if f == "w":
                    state[k] = v
                    continue
                if k in state and state[k] != v:
                    self._case("internal", t, mop, f"read of key {edn_str(k)} returned {edn_str(v)}, but this "
                               f"transaction last read or wrote {edn_str(state[k])}", expected=plain(state[k]))
                state[k] = v
                if v is None:
                    continue
                w = self.failed.get(k, {}).get(v)
                if w is not None:
                    self._case("G1a", t, mop, f"read of key {edn_str(k)} saw {edn_str(v)}, written by failed txn "
                               f"{self.txns[w].describe()}", writer=self.txns[w].to_json())
                elif v not in self.any_write.get(k, {}):
                    self._case("garbage-read", t, mop, f"read of key {edn_str(k)} saw {edn_str(v)}, which no "
                               "transaction wrote")
                else:
                    w = self.intermediate.get(k, {}).get(v)
                    if w is not None and w != t.index:
                        self._case("G1b", t, mop, f"read of key {edn_str(k)} saw {edn_str(v)}, an intermediate write "
                                   f"of {self.txns[w].describe()} (it wrote {edn_str(k)} again later)",
                                   writer=self.txns[w].to_json())

    def _lost_updates(self) -> None:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for t in self.txns:
            if not t.ok:
                continue
            for k, v in self.reads[t.index].items():
                if k in self.writes[t.index]:
                    groups[(k, v)].append(t.index)
        for (k, v), idx in groups.items():
            if len(idx) > 1:
                self.anomalies["lost-update"].append({
                    "key": plain(k), "value": plain(v), "txns": [self.txns[i].to_json() for i in idx],
                    "text": f"{len(idx)} committed txns read key {edn_str(k)} = {edn_str(v)} and then wrote it:\n"
                            + "\n".join(f"    {self.txns[i].describe()}" for i in idx)})

    # ------------------------------------------------------------------ version orders
    def _infer_versions(self) -> None:
        sources = [("initial", self._initial_edges)]
        if "wfr" in self.assumptions:
            sources.append(("wfr", self._wfr_edges))
        if "linearizable" in self.assumptions:
            sources.append(("linearizable", self._linearizable_edges))
        for name, produce in sources:
            added: list[tuple] = []
            for k, v1, v2, a, b in produce():
                if v1 == v2 or v2 in self.versions[k][v1]:
                    continue
                self.versions[k][v1].add(v2)
                self.why.setdefault((k, v1, v2), (name, a, b))
                added.append((k, v1, v2))
            cyclic = []
            for k in {k for k, _, _ in added}:
                for comp in _sccs(self.versions[k]):
                    cyclic.append((k, comp))
            if cyclic:
                for k, v1, v2 in added:  # this source contradicts itself or the others: drop it
                    self.versions[k][v1].discard(v2)
                    if self.why.get((k, v1, v2), ("",))[0] == name:
                        del self.why[(k, v1, v2)]
                for k, comp in cyclic[:20]:
                    shown = " ".join(edn_str(v) for v in comp)
                    self.anomalies["cyclic-versions"].append({
                        "key": plain(k), "versions": [plain(v) for v in comp], "source": name,
                        "text": f"with the {name} version order, the versions of key {edn_str(k)} form a cycle "
                                f"({shown}): the assumption behind it does not hold"})
            else:
                self.sources.append(name)

    def _initial_edges(self) -> Iterable[tuple]:
        for t in self.txns:
            for k, v in self.writes[t.index].items():
                if v is not None:
                    yield k, None, v, None, t.index
            for k, v in self.reads[t.index].items():
                if v is not None:
                    yield k, None, v, None, t.index

    def _wfr_edges(self) -> Iterable[tuple]:
        for t in self.txns:
            for k, v1 in self.reads[t.index].items():
                v2 = self.writes[t.index].get(k)
                if k in self.writes[t.index] and v1 is not None:
                    yield k, v1, v2, t.index, t.index

    def _first(self, i: int, k: Any) -> Any:
        r = self.reads[i]
        return r[k] if k in r else self.writes[i][k]

    def _final(self, i: int, k: Any) -> Any:
        w = self.writes[i]
        return w[k] if k in w else self.reads[i][k]

    def _linearizable_edges(self) -> Iterable[tuple]:
        """Per key, real-time order between the txns that touched it (transitive reduction)."""
        moments = []
        for t in self.txns:
            if t.type == "fail":
                continue
            moments.append((t.call, 1, t.index))
            if t.ret is not None:
                moments.append((t.ret, 0, t.index))
        moments.sort()
        buffer: dict[Any, set[int]] = defaultdict(set)
        preds: dict[tuple[int, Any], frozenset] = {}
        for _, kind, i in moments:
            keys = set(self.reads[i]) | set(self.writes[i])
            if kind == 1:
                for k in keys:
                    before = buffer.get(k)
                    if before:
                        first = self._first(i, k)
                        for j in before:
                            yield k, self._final(j, k), first, j, i
                        preds[(i, k)] = frozenset(before)
            else:
                for k in keys:
                    earlier = preds.pop((i, k), None)
                    if earlier:
                        buffer[k] -= earlier
                    buffer[k].add(i)

    def add_edges(self, graph: DepGraph) -> None:
        for t in self.txns:
            for k, v in self.reads[t.index].items():
                if v is not None:
                    w = self.writer.get(k, {}).get(v)
                    if w is not None:
                        graph.link(w, t.index, WR)
        for k, vg in self.versions.items():
            writers = self.writer.get(k, {})
            readers = self.readers.get(k, {})
            for v1, nexts in vg.items():
                w1 = writers.get(v1) if v1 is not None else None
                rs = readers.get(v1, ())
                for v2 in nexts:
                    w2 = writers.get(v2)
                    if w2 is None:
                        continue
                    if w1 is not None:
                        graph.link(w1, w2, WW)
                    graph.link_all(rs, w2, RW)

    # ------------------------------------------------------------------ explanations
    def _because(self, k: Any, v1: Any, v2: Any) -> str:
        source, a, b = self.why[(k, v1, v2)]
        if source == "initial":
            return "every value follows the initial nil"
        if source == "wfr":
            return f"txn {self.txns[a].label} read {edn_str(v1)} and then wrote {edn_str(v2)}"
        return (f"txn {self.txns[a].label} completed before txn {self.txns[b].label} began, and keys are "
                "assumed linearizable")

    def explain(self, a: Txn, b: Txn, rel: str, na: str, nb: str) -> dict:
        if rel == "wr":
            for k, v in self.writes[a.index].items():
                if self.reads[b.index].get(k, object()) == v:
                    return {"key": plain(k), "value": plain(v),
                            "text": f"{na} wrote {edn_str(k)} = {edn_str(v)}, which was read by {nb}"}
        else:
            mine = self.writes[a.index] if rel == "ww" else self.reads[a.index]
            for k, v1 in mine.items():
                v2 = self.writes[b.index].get(k)
                if k in self.writes[b.index] and v2 in self.versions.get(k, {}).get(v1, ()):
                    verb = f"set key {edn_str(k)} to {edn_str(v1)}" if rel == "ww" else f"read key {edn_str(k)} = {edn_str(v1)}"
                    return {"key": plain(k), "value": plain(v1), "value2": plain(v2),
                            "text": f"{na} {verb}, and {nb} set it to {edn_str(v2)}, which came later in the version "
                                    f"order ({self._because(k, v1, v2)})"}
        raise AssertionError(f"no {rel} dependency from txn {a.label} to txn {b.label}")
