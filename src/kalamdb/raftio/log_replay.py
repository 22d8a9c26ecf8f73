"""Recovery: rebuilding a Raft log's `LogState` from its segment files at open, with the entries
decoded on the way (the node's first `load()` takes them without reading the files again).

Replay stops with `LogCorruptError` (file and offset named) on a bad record that is followed by any
intact record; a bad record at the very end of the newest segment is a torn, never-synced write, and
is cut off. Missing or non-consecutive segments are a `StorageError`: the log lacks entries it never
compacted. What the records mean is described in `storage.py` and docs/design/storage.md."""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import dataclass

import msgpack

from kalamdb.raft.types import Entry, HardState, SnapshotMeta
from kalamdb.raftio import wal
from kalamdb.raftio.log_format import (
    KINDS,
    R_CHECKPOINT,
    R_COMPACT,
    R_ENTRIES,
    R_HARD_STATE,
    R_SNAPSHOT,
    SEGMENT_NAME,
    LogCorruptError,
    Segment,
    StorageError,
    location,
    segment_name,
)
from kalamdb.raftio.log_state import LogState

log = logging.getLogger("kalamdb.raftio.storage")


@dataclass(slots=True)
class Replayed:
    """What replay found besides the state: the decoded live entries (a slot is None only for an
    entry no segment holds, which replay refuses), and where the newest segment's checkpoint ends
    (`start`) and its intact records end (`end`, where the next write goes)."""

    entries: list[Entry | None]
    start: int
    end: int


def decoded(replayed: list[Entry | None]) -> list[Entry]:
    """Entries decoded at open, as a new list. A slot stays None only for an entry no segment holds,
    and replay refuses such a log (it lacks entries), so this never raises after a replay."""
    out = [e for e in replayed if e is not None]
    if len(out) != len(replayed):
        raise StorageError("Raft log replay left an entry undecoded")
    return out


def replay(directory: str, segment_bytes: int, state: LogState) -> Replayed | None:
    """Replay the segments in `directory` into the fresh `state`; None if there are none yet (a new
    log). Deletes segment creations that never finished and cuts a torn tail off the newest
    segment."""
    seqs = []
    for name in os.listdir(directory):
        if name.endswith(".log.tmp"):  # a segment creation that never finished
            os.unlink(os.path.join(directory, name))
            continue
        m = SEGMENT_NAME.match(name)
        if m:
            seqs.append(int(m.group(1)))
    seqs.sort()
    if not seqs:
        return None
    run = _Replay(directory, segment_bytes, state)
    end = start = 0
    for i, seq in enumerate(seqs):
        if i and seq != seqs[i - 1] + 1:
            raise StorageError(f"Raft log segments {segment_name(seqs[i - 1])} and "
                               f"{segment_name(seq)} are not consecutive: a segment is missing")
        start, end = run.segment(seq, first=(i == 0), last=(i == len(seqs) - 1))
    if -1 in state.locs:
        missing = [state.compact_index + 1 + k for k, loc in enumerate(state.locs) if loc == -1]
        raise StorageError(f"Raft log in {directory} lacks entries {missing[0]}..{missing[-1]} "
                           f"(their segment is gone but they were never compacted)")
    return Replayed(run.entries, start, end)


class _Replay:
    """One replay in progress: the state being rebuilt and the entries decoded so far."""

    def __init__(self, directory: str, segment_bytes: int, state: LogState):
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.state = state
        self.entries: list[Entry | None] = []

    def segment(self, seq: int, *, first: bool, last: bool) -> tuple[int, int]:
        """Replay one segment; returns where its checkpoint ends and where its records end (the next
        write goes there)."""
        path = os.path.join(self.directory, segment_name(seq))
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
        seg = Segment(seq, path)
        self.state.segments.append(seg)
        for offset, rtype, payload in records:
            try:
                self.record(seg, offset, rtype, payload, first and offset == 0)
            except LogCorruptError:
                raise
            except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
                raise LogCorruptError(path, offset, f"undecodable record of type {rtype}: {exc}") from None
        if bad is not None:
            log.warning("Raft log %s: discarding torn tail at offset %d (%s)", path, bad.offset, bad.reason)
            wal.cut_tail(path, bad.offset, self.segment_bytes)
        return wal.HEADER_SIZE + len(records[0][2]), end

    def record(self, seg: Segment, offset: int, rtype: int, payload: memoryview, initial: bool) -> None:
        st = self.state
        obj = msgpack.unpackb(payload)
        if rtype == R_ENTRIES:
            first, rows = obj
            if first <= st.compact_index or first > st.last_index + 1:
                raise LogCorruptError(seg.path, offset, f"entries from {first} do not continue the log "
                                      f"({st.compact_index + 1}..{st.last_index})")
            entries = [Entry(t, first + k, KINDS[kind], data) for k, (t, kind, data) in enumerate(rows)]
            st.apply_entries(first, [e.term for e in entries], location(seg.seq, offset), seg)
            del self.entries[first - st.compact_index - 1:]
            self.entries.extend(entries)
        elif rtype == R_HARD_STATE:
            st.hs = HardState.from_wire(obj)
        elif rtype == R_SNAPSHOT:
            meta_w, keep, compact = obj
            st.apply_snapshot(SnapshotMeta.from_wire(meta_w), bool(keep), bool(compact))
        elif rtype == R_COMPACT:
            upto, term = obj
            st.apply_compact(upto, term)
        elif rtype == R_CHECKPOINT:
            if offset != 0:
                raise LogCorruptError(seg.path, offset, "checkpoint record inside a segment")
            hs_w, snap_w, c_index, c_term, last_index, last_term = obj
            if initial:
                st.hs = HardState.from_wire(hs_w)
                st.snap = SnapshotMeta.from_wire(snap_w) if snap_w is not None else None
                st.compact_index, st.compact_term = c_index, c_term
                n = last_index - c_index
                st.terms = array("q", [-1]) * n
                if n:
                    st.terms[-1] = last_term
                st.locs = array("q", [-1]) * n
                self.entries = [None] * n
            elif (c_index, last_index, last_term) != (st.compact_index, st.last_index, st.last_term):
                raise LogCorruptError(seg.path, offset, f"checkpoint (compacted {c_index}, last {last_index}"
                                      f"@{last_term}) disagrees with the previous segments (compacted "
                                      f"{st.compact_index}, last {st.last_index}@{st.last_term})")
        else:
            raise LogCorruptError(seg.path, offset, f"unknown record type {rtype}")
        if rtype in (R_SNAPSHOT, R_COMPACT):
            del self.entries[: len(self.entries) - len(st.terms)]
