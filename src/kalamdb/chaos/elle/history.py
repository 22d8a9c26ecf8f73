"""Transactional histories: each operation's value is a list of micro-operations (mops) such as
`[["append", 3, 12], ["r", 4, [1, 2]]]` (Elle's `[[:append 3 12] [:r 4 [1 2]]]`).

Unlike `kalamdb.chaos.history.pair_events`, failed transactions are kept: a read of what a failed
transaction wrote is an aborted read (G1a), so the checker must know what failed. Ops with another
`f` than `txn` (a chaos run records several workloads in one file; its rw-register workload
writes `rw-txn`) are left out and counted.

Formats: our JSON lines (`{"type": "invoke", "process": 0, "f": "txn", "value": [["append", 1, 2]]}`)
and Jepsen/Elle EDN (`{:type :ok, :f :txn, :value [[:append 1 2] [:r 2 [1 2]]], :process 0,
:index 7}`), one map a line or one vector of maps. A map without `:process` belongs to one
anonymous process (Elle's own example histories omit it), without `:f` it is a `txn`.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalamdb.chaos.elle import edn
from kalamdb.chaos.history import EVENT_TYPES, Event, HistoryError
from kalamdb.chaos.parsers import parse_jsonl

TXN_F = "txn"
RW_TXN_F = "rw-txn"  # the rw-register chaos workload's f, so one chaos history can hold both models


def txn_functions(model: str, present: set[str]) -> frozenset[str]:
    """Which `f` values hold the transactions of `model`: Elle's `txn`, or for rw-register our
    `rw-txn` when the history has it (a chaos run of both transactional workloads)."""
    if model == "rw-register" and RW_TXN_F in present:
        return frozenset({RW_TXN_F})
    return frozenset({TXN_F})
MOP_FUNCTIONS = ("r", "append", "w")


@dataclass(slots=True)
class Txn:
    """One transaction as the client saw it. `type` is ok, info (may or may not have committed,
    at any moment after its call) or fail (did not happen). `value` holds the completed mops of an
    ok txn, and the invoked mops (reads unknown) otherwise. `call`/`ret` are positions in the
    history (real-time order); `ret` is None for info. `index` is the position among txns and the
    graph vertex; `label` is how reports name it (Jepsen's :index when the file had one)."""

    index: int
    process: Any
    type: str
    value: list[tuple]
    call: int
    ret: int | None
    label: Any = None
    line: int | None = None
    node: str | None = None
    call_line: int | None = None  # where the invoke is in the file (line is the completion's)
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.type == "ok"

    def describe(self) -> str:
        """Elle-style rendering: `{:index 7, :type :ok, :process 0, :value [[:append 1 2]]}`."""
        parts = [f":index {self.label}", f":type :{self.type}", f":process {edn_str(self.process)}"]
        if self.node is not None:
            parts.append(f":node {edn_str(self.node)}")
        parts.append(":value [" + " ".join(f"[:{f} {edn_str(k)} {edn_str(v)}]" for f, k, v in self.value) + "]")
        if self.line is not None:
            parts.append(f":line {self.line}")
        return "{" + ", ".join(parts) + "}"

    def to_json(self) -> dict:
        return {"index": self.label, "type": self.type, "process": plain(self.process), "node": self.node,
                "value": [[f, plain(k), plain(v)] for f, k, v in self.value], "line": self.line}


def plain(x: Any) -> Any:
    if isinstance(x, (edn.Keyword, edn.Symbol)):
        return repr(x)
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def edn_str(x: Any) -> str:
    if x is None:
        return "nil"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (list, tuple)):
        return "[" + " ".join(edn_str(v) for v in x) + "]"
    if isinstance(x, (edn.Keyword, edn.Symbol)):
        return repr(x)
    if isinstance(x, str):
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(x)


