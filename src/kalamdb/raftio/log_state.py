"""The in-memory picture of a Raft log that replay builds and every write keeps current: hard state,
snapshot metadata, the compaction point, and for each live index its term and the location of the
record holding it (entries themselves stay on disk). Replay (`log_replay.py`) and the writes of
`storage.py` change it through the same three `apply_*` methods, so what a restart rebuilds is by
construction what the running node had."""

from __future__ import annotations

from array import array

from kalamdb.raft.types import HardState, SnapshotMeta
from kalamdb.raftio.log_format import Segment


class LogState:
    """Log bounds, terms and record locations, hard state and snapshot metadata; no I/O."""

    __slots__ = ("compact_index", "compact_term", "hs", "locs", "segments", "snap", "terms")

    def __init__(self) -> None:
        self.hs = HardState()
        self.snap: SnapshotMeta | None = None
        self.compact_index = 0
        self.compact_term = 0
        # one slot per live index compact_index+1 .. last_index
        self.terms = array("q")
        self.locs = array("q")
        self.segments: list[Segment] = []

    @property
    def first_index(self) -> int:
        return self.compact_index + 1

    @property
    def last_index(self) -> int:
        return self.compact_index + len(self.terms)

    @property
    def last_term(self) -> int:
        return self.terms[-1] if self.terms else self.compact_term

    def term(self, index: int) -> int:
        """Term of the entry at `index` (the compaction point's term for first_index - 1)."""
        if index == self.compact_index:
            return self.compact_term
        if not self.compact_index < index <= self.last_index:
            raise IndexError(f"no term for index {index}: the log holds "
                             f"{self.compact_index}..{self.last_index}")
        return self.terms[index - self.compact_index - 1]

    def apply_entries(self, first: int, terms: list[int], loc: int, seg: Segment) -> None:
        keep = first - self.compact_index - 1
        if keep < len(self.terms):
            del self.terms[keep:]
            del self.locs[keep:]
        self.terms.extend(terms)
        self.locs.extend([loc] * len(terms))
        last = first + len(terms) - 1
        seg.max_index = max(seg.max_index, last)

    def apply_compact(self, upto: int, term: int) -> None:
        drop = upto - self.compact_index
        if drop <= 0:
            return
        del self.terms[:drop]
        del self.locs[:drop]
        self.compact_index, self.compact_term = upto, term

    def apply_snapshot(self, meta: SnapshotMeta, keep: bool, compact: bool) -> None:
        self.snap = meta
        if not keep:
            self.terms = array("q")
            self.locs = array("q")
            self.compact_index, self.compact_term = meta.index, meta.term
        elif compact:
            self.apply_compact(meta.index, meta.term)
