"""The in-memory Raft log: a list of entries after a snapshot offset, plus what is not yet durable.

Storage keeps the durable copy; the core keeps this one so every lookup is a list index. Entries at
or above `unstable_from` were appended (or rewritten) since the last Ready and must be persisted
before anyone is told about them.
"""

from __future__ import annotations

from kalamdb.raft.types import Entry


class RaftLog:
    __slots__ = ("entries", "snap_index", "snap_term", "unstable_from")

    def __init__(self, snap_index: int = 0, snap_term: int = 0, entries: list[Entry] | None = None):
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entries: list[Entry] = list(entries or ())
        for i, e in enumerate(self.entries):
            if e.index != snap_index + 1 + i:
                raise ValueError(f"log not contiguous at {e.index} (expected {snap_index + 1 + i})")
        self.unstable_from = self.last_index + 1

    @property
    def first_index(self) -> int:
        return self.snap_index + 1

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """Term of the entry at `index`; None when compacted away or beyond the end."""
        off = index - self.snap_index
        if off == 0:
            return self.snap_term
        if 0 < off <= len(self.entries):
            return self.entries[off - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): is a log ending at (last_index, last_term) at least ours?"""
        lt = self.last_term
        return last_term > lt or (last_term == lt and last_index >= self.last_index)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index <= hi (caller guarantees lo > snap_index)."""
        base = self.snap_index + 1
        return self.entries[lo - base: hi - base + 1]

    def slice_limited(self, lo: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries from lo, at most max_entries and about max_bytes of data (always >= 1 entry)."""
        base = self.snap_index + 1
        out = self.entries[lo - base: lo - base + max_entries]
        if len(out) > 1:
            size = 0
            for i, e in enumerate(out):
                size += len(e.data) + 24
                if size > max_bytes and i > 0:
                    return out[:i]
        return out

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Put `entries` at their indexes, dropping whatever was at or after the first of them."""
        first = entries[0].index
        if first <= self.snap_index:
            raise ValueError(f"cannot overwrite compacted index {first} (snapshot {self.snap_index})")
        if first > self.last_index + 1:
            raise ValueError(f"gap: appending {first} after last index {self.last_index}")
        del self.entries[first - self.snap_index - 1:]
        self.entries.extend(entries)
        self.unstable_from = min(self.unstable_from, first)

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with our log; 0 if all already match."""
        for e in entries:
            t = self.term(e.index)
            if t is None:
                if e.index <= self.snap_index:
                    continue  # already covered by our snapshot, so committed and matching
                return e.index
            if t != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= term (fast backtracking hint, etcd-style)."""
        index = min(index, self.last_index)
        while index > self.snap_index:
            t = self.entries[index - self.snap_index - 1].term
            if t <= term:
                return index
            index -= 1
        return index

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to and including `index` (covered by a snapshot)."""
        if index <= self.snap_index:
            return
        if index > self.last_index:
            self.entries = []
        else:
            del self.entries[: index - self.snap_index]
        self.snap_index = index
        self.snap_term = term
        if self.unstable_from <= index:
            self.unstable_from = index + 1

    def reset(self, index: int, term: int) -> None:
        """Throw the whole log away and start after a snapshot at (index, term)."""
        self.entries = []
        self.snap_index = index
        self.snap_term = term
        self.unstable_from = index + 1

    def unstable(self) -> list[Entry]:
        base = self.snap_index + 1
        return self.entries[self.unstable_from - base:]

    def stable_to(self, index: int, term: int) -> None:
        """Storage persisted entries up to (index, term); ignore if that entry was since replaced."""
        if index >= self.unstable_from and self.term(index) == term:
            self.unstable_from = index + 1
