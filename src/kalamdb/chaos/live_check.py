"""The live-query checker: each subscriber's stream, across its reconnects and reloads, must equal
the committed changes that match its query, in commit order, with no gap, duplicate or phantom.

Ground truth is the cluster's change log (`_kdb_changes`: every committed row change with its
`_seq`, identical on every replica), read after the run. A stream is the list of messages one
subscriber received, with the client's `reconnected` and `reload` markers. It is replayed:

- an initial load ends with a batch whose `last_seq_id` is the snapshot's resume point L: the rows
  must equal the committed rows matching the query as of L (`snapshot` anomaly otherwise; a load
  that dropped or doubled rows, or missed a change that happened while it ran, shows here);
- after it, each change must be the next committed change matching the query: a committed change
  skipped is a `gap`, one delivered twice or out of order a `duplicate`, one that matches no
  committed change (or a write the client was told failed) a `phantom`, one that does not match
  the query `unmatched`;
- a resume (`reconnected`, from = F) continues after F; a stream kept open to the end must have
  received every matching change (`gap` at the tail otherwise).

The workload's queries filter on a column no write changes (`grp`), so "matches the query" is a
property of the row, never of when it was evaluated.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from kalamdb.chaos.result import CheckerResult

MAX_REPORTED = 20  # anomalies kept per kind (counts are exact)


@dataclass(frozen=True)
class Committed:
    """One committed change of the workload's table (from the change log)."""

    seq: int
    index: int
    op: str  # insert | update | delete
    k: int
    v: int | None
    grp: int | None


@dataclass
class Stream:
    """What one subscriber received: (monotonic ns, message) pairs in arrival order."""

    name: str
    grp: int | None  # the query's filter: grp = value, or every row (None)
    events: list[tuple[int, dict]] = field(default_factory=list)
    complete: bool = True  # kept open until caught up at the end: its tail is checked too

    def stats(self) -> dict[str, int]:
        kinds = [m.get("type") for _, m in self.events]
        return {"changes": kinds.count("change"), "reconnects": kinds.count("reconnected"),
                "reloads": kinds.count("reload"), "errors": kinds.count("error")}


def committed_from_changes(changes: Iterable[Any]) -> list[Committed]:
    """The engine's `Change` records (in `_seq` order) as Committed."""
    out = []
    for c in changes:
        row = c.row if c.op != "delete" else c.old
        out.append(Committed(int(c.seq), int(c.index), c.op, int(row["k"]),
                             None if c.op == "delete" or row.get("v") is None else int(row["v"]),
                             None if row.get("grp") is None else int(row["grp"])))
    out.sort(key=lambda x: x.seq)
    return out


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


