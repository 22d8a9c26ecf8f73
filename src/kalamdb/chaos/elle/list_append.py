"""List-append: transactions read lists (`r k -> [1 2 3]`) and append unique elements (`append k 4`).

Because appends are unique and a read returns the whole list, every read reveals the order of all
appends before it, so the version order of each key is the longest read (every other read must be
a prefix of it, else `incompatible-order`). From that order (Elle's inference, Kingsbury & Alvaro
section 4):

- ww: the txn that appended element e_i -> the txn that appended e_(i+1);
- wr: the txn that appended a read's last element -> the reader;
- rw: a txn that read the state ending at e_i -> the txn that appended e_(i+1) (it did not see it).

An append never observed by any read still came after every observed element, so it is placed
right after the longest read (that is what lets a lost append show up as an rw edge).
Failed transactions are not vertices; info ones are (their appends may have happened), but their
reads are unknown and ignored.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from kalamdb.chaos.elle.graph import RW, WR, WW, DepGraph
from kalamdb.chaos.elle.history import Txn, edn_str, plain


class UncheckableHistory(ValueError):
    """The history breaks an assumption of the model (e.g. an element appended twice): the
    checker cannot judge it and answers unknown."""


INIT = None  # the state before the first append: a read of [] or nil


def _k(k: Any) -> str:
    return edn_str(k)


class ListAppend:
    """Inference over one history; `add_edges` fills the graph, `anomalies` holds what is visible
    without a cycle, `explain` says why an edge exists."""

    name = "list-append"

    def __init__(self, txns: Sequence[Txn]):
        self.txns = txns
        for t in txns:
            for f, k, _ in t.value:
                if f not in ("r", "append"):
                    raise UncheckableHistory(f"txn {t.label} has a [:{f} ...] micro-operation; list-append "
                                             "histories have only r and append (use --model rw-register)")
        seen: dict[Any, set] = defaultdict(set)
        for t in txns:
            for f, k, v in t.value:
                if f == "append":
                    if v in seen[k]:
                        raise UncheckableHistory(f"element {edn_str(v)} is appended to key {_k(k)} more than once "
                                                 f"(txn {t.label}): list-append needs unique elements")
                    seen[k].add(v)
        self.writer: dict[Any, dict[Any, int]] = defaultdict(dict)   # ok/info appends
        self.failed: dict[Any, dict[Any, int]] = defaultdict(dict)   # appends of failed txns
        self.intermediate: dict[Any, dict[Any, int]] = defaultdict(dict)
        for t in txns:
            last: dict[Any, Any] = {}
            for f, k, v in t.value:
                if f != "append":
                    continue
                (self.failed if t.type == "fail" else self.writer)[k][v] = t.index
                if k in last:
                    self.intermediate[k][last[k]] = t.index
                last[k] = v
        self.anomalies: dict[str, list[dict]] = defaultdict(list)
        self._reads()
        self._orders()
        self._dirty_updates()
        self._lost_updates()

    # ------------------------------------------------------------------ without cycles
    def _case(self, kind: str, t: Txn, mop: tuple, text: str, **extra: Any) -> None:
        self.anomalies[kind].append({"txn": t.to_json(), "mop": [mop[0], plain(mop[1]), plain(mop[2])],
                                     "text": f"{text}\n    in {t.describe()}", **extra})

    def _reads(self) -> None:
        self.read_values: dict[Any, set[tuple]] = defaultdict(set)
        for t in self.txns:
            if not t.ok:
                continue
            state: dict[Any, list | None] = {}   # expected list; None at [0] = unknown prefix
            appended_later: dict[Any, set] = defaultdict(set)
            for f, k, v in t.value:
                if f == "append":
                    appended_later[k].add(v)
            for f, k, v in t.value:
                mop = (f, k, v)
                if f == "append":
                    appended_later[k].discard(v)
                    known = state.get(k)
                    state[k] = ([...] if known is None else known) + [v]
                    continue
                vals = list(v or ())
                if vals:
                    self.read_values[k].add(tuple(vals))
                counts = Counter(vals)
                dups = {e: c for e, c in counts.items() if c > 1}
                if dups:
                    self._case("duplicate-elements", t, mop,
                               f"read of key {_k(k)} holds {', '.join(f'{edn_str(e)} x{c}' for e, c in dups.items())}",
                               duplicates={str(e): c for e, c in dups.items()})
                for e in vals:
                    w = self.failed.get(k, {}).get(e)
                    if w is not None:
                        self._case("G1a", t, mop, f"read of key {_k(k)} saw {edn_str(e)}, appended by failed txn "
                                   f"{self.txns[w].describe()}", element=plain(e), writer=self.txns[w].to_json())
                    elif e not in self.writer.get(k, {}):
                        self._case("garbage-read", t, mop, f"read of key {_k(k)} saw {edn_str(e)}, which no "
                                   "transaction appended", element=plain(e))
                if vals:
                    w = self.intermediate.get(k, {}).get(vals[-1])
                    if w is not None and w != t.index:
                        self._case("G1b", t, mop, f"read of key {_k(k)} ends in {edn_str(vals[-1])}, an intermediate "
                                   f"append of {self.txns[w].describe()} (it appended to {_k(k)} again later)",
                                   element=plain(vals[-1]), writer=self.txns[w].to_json())
                future = [e for e in vals if e in appended_later[k]]
                if future:
                    self._case("future-read", t, mop, f"read of key {_k(k)} saw {edn_str(future[0])}, which this "
                               "transaction appends only later", element=plain(future[0]))
                expected = state.get(k)
                if expected is not None:
                    if expected and expected[0] is ...:
                        tail = expected[1:]
                        bad = len(tail) > len(vals) or vals[len(vals) - len(tail):] != tail
                        shown = "[... " + " ".join(edn_str(x) for x in tail) + "]"
                    else:
                        bad = vals != expected
                        shown = edn_str(expected)
                    if bad:
                        self._case("internal", t, mop, f"read of key {_k(k)} returned {edn_str(vals)}, but this "
                                   f"transaction's own earlier reads and appends imply {shown}", expected=shown)
                state[k] = vals

    def _orders(self) -> None:
        """Version order per key: the longest read; every read must be a prefix of the next longer."""
        self.order: dict[Any, list] = {}
        for k, values in self.read_values.items():
            ordered = sorted(values, key=len)
            for a, b in itertools.pairwise(ordered):
                if b[:len(a)] != a:
                    self.anomalies["incompatible-order"].append({
                        "key": plain(k), "values": [list(map(plain, a)), list(map(plain, b))],
                        "text": f"key {_k(k)} was read as {edn_str(a)} and as {edn_str(b)}: neither is a prefix of "
                                "the other, so no single order of appends explains both"})
                    break
            longest = list(dict.fromkeys(ordered[-1]))
            self.order[k] = longest
        for k, writes in self.writer.items():
            if k not in self.order and len(writes) + len(self.failed.get(k, {})) == 1 and len(writes) == 1:
                self.order[k] = list(writes)  # a key with one append and no read: [] then [x]
        self.position = {k: {e: i for i, e in enumerate(order)} for k, order in self.order.items()}

    def _dirty_updates(self) -> None:
        for k, order in self.order.items():
            failed = self.failed.get(k, {})
            first_failed = None
            for e in order:
                if e in failed and first_failed is None:
                    first_failed = e
                elif first_failed is not None and e in self.writer.get(k, {}) and \
                        self.txns[self.writer[k][e]].ok:
                    self.anomalies["dirty-update"].append({
                        "key": plain(k), "values": [plain(first_failed), plain(e)],
                        "text": f"on key {_k(k)}, committed txn {self.txns[self.writer[k][e]].describe()} appended "
                                f"{edn_str(e)} after {edn_str(first_failed)} of failed txn "
                                f"{self.txns[failed[first_failed]].describe()}"})
                    break

    def _lost_updates(self) -> None:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for t in self.txns:
            if not t.ok:
                continue
            first_read: dict[Any, tuple] = {}
            written: set = set()
            for f, k, v in t.value:
                if f == "r":
                    first_read.setdefault(k, tuple(v or ()))
                elif k not in written:
                    written.add(k)
                    if k in first_read:
                        groups[(k, first_read[k])].append(t.index)
        for (k, v), idx in groups.items():
            if len(idx) > 1:
                self.anomalies["lost-update"].append({
                    "key": plain(k), "value": list(map(plain, v)), "txns": [self.txns[i].to_json() for i in idx],
                    "text": f"{len(idx)} committed txns read key {_k(k)} = {edn_str(v)} and then appended to it, so "
                            "all but one of their updates were based on a state another had already changed:\n"
                            + "\n".join(f"    {self.txns[i].describe()}" for i in idx)})

    # ------------------------------------------------------------------ edges
    def _prev(self, k: Any, v: Any) -> Any:
        """The element appended just before v to k (INIT: none); for an unobserved append, the
        last observed element (it came after all of them)."""
        order = self.order.get(k)
        if not order:
            return INIT
        pos = self.position[k].get(v)
        if pos is None:
            return order[-1]
        return order[pos - 1] if pos > 0 else INIT

    def add_edges(self, graph: DepGraph) -> None:
        readers: dict[Any, dict[Any, list[int]]] = defaultdict(lambda: defaultdict(list))
        for t in self.txns:
            if not t.ok:
                continue
            for f, k, v in t.value:
                if f == "r":
                    readers[k][v[-1] if v else INIT].append(t.index)
                    if v:
                        w = self.writer.get(k, {}).get(v[-1])
                        if w is not None:
                            graph.link(w, t.index, WR)
        for t in self.txns:
            if t.type == "fail":
                continue
            for f, k, v in t.value:
                if f != "append":
                    continue
                prev = self._prev(k, v)
                if prev is not INIT:
                    w = self.writer.get(k, {}).get(prev)
                    if w is not None:
                        graph.link(w, t.index, WW)
                rs = readers.get(k)
                if rs:
                    graph.link_all(rs.get(prev, ()), t.index, RW)

    # ------------------------------------------------------------------ explanations
    def explain(self, a: Txn, b: Txn, rel: str, na: str, nb: str) -> dict:
        if rel == "ww":
            for f, k, v in b.value:
                if f == "append":
                    prev = self._prev(k, v)
                    if prev is not INIT and self.writer.get(k, {}).get(prev) == a.index:
                        return {"key": plain(k), "value": plain(prev), "value2": plain(v),
                                "text": f"{nb} appended {edn_str(v)} after {na} appended {edn_str(prev)} to {_k(k)}"}
        elif rel == "wr":
            for f, k, v in b.value:
                if f == "r" and v and self.writer.get(k, {}).get(v[-1]) == a.index:
                    return {"key": plain(k), "value": plain(v[-1]),
                            "text": f"{nb} observed {na}'s append of {edn_str(v[-1])} to key {_k(k)}"}
        elif rel == "rw":
            for f, k, v in b.value:
                if f != "append":
                    continue
                prev = self._prev(k, v)
                for fa, ka, va in a.value:
                    if fa == "r" and ka == k and (va[-1] if va else INIT) == prev:
                        if prev is INIT:
                            text = (f"{na} observed the initial (empty) state of {_k(k)}, which {nb} created by "
                                    f"appending {edn_str(v)}")
                        else:
                            text = f"{na} did not observe {nb}'s append of {edn_str(v)} to {_k(k)}"
                        return {"key": plain(k), "value": plain(prev), "value2": plain(v), "text": text}
        raise AssertionError(f"no {rel} dependency from txn {a.label} to txn {b.label}")
