"""Durable Raft log: entries, hard state and snapshot metadata in one append-only stream of segment
files, so that a single fdatasync per `sync()` makes everything written since the last one durable
(group commit), and `kill -9` at any instant loses nothing `sync()` returned for.

Everything is a record in the stream (see `wal.py` for framing):

* CHECKPOINT  first record of every segment: the whole non-entry state plus the log bounds at the
              moment the segment was opened, so older segments can be deleted once their entries are
              compacted without losing hard state or snapshot metadata.
* ENTRIES     one append batch `[first_index, [[term, kind, data], ...]]`. A batch whose first index is
              at or below the last index replaces the suffix; replay does the same, so a synced
              truncation can never be resurrected, and the truncation costs no extra write.
* HARD_STATE  `[term, vote, commit]`.
* SNAPSHOT    `[meta, keep_log, compact]`: the log either matches the snapshot (keep what follows it)
              or is discarded, as in the Raft paper's InstallSnapshot; the decision is recorded so
              replay never has to re-derive it.
* COMPACT     `[upto_index, upto_term]`: entries up to there are gone; whole segments holding only
              such entries are deleted after the next sync.

Replay stops with `LogCorruptError` (file and offset named) on a bad record that is followed by any
intact record; a bad record at the very end of the newest segment is a torn, never-synced write, and
is cut off. The storage is single-threaded by design: the driver calls it from one thread.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from array import array
from dataclasses import dataclass
from typing import Self

import msgpack

from kalamdb.raft.types import Entry, EntryKind, HardState, PersistentState, SnapshotMeta
from kalamdb.raftio import wal
from kalamdb.raftio.wal import Failpoints

__all__ = [
    "SEGMENT_BYTES",
    "Failpoints",
    "LogCorruptError",
    "LogStorage",
    "StorageError",
    "StoragePoisonedError",
]

log = logging.getLogger("kalamdb.raftio.storage")

SEGMENT_BYTES = 64 << 20

R_CHECKPOINT = 1
R_ENTRIES = 2
R_HARD_STATE = 3
R_SNAPSHOT = 4
R_COMPACT = 5

_SEGMENT_NAME = re.compile(r"^wal-(\d{16})\.log$")
_LOC_SHIFT = 40  # a location packs (segment seq, record offset) into one int64
_KINDS = tuple(EntryKind)
_packb = msgpack.packb


def _segment_name(seq: int) -> str:
    return f"wal-{seq:016d}.log"


def _decoded(replayed: list[Entry | None]) -> list[Entry]:
    """Entries decoded at open, as a new list. A slot stays None only for an entry no segment holds,
    and _replay refuses such a log (it lacks entries), so this never raises after a replay."""
    out = [e for e in replayed if e is not None]
    if len(out) != len(replayed):
        raise StorageError("Raft log replay left an entry undecoded")
    return out


class StorageError(RuntimeError):
    """The log cannot be used as asked; the node must stop rather than guess. Not an HTTP error:
    nothing a client sent caused it, and the driver fail-stops on it (docs/design/raft.md)."""


class LogCorruptError(StorageError):
    """A damaged record with intact data after it: real loss, never silently skipped."""

    def __init__(self, path: str, offset: int, reason: str):
        super().__init__(f"Raft log corrupt in {path} at byte offset {offset}: {reason}. The node "
                         f"stops instead of discarding data; restore this node from a peer "
                         f"(wipe its data directory and rejoin) or repair the file.")
        self.path = path
        self.offset = offset


class StoragePoisonedError(StorageError):
    """A write or fsync failed in a way that leaves the on-disk state unknown; only a restart
    (which re-reads what really is on disk) may continue."""


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    max_index: int = 0  # highest entry index ever written here (0 = none)


class LogStorage:
    """The durable Raft log of one node. Use `LogStorage.open(directory)`."""

    def __init__(self, directory: str, failpoints: Failpoints | None, segment_bytes: int):
        self.directory = directory
        self.failpoints = failpoints if failpoints is not None else Failpoints()
        self._segment_bytes = segment_bytes
        self._hs = HardState()
        self._snap: SnapshotMeta | None = None
        self._compact_index = 0
        self._compact_term = 0
        # one slot per live index compact_index+1 .. last_index
        self._terms = array("q")
        self._locs = array("q")
        self._segments: list[_Segment] = []
        self._fd = -1
        self._size = 0  # where the next record goes in the active segment
        self._seg_start = 0  # where the active segment's first record after its checkpoint went
        self._read_fds: dict[int, int] = {}
        self._dirty = False
        self._durable_compact = 0
        self._poisoned: str | None = None
        self._closed = False
        self._lock_fd = -1
        self._replayed: list[Entry | None] | None = None  # entries decoded at open, until load()

    # ------------------------------------------------------------------ open / replay

    @classmethod
    def open(cls, directory: str | os.PathLike, *, failpoints: Failpoints | None = None,
             segment_bytes: int = SEGMENT_BYTES) -> LogStorage:
        """Open (creating if needed) the log in `directory` and replay it. Raises LogCorruptError on
        damage that is not a torn tail, StorageError if another process holds the directory."""
        if segment_bytes < 64:
            raise ValueError("segment_bytes must be at least 64")
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self = cls(directory, failpoints, segment_bytes)
        self._lock()
        try:
            self._replay()
        except BaseException:
            self._release()
            raise
        return self

    def _lock(self) -> None:
        fd = os.open(os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(f"Raft log directory {self.directory} is already open "
                               f"(another process or another LogStorage holds its lock)") from None
        self._lock_fd = fd

    def _replay(self) -> None:
        seqs = []
        for name in os.listdir(self.directory):
            if name.endswith(".log.tmp"):  # a segment creation that never finished
                os.unlink(os.path.join(self.directory, name))
                continue
            m = _SEGMENT_NAME.match(name)
            if m:
                seqs.append(int(m.group(1)))
        seqs.sort()
        if not seqs:
            self._replayed = []
            self._start_segment(1)
            return
        self._replayed = []
        end = start = 0
        for i, seq in enumerate(seqs):
            if i and seq != seqs[i - 1] + 1:
                raise StorageError(f"Raft log segments {_segment_name(seqs[i - 1])} and "
                                   f"{_segment_name(seq)} are not consecutive: a segment is missing")
            start, end = self._replay_segment(seq, first=(i == 0), last=(i == len(seqs) - 1))
        if -1 in self._locs:
            missing = [self._compact_index + 1 + k for k, loc in enumerate(self._locs) if loc == -1]
            raise StorageError(f"Raft log in {self.directory} lacks entries {missing[0]}..{missing[-1]} "
                               f"(their segment is gone but they were never compacted)")
        seg = self._segments[-1]
        self._fd = os.open(seg.path, os.O_RDWR)
        self._size, self._seg_start = end, start
        # what a killed process wrote but never synced is still in the page cache and was just
        # loaded: make it durable now, or the core could acknowledge entries a power cut then erases
        os.fdatasync(self._fd)
        self._durable_compact = self._compact_index

    def _replay_segment(self, seq: int, *, first: bool, last: bool) -> tuple[int, int]:
        """Replay one segment; returns where its checkpoint ends and where its records end (the next
        write goes there)."""
        path = os.path.join(self.directory, _segment_name(seq))
        with open(path, "rb") as f:
            data = f.read()
        records, bad = wal.scan(data)
        end = bad.offset if bad is not None else len(data)
        if bad is not None and wal.zeros_from(data, bad.offset):
            bad = None  # the unused, preallocated rest of the segment
        if bad is not None:
            later = wal.valid_record_after(data, bad)
            if not last or later is not None:
                where = (f"an intact record follows at offset {later}" if later is not None
                         else "later segments exist")
                raise LogCorruptError(path, bad.offset, f"{bad.reason}, and {where}")
        if not records or records[0][1] != R_CHECKPOINT:
            raise LogCorruptError(path, 0, "segment does not start with a checkpoint record")
        seg = _Segment(seq, path)
        self._segments.append(seg)
        for offset, rtype, payload in records:
            try:
                self._replay_record(seg, offset, rtype, payload, first and offset == 0)
            except LogCorruptError:
                raise
            except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
                raise LogCorruptError(path, offset, f"undecodable record of type {rtype}: {exc}") from None
        if bad is not None:
            log.warning("Raft log %s: discarding torn tail at offset %d (%s)", path, bad.offset, bad.reason)
            wal.cut_tail(path, bad.offset, self._segment_bytes)
        return wal.HEADER_SIZE + len(records[0][2]), end

    def _replay_record(self, seg: _Segment, offset: int, rtype: int, payload: memoryview,
                       initial: bool) -> None:
        obj = msgpack.unpackb(payload)
        if rtype == R_ENTRIES:
            first, rows = obj
            loc = (seg.seq << _LOC_SHIFT) | offset
            if first <= self._compact_index or first > self.last_index + 1:
                raise LogCorruptError(seg.path, offset, f"entries from {first} do not continue the log "
                                      f"({self._compact_index + 1}..{self.last_index})")
            entries = [Entry(t, first + k, _KINDS[kind], data) for k, (t, kind, data) in enumerate(rows)]
            self._apply_entries(first, [e.term for e in entries], loc, seg)
            replayed = self._replayed
            assert replayed is not None  # _replay made the list before the first record
            del replayed[first - self._compact_index - 1:]
            replayed.extend(entries)
        elif rtype == R_HARD_STATE:
            self._hs = HardState.from_wire(obj)
        elif rtype == R_SNAPSHOT:
            meta_w, keep, compact = obj
            self._apply_snapshot(SnapshotMeta.from_wire(meta_w), bool(keep), bool(compact))
        elif rtype == R_COMPACT:
            upto, term = obj
            self._apply_compact(upto, term)
        elif rtype == R_CHECKPOINT:
            if offset != 0:
                raise LogCorruptError(seg.path, offset, "checkpoint record inside a segment")
            hs_w, snap_w, c_index, c_term, last_index, last_term = obj
            if initial:
                self._hs = HardState.from_wire(hs_w)
                self._snap = SnapshotMeta.from_wire(snap_w) if snap_w is not None else None
                self._compact_index, self._compact_term = c_index, c_term
                n = last_index - c_index
                self._terms = array("q", [-1]) * n
                if n:
                    self._terms[-1] = last_term
                self._locs = array("q", [-1]) * n
                self._replayed = [None] * n
            elif (c_index, last_index, last_term) != (self._compact_index, self.last_index, self.last_term):
                raise LogCorruptError(seg.path, offset, f"checkpoint (compacted {c_index}, last {last_index}"
                                      f"@{last_term}) disagrees with the previous segments (compacted "
                                      f"{self._compact_index}, last {self.last_index}@{self.last_term})")
        else:
            raise LogCorruptError(seg.path, offset, f"unknown record type {rtype}")
        if self._replayed is not None and rtype in (R_SNAPSHOT, R_COMPACT):
            del self._replayed[: len(self._replayed) - len(self._terms)]

    # ------------------------------------------------------------------ state shared by replay and writes

    def _apply_entries(self, first: int, terms: list[int], loc: int, seg: _Segment) -> None:
        keep = first - self._compact_index - 1
        if keep < len(self._terms):
            del self._terms[keep:]
            del self._locs[keep:]
        self._terms.extend(terms)
        self._locs.extend([loc] * len(terms))
        last = first + len(terms) - 1
        seg.max_index = max(seg.max_index, last)

    def _apply_compact(self, upto: int, term: int) -> None:
        drop = upto - self._compact_index
        if drop <= 0:
            return
        del self._terms[:drop]
        del self._locs[:drop]
        self._compact_index, self._compact_term = upto, term

    def _apply_snapshot(self, meta: SnapshotMeta, keep: bool, compact: bool) -> None:
        self._snap = meta
        if not keep:
            self._terms = array("q")
            self._locs = array("q")
            self._compact_index, self._compact_term = meta.index, meta.term
        elif compact:
            self._apply_compact(meta.index, meta.term)

    # ------------------------------------------------------------------ properties

    @property
    def first_index(self) -> int:
        return self._compact_index + 1

    @property
    def last_index(self) -> int:
        return self._compact_index + len(self._terms)

    @property
    def last_term(self) -> int:
        return self._terms[-1] if self._terms else self._compact_term

    @property
    def hard_state(self) -> HardState:
        return self._hs

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._snap

    @property
    def poisoned(self) -> bool:
        return self._poisoned is not None

    def term(self, index: int) -> int:
        """Term of the entry at `index` (the compaction point's term for first_index - 1)."""
        if index == self._compact_index:
            return self._compact_term
        if not self._compact_index < index <= self.last_index:
            raise IndexError(f"no term for index {index}: the log holds "
                             f"{self._compact_index}..{self.last_index}")
        return self._terms[index - self._compact_index - 1]

    # ------------------------------------------------------------------ reads

    def load(self) -> PersistentState:
        """Everything that survived: hard state, snapshot metadata and the live entries."""
        self._check_usable()
        if self._replayed is not None:
            entries, self._replayed = _decoded(self._replayed), None  # the caller keeps its own copy
        else:
            entries = self.entries(self.first_index, self.last_index + 1)
        return PersistentState(self._hs, self._snap, entries)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (half-open, like etcd's Storage.Entries)."""
        self._check_usable()
        if not (self.first_index <= lo <= hi <= self.last_index + 1):
            raise IndexError(f"entries [{lo}, {hi}) outside the log [{self.first_index}, "
                             f"{self.last_index + 1})")
        if self._replayed is not None:
            base = self._compact_index + 1
            return _decoded(self._replayed[lo - base : hi - base])
        out: list[Entry] = []
        cur_loc, batch_first = -1, 0
        rows: list = []
        base = self._compact_index + 1
        for index in range(lo, hi):
            loc = self._locs[index - base]
            if loc != cur_loc:
                batch_first, rows = self._read_batch(loc)
                cur_loc = loc
            t, kind, data = rows[index - batch_first]
            out.append(Entry(t, index, _KINDS[kind], data))
        return out

    def _read_batch(self, loc: int) -> tuple[int, list]:
        seq, offset = loc >> _LOC_SHIFT, loc & ((1 << _LOC_SHIFT) - 1)
        fd = self._read_fds.get(seq)
        if fd is None:
            fd = self._read_fds[seq] = os.open(os.path.join(self.directory, _segment_name(seq)), os.O_RDONLY)
        head = os.pread(fd, wal.HEADER_SIZE, offset)
        length = int.from_bytes(head[4:8], "little") if len(head) == wal.HEADER_SIZE else 0
        data = head + os.pread(fd, length, offset + wal.HEADER_SIZE)
        parsed = wal.parse_at(data, 0)
        path = os.path.join(self.directory, _segment_name(seq))
        if isinstance(parsed, str):
            raise LogCorruptError(path, offset, f"record unreadable after it was written: {parsed}")
        rtype, payload, _ = parsed
        if rtype != R_ENTRIES:
            raise LogCorruptError(path, offset, f"expected an entries record, found type {rtype}")
        first, rows = msgpack.unpackb(payload)
        return first, rows

    # ------------------------------------------------------------------ writes

    def append(self, entries: list[Entry]) -> None:
        """Write a batch of contiguous entries with one write(). An index at or below the last index
        replaces the suffix from there (Raft conflict overwrite). Durable only after sync()."""
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        if not self._compact_index < first <= self.last_index + 1:
            raise ValueError(f"append at index {first}: must be within "
                             f"{self._compact_index + 1}..{self.last_index + 1} (compacted up to "
                             f"{self._compact_index})")
        if self._snap is not None and first <= self._snap.index:
            raise ValueError(f"append at index {first}: entries up to the snapshot at {self._snap.index} "
                             f"are committed and may not be replaced")
        prev_term = self.term(first - 1)
        rows = []
        terms = []
        expect = first
        for e in entries:
            if e.index != expect:
                raise ValueError(f"append batch not contiguous: index {e.index} where {expect} was due")
            if e.term < prev_term:
                raise ValueError(f"entry {e.index} has term {e.term} below the previous entry's {prev_term}")
            if not isinstance(e.data, bytes):
                raise TypeError(f"entry {e.index} data must be bytes, not {type(e.data).__name__}")
            rows.append([e.term, int(e.kind), e.data])
            terms.append(e.term)
            prev_term = e.term
            expect += 1
        record = wal.frame(R_ENTRIES, _packb([first, rows]))
        loc = self._write(record)
        self._replayed = None
        self._apply_entries(first, terms, loc, self._segments[-1])

    def set_hard_state(self, hs: HardState) -> None:
        """Record term/vote/commit (durable after sync(); a vote must not be answered before)."""
        self._check_usable()
        if hs == self._hs:
            return
        if hs.term < self._hs.term:
            raise ValueError(f"hard state term may not go backwards ({self._hs.term} -> {hs.term})")
        self._write(wal.frame(R_HARD_STATE, _packb(hs.to_wire())))
        self._hs = hs

    def save_snapshot_meta(self, meta: SnapshotMeta, *, compact: bool = True) -> None:
        """Record that a snapshot up to meta.index exists. If the log holds meta.index with meta.term
        the entries after it are kept (and, with `compact`, those up to it dropped); otherwise the
        whole log is discarded and the next append starts at meta.index + 1."""
        self._check_usable()
        if self._snap is not None and meta.index < self._snap.index:
            raise ValueError(f"snapshot at {meta.index} is older than the saved one at {self._snap.index}")
        if meta.index < self._compact_index:
            raise ValueError(f"snapshot at {meta.index} is below the compaction point {self._compact_index}")
        keep = meta.index <= self.last_index and self.term(meta.index) == meta.term
        action = self.failpoints.hit("log.snapshot")
        if action is not None:
            raise ValueError(f"failpoint action {action!r} does not apply to log.snapshot")
        self._write(wal.frame(R_SNAPSHOT, _packb([meta.to_wire(), keep, compact])))
        self._replayed = None
        self._apply_snapshot(meta, keep, compact)

    def compact(self, upto_index: int) -> None:
        """Drop entries <= upto_index (at most the snapshot index). Segments holding only dropped
        entries are deleted after the next sync() makes this compaction durable."""
        self._check_usable()
        if upto_index <= self._compact_index:
            return
        limit = self._snap.index if self._snap is not None else 0
        if upto_index > limit or upto_index > self.last_index:
            raise ValueError(f"cannot compact to {upto_index}: only entries covered by the snapshot "
                             f"(up to {limit}) and present (up to {self.last_index}) may be dropped")
        term = self.term(upto_index)
        self._write(wal.frame(R_COMPACT, _packb([upto_index, term])))
        self._replayed = None
        self._apply_compact(upto_index, term)

    def sync(self) -> None:
        """One fdatasync making everything written since the last sync durable (group commit).
        A failure poisons the storage: the page cache may have dropped the data, so only a restart
        may tell what is really on disk."""
        self._check_usable()
        if not self._dirty:
            return
        compact_index = self._compact_index
        self._fdatasync()
        self._dirty = False
        self._durable_compact = compact_index
        self._delete_compacted_segments()

    def close(self) -> None:
        """Sync (unless poisoned) and release files and the directory lock. Idempotent."""
        if self._closed:
            return
        try:
            if self._poisoned is None and self._fd >= 0:
                self.sync()
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        for fd in [self._fd, self._lock_fd, *self._read_fds.values()]:
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1
        self._read_fds.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ file plumbing

    def _check_usable(self) -> None:
        if self._poisoned is not None:
            raise StoragePoisonedError(f"Raft log {self.directory} refuses further use after "
                                       f"{self._poisoned}; restart the node to recover from disk")
        if self._closed:
            raise StorageError(f"Raft log {self.directory} is closed")

    def _poison(self, why: str) -> None:
        self._poisoned = why
        log.error("Raft log %s poisoned: %s", self.directory, why)

    def _write(self, record: bytes) -> int:
        """Append one record to the active segment with one write(); returns its location."""
        if self._size + len(record) > self._segment_bytes and self._size > self._seg_start:
            self._rotate()  # a record larger than a whole segment gets a segment of its own
        offset = self._size
        if self.failpoints.hit("log.append") == "torn":
            wal.write_all(self._fd, record[: max(1, len(record) // 2)], offset)
            os._exit(wal.CRASH_EXIT_CODE)
        try:
            wal.write_all(self._fd, record, offset)
        except OSError as exc:
            # cut any partial record off, so that a later append cannot strand garbage mid-file
            try:
                os.ftruncate(self._fd, offset)
            except OSError as exc2:
                self._poison(f"a failed write ({exc}) that could not be undone ({exc2})")
            raise
        self._size = offset + len(record)
        self._dirty = True
        return (self._segments[-1].seq << _LOC_SHIFT) | offset

    def _fdatasync(self) -> None:
        try:
            self.failpoints.hit("log.fsync")
            os.fdatasync(self._fd)
        except OSError as exc:
            self._poison(f"a failed fsync ({exc})")
            raise
        self.failpoints.hit("log.fsync.after")

    def _checkpoint_record(self) -> bytes:
        return wal.frame(R_CHECKPOINT, _packb([
            self._hs.to_wire(), self._snap.to_wire() if self._snap is not None else None,
            self._compact_index, self._compact_term, self.last_index, self.last_term]))

    def _start_segment(self, seq: int) -> None:
        checkpoint = self._checkpoint_record()
        fd = wal.create_file_durably(self.directory, _segment_name(seq), checkpoint, self._segment_bytes)
        self._segments.append(_Segment(seq, os.path.join(self.directory, _segment_name(seq))))
        self._fd = fd
        self._size = self._seg_start = len(checkpoint)

    def _rotate(self) -> None:
        """Seal the full segment (made durable now, it will never be written again) and start the
        next one with a checkpoint of the current state."""
        if self._dirty:
            self._fdatasync()
            self._dirty = False
            self._durable_compact = self._compact_index
        old = self._fd
        try:
            self._start_segment(self._segments[-1].seq + 1)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._poison(f"a failed segment creation ({exc})")
            raise
        os.close(old)
        self._delete_compacted_segments()

    def _delete_compacted_segments(self) -> None:
        """Delete the oldest sealed segments whose every entry is durably compacted; their other
        records are superseded by the checkpoint that opens the next segment."""
        removed = False
        while len(self._segments) > 1 and self._segments[0].max_index <= self._durable_compact:
            seg = self._segments.pop(0)
            fd = self._read_fds.pop(seg.seq, None)
            if fd is not None:
                os.close(fd)
            os.unlink(seg.path)
            removed = True
        if removed:
            wal.fsync_dir(self.directory)