class _Checker:
    def __init__(self, truth: list[Committed], failed_values: set[int]):
        self.truth = truth
        self.seqs = [t.seq for t in truth]
        self.by_seq = {t.seq: t for t in truth}
        self.failed_values = failed_values
        self.anomalies: dict[str, list] = {k: [] for k in ("gap", "duplicate", "phantom", "unmatched", "snapshot",
                                                            "protocol")}
        self.counts: dict[str, int] = dict.fromkeys(self.anomalies, 0)

    def report(self, kind: str, item: Any) -> None:
        self.counts[kind] += 1
        if len(self.anomalies[kind]) < MAX_REPORTED:
            self.anomalies[kind].append(item)

    def state_at(self, seq: int, grp: int | None) -> dict[int, tuple[int | None, int]]:
        """k -> (v, _seq) of the rows matching grp after every committed change with `_seq` <= seq."""
        rows: dict[int, tuple[int | None, int, int | None]] = {}
        for t in self.truth[: bisect.bisect_right(self.seqs, seq)]:
            if t.op == "delete":
                rows.pop(t.k, None)
            else:
                rows[t.k] = (t.v, t.seq, t.grp)
        return {k: (v, s) for k, (v, s, g) in rows.items() if grp is None or g == grp}

    def missed(self, after: int, before: int, grp: int | None) -> list[int]:
        lo = bisect.bisect_right(self.seqs, after)
        hi = bisect.bisect_left(self.seqs, before)
        return [t.seq for t in self.truth[lo:hi] if grp is None or t.grp == grp]

    def check(self, s: Stream) -> None:
        phase = "ack"  # ack -> loading -> live
        resume_from: int | None = None
        cursor: int | None = None
        rows: list[dict] = []
        last_t = 0
        for t_ns, m in s.events:
            last_t = t_ns
            kind = m.get("type")
            if kind == "reload":
                phase, cursor, rows, resume_from = "ack", None, [], None
                continue
            if kind == "reconnected":
                phase, rows = "ack", []
                resume_from = _int(m.get("from"))
                continue
            if kind == "error":
                phase = "ended"
                continue
            if kind == "subscription_ack":
                if phase != "ack":
                    self.report("protocol", {"stream": s.name, "at_ns": t_ns, "what": f"ack while {phase}"})
                phase = "loading"
                continue
            if kind == "initial_data_batch":
                if phase != "loading":
                    self.report("protocol", {"stream": s.name, "at_ns": t_ns, "what": f"batch while {phase}"})
                rows += m.get("rows") or []
                control = m.get("batch_control") or {}
                if control.get("has_more"):
                    continue
                point = _int(control.get("last_seq_id"))
                if resume_from is not None and cursor is not None:
                    if rows:
                        self.report("protocol", {"stream": s.name, "what": "a resume delivered initial rows"})
                    if resume_from != cursor:
                        self.report("protocol", {"stream": s.name, "what": f"resumed from {resume_from}, "
                                                 f"but had received up to {cursor}"})
                    cursor, resume_from = resume_from, None
                elif point is None:
                    self.report("protocol", {"stream": s.name, "what": "final batch without last_seq_id"})
                    cursor = max((int(r["_seq"]) for r in rows), default=0)
                else:
                    self._snapshot(s, rows, point, t_ns)
                    cursor = point
                phase, rows = "live", []
                continue
            if kind != "change":
                continue
            if phase != "live" or cursor is None:
                self.report("protocol", {"stream": s.name, "at_ns": t_ns, "what": f"change while {phase}"})
                continue
            cursor = self._change(s, m, cursor, t_ns)
        if s.complete and phase == "live" and cursor is not None:
            tail = self.missed(cursor, (self.seqs[-1] + 1) if self.seqs else 0, s.grp)
            if tail:
                self.report("gap", {"stream": s.name, "at_ns": last_t, "after_seq": cursor, "lost": tail[:10],
                                    "lost_count": len(tail), "where": "never delivered by the end of the run"})

    def _snapshot(self, s: Stream, rows: list[dict], point: int, t_ns: int) -> None:
        want = self.state_at(point, s.grp)
        got: dict[int, tuple[int | None, int]] = {}
        dupes = []
        for r in rows:
            k = int(r["k"])
            if k in got:
                dupes.append(k)
            got[k] = (_int(r.get("v")), int(r["_seq"]))
        if got != want or dupes:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            self.report("snapshot", {"stream": s.name, "at_ns": t_ns, "resume_point": point, "missing": missing[:10],
                                     "extra": extra[:10], "stale": wrong[:10], "twice": dupes[:10]})

    def _change(self, s: Stream, m: dict, cursor: int, t_ns: int) -> int:
        row = (m.get("rows") or m.get("old_values") or [{}])[0]
        seq = _int(row.get("_seq"))
        if seq is None:
            self.report("protocol", {"stream": s.name, "what": f"change without _seq: {m}"})
            return cursor
        t = self.by_seq.get(seq)
        v = _int(row.get("v")) if m.get("change_type") != "delete" else None
        if t is None or t.op != m.get("change_type") or t.k != _int(row.get("k")) or (v is not None and t.v != v):
            why = "no committed change has this _seq" if t is None else f"differs from the committed {t}"
            if v is not None and v in self.failed_values:
                why += f"; value {v} was written by a request that definitely failed"
            self.report("phantom", {"stream": s.name, "at_ns": t_ns, "seq": seq, "change": m.get("change_type"),
                                    "row": row, "why": why})
            return cursor
        if seq <= cursor:
            self.report("duplicate", {"stream": s.name, "at_ns": t_ns, "seq": seq, "after": cursor})
            return cursor
        lost = self.missed(cursor, seq, s.grp)
        if lost:
            self.report("gap", {"stream": s.name, "at_ns": t_ns, "after_seq": cursor, "before_seq": seq,
                                "lost": lost[:10], "lost_count": len(lost)})
        if s.grp is not None and t.grp != s.grp:
            self.report("unmatched", {"stream": s.name, "at_ns": t_ns, "seq": seq, "grp": t.grp})
        return seq


def check_live(truth: list[Committed], streams: list[Stream], *, failed_values: AbstractSet[int] = frozenset()
               ) -> CheckerResult:
    checker = _Checker(truth, set(failed_values))
    for s in streams:
        checker.check(s)
    anomalies = {k: v for k, v in checker.anomalies.items() if v}
    stats: dict[str, Any] = {"streams": len(streams), "committed": len(truth),
                             "delivered": sum(s.stats()["changes"] for s in streams),
                             "reconnects": sum(s.stats()["reconnects"] for s in streams),
                             "reloads": sum(s.stats()["reloads"] for s in streams)}
    stats.update({f"{k}_count": n for k, n in checker.counts.items() if n})
    return CheckerResult("live-exactly-once", not anomalies, anomalies, stats)