def _mops(value: Any, *, source: str | None, line: int | None, completed: bool) -> list[tuple]:
    """Normalize a txn value into (f, key, value) tuples; reads become tuples (hashable) or None."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise HistoryError(f"a txn value must be a list of micro-operations, got {value!r}", source=source,
                           line=line)
    out = []
    for mop in value:
        if not isinstance(mop, (list, tuple)) or len(mop) != 3:
            raise HistoryError(f"a micro-operation is [f key value], got {mop!r}", source=source, line=line)
        f, k, v = mop
        f = str(f).lstrip(":")
        if f not in MOP_FUNCTIONS:
            raise HistoryError(f"unknown micro-operation {f!r} (expected r, append or w)", source=source, line=line)
        if isinstance(k, list):
            k = tuple(k)
        if f == "r":
            if v is not None and not completed:
                v = None  # an invoke's read carries no observation
            elif v is not None and isinstance(v, (list, tuple)):
                v = tuple(v)
        elif isinstance(v, list):
            v = tuple(v)
        out.append((f, k, v))
    return out


def pair_txn_events(events: Iterable[Event], *, source: str | None = None,
                    labels: dict[int, Any] | None = None, allow_unpaired: bool = False,
                    functions: frozenset[str] = frozenset({TXN_F})) -> tuple[list[Txn], int]:
    """Pair invokes and completions per process, in the given order; returns (txns, skipped) where
    skipped counts events whose f is not one of `functions`. An invoke never answered, or followed by another
    invoke of its process, is info. `labels` maps an event's line to its Jepsen :index. With
    `allow_unpaired` (EDN: Elle's own tests write histories of completions only) a completion
    without an invoke is a transaction invoked at that same moment; otherwise it is an error."""
    pending: dict[Any, tuple[int, Event]] = {}
    done: list[tuple[int, Event, Event | None, int | None]] = []
    skipped = 0
    for t, ev in enumerate(events):
        if ev.f not in functions:
            skipped += 1
            continue
        if ev.type not in EVENT_TYPES:
            raise HistoryError(f"unknown event type {ev.type!r}", source=source, line=ev.line)
        if ev.type == "invoke":
            if ev.process in pending:
                ct, cev = pending.pop(ev.process)
                done.append((ct, cev, None, None))
            pending[ev.process] = (t, ev)
            continue
        started = pending.pop(ev.process, None)
        if started is None and allow_unpaired:
            started = (t, ev)
        if started is None:
            raise HistoryError(f"{ev.type} for process {ev.process!r} without a pending invoke", source=source,
                               line=ev.line)
        done.append((started[0], started[1], ev, t))
    for ct, cev in pending.values():
        done.append((ct, cev, None, None))
    done.sort(key=lambda d: d[0])
    txns: list[Txn] = []
    for ct, cev, rev, rt in done:
        type_ = "info" if rev is None else rev.type
        if rev is not None and type_ == "ok":
            value = _mops(rev.value, source=source, line=rev.line, completed=True)
            invoked = _mops(cev.value, source=source, line=cev.line, completed=False)
            if [(f, k) for f, k, _ in value] != [(f, k) for f, k, _ in invoked] or any(
                    f != "r" and v != iv for (f, _, v), (_, _, iv) in zip(value, invoked, strict=True)):
                raise HistoryError("the completion's micro-operations differ from the invoke's "
                                   f"({edn_str(cev.value)} became {edn_str(rev.value)})", source=source, line=rev.line)
        else:
            value = _mops(cev.value, source=source, line=cev.line, completed=False)
        line = rev.line if rev is not None else cev.line
        label = None
        if labels is not None and line is not None:
            label = labels.get(line)
        txns.append(Txn(len(txns), cev.process, type_, value, ct, rt if type_ == "ok" else None,
                        label if label is not None else (line if line is not None else len(txns)), line,
                        cev.node if cev.node is not None else (rev.node if rev is not None else None), cev.line))
    return txns, skipped


def parse_edn_events(text: str, source: str = "<edn>") -> tuple[list[Event], dict[int, Any]]:
    """Events from EDN maps (one a line, or inside one top-level vector); nemesis ops are skipped.
    Returns the events in history order (by :index when every op has one) and line -> :index."""
    events: list[tuple[Any, int, Event]] = []
    labels: dict[int, Any] = {}
    try:
        forms = list(edn.read_all(text))
    except edn.EdnError as exc:
        raise HistoryError(str(exc).split(": ", 1)[1], source=source, line=exc.line) from None
    flat: list[tuple[Any, int]] = []
    for form, line in forms:
        if isinstance(form, list) and all(isinstance(x, dict) for x in form):
            flat.extend((x, line) for x in form)
        else:
            flat.append((form, line))
    for pos, (m, line) in enumerate(flat):
        if not isinstance(m, dict):
            raise HistoryError(f"expected an operation map, got {m!r:.60}", source=source, line=line)
        type_ = m.get(edn.Keyword("type"))
        if type_ is None:
            raise HistoryError("missing :type", source=source, line=line)
        process = m.get(edn.Keyword("process"))
        if process == "nemesis":
            continue
        f = m.get(edn.Keyword("f"), TXN_F)
        type_ = str(type_)
        if type_ not in EVENT_TYPES:
            raise HistoryError(f"unknown event type :{type_}", source=source, line=line)
        index = m.get(edn.Keyword("index"))
        time = m.get(edn.Keyword("time"))
        node = m.get(edn.Keyword("node"))
        ev = Event(type_, process, str(f), None, m.get(edn.Keyword("value")),
                   time if isinstance(time, int) else None, None if node is None else str(node), line)
        if index is not None:
            labels[line] = index
        events.append((index, pos, ev))
    if events and all(isinstance(i, int) for i, _, _ in events):
        events.sort(key=lambda e: (e[0], e[1]))
    return [ev for _, _, ev in events], labels


def read_text(path: str | Path) -> str:
    """A history file's text; `.gz` files are decompressed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        if p.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise HistoryError(f"cannot read: {exc}", source=str(p)) from None


def detect_txn_format(text: str) -> str:
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s.startswith(";"):
            continue
        if s.startswith(("{:", "[{:", "[", "#jepsen")):
            return "edn"
        if s.startswith("{"):
            return "jsonl"
        break
    raise HistoryError("cannot tell the history format (edn or jsonl) from its first line")


def parse_txn_history(text: str, fmt: str = "auto", source: str = "<history>",
                      model: str = "list-append") -> tuple[list[Txn], int]:
    if fmt == "auto":
        try:
            fmt = detect_txn_format(text)
        except HistoryError as exc:
            raise HistoryError(str(exc), source=source, line=1) from None
    if fmt == "edn":
        events, labels = parse_edn_events(text, source)
        return pair_txn_events(events, source=source, labels=labels, allow_unpaired=True,
                               functions=txn_functions(model, {e.f for e in events}))
    if fmt == "jsonl":
        events = parse_jsonl(text, source)
        if events and all(e.time is not None for e in events):
            events.sort(key=lambda e: e.time or 0)  # stable: ties keep file order (`or 0`: never None here)
        return pair_txn_events(events, source=source, functions=txn_functions(model, {e.f for e in events}))
    raise HistoryError(f"format {fmt!r} cannot hold transactions; use edn or jsonl", source=source)


def load_txn_history(path: str | Path, fmt: str = "auto", model: str = "list-append") -> tuple[list[Txn], int]:
    """Read a transactional history file: (txns, count of skipped events of other workloads)."""
    return parse_txn_history(read_text(path), fmt, str(path), model)
