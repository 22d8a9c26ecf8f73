"""LogStorage on real files: round trips, conflict truncation, compaction, snapshots, hard state,
torn tails, mid-file corruption, failpoints and poisoning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kalamdb.raft.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from kalamdb.raftio import wal
from kalamdb.raftio.storage import (
    LogCorruptError,
    LogStorage,
    StorageError,
    StoragePoisonedError,
)
from kalamdb.raftio.wal import Failpoints


def ents(lo: int, hi: int, term: int, tag: bytes = b"") -> list[Entry]:
    """Entries lo..hi inclusive whose data names index, term and tag (so a mix-up is visible)."""
    return [Entry(term, i, EntryKind.NORMAL, b"%d/%d/%s" % (i, term, tag)) for i in range(lo, hi + 1)]


def segments(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".log"))


def reopen(store: LogStorage, **kw) -> LogStorage:
    store.close()
    return LogStorage.open(store.directory, **kw)


def test_entries_and_hard_state_round_trip(tmp_path):
    store = LogStorage.open(tmp_path)
    batch = ents(1, 50, 1) + [Entry(2, 51, EntryKind.NOOP), Entry(2, 52, EntryKind.CONFIG, b"\x93\x90\x90\x90")]
    store.append(batch)
    store.set_hard_state(HardState(term=2, vote=3, commit=40))
    store.sync()
    store = reopen(store)
    state = store.load()
    assert state.entries == batch
    assert state.hard_state == HardState(2, 3, 40)
    assert state.snapshot is None
    assert (store.first_index, store.last_index, store.last_term) == (1, 52, 2)
    # after load() hands over its copy, reads come from disk and must agree
    assert store.entries(10, 53) == batch[9:]
    assert store.entries(5, 5) == []
    store.close()


def test_fresh_directory_is_empty(tmp_path):
    with LogStorage.open(tmp_path / "new") as store:
        state = store.load()
        assert (state.entries, state.snapshot, state.hard_state) == ([], None, HardState())
        assert (store.first_index, store.last_index, store.last_term) == (1, 0, 0)


def test_conflicting_append_truncates_the_suffix_durably(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 10, 1))
    store.sync()
    store.append(ents(6, 7, 3, b"new"))  # leader of term 3 overwrites 6..10
    assert (store.last_index, store.last_term) == (7, 3)
    store.sync()
    store = reopen(store)
    assert store.load().entries == ents(1, 5, 1) + ents(6, 7, 3, b"new")
    store.append(ents(8, 9, 3, b"more"))
    store = reopen(store)
    assert store.load().entries == ents(1, 5, 1) + ents(6, 7, 3, b"new") + ents(8, 9, 3, b"more")
    store.close()


def test_truncation_in_an_older_segment_is_not_resurrected(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=256)
    for i in range(1, 41):
        store.append(ents(i, i, 1))
    store.sync()
    assert len(segments(tmp_path)) > 3
    store.append(ents(3, 4, 2, b"x"))  # truncate back into the first segment
    store.sync()
    store = reopen(store, segment_bytes=256)
    assert store.load().entries == ents(1, 2, 1) + ents(3, 4, 2, b"x")
    store.close()


def test_compaction_deletes_whole_segments_and_survives_reopen(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=512)
    for lo in range(1, 200, 10):
        store.append(ents(lo, lo + 9, 1))
    store.set_hard_state(HardState(1, 1, 200))
    store.sync()
    before = segments(tmp_path)
    assert len(before) >= 4
    store.save_snapshot_meta(SnapshotMeta(150, 1, Membership(frozenset({1, 2, 3}))))
    assert store.first_index == 151
    assert segments(tmp_path) == before  # deletion waits for the compaction to be durable
    store.sync()
    after = segments(tmp_path)
    assert len(after) < len(before) and after[-1] == before[-1]
    store = reopen(store, segment_bytes=512)
    state = store.load()
    assert state.snapshot == SnapshotMeta(150, 1, Membership(frozenset({1, 2, 3})))
    assert state.entries == ents(151, 200, 1)
    assert state.hard_state == HardState(1, 1, 200)
    assert (store.first_index, store.last_index) == (151, 200)
    with pytest.raises(IndexError):
        store.entries(150, 152)
    store.close()


def test_snapshot_keeps_a_trail_when_asked_and_compact_drops_it_later(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 30, 2))
    store.save_snapshot_meta(SnapshotMeta(20, 2), compact=False)
    assert store.first_index == 1
    store.compact(10)
    with pytest.raises(ValueError, match="covered by the snapshot"):
        store.compact(21)
    store = reopen(store)
    assert store.load().entries == ents(11, 30, 2)
    assert store.term(10) == 2 and store.first_index == 11
    store.close()


def test_installed_snapshot_discards_a_mismatching_log(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 10, 1))
    store.save_snapshot_meta(SnapshotMeta(8, 4))  # leader's term at 8 differs: the whole log goes
    assert (store.first_index, store.last_index, store.last_term) == (9, 8, 4)
    store.append(ents(9, 9, 4))
    store = reopen(store)
    assert store.load().entries == ents(9, 9, 4)
    store.save_snapshot_meta(SnapshotMeta(50, 5))  # beyond the log: discarded too
    store = reopen(store)
    assert (store.first_index, store.last_index, store.last_term) == (51, 50, 5)
    assert store.load().entries == []
    store.close()


def test_bad_calls_are_refused_with_clear_errors(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 5, 2))
    with pytest.raises(ValueError, match="must be within 1..6"):
        store.append(ents(8, 9, 2))
    with pytest.raises(ValueError, match="not contiguous"):
        store.append([Entry(2, 6), Entry(2, 8)])
    with pytest.raises(ValueError, match="below the previous"):
        store.append(ents(6, 6, 1))
    with pytest.raises(TypeError, match="bytes"):
        store.append([Entry(2, 6, EntryKind.NORMAL, "text")])  # type: ignore[arg-type]
    store.set_hard_state(HardState(5, 1, 0))
    with pytest.raises(ValueError, match="backwards"):
        store.set_hard_state(HardState(4, 1, 0))
    with pytest.raises(ValueError, match="covered by the snapshot"):
        store.compact(3)
    with pytest.raises(StorageError, match="already open"):
        LogStorage.open(tmp_path)
    assert store.load().entries == ents(1, 5, 2)  # nothing half-applied
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.append(ents(6, 6, 2))


# ---------------------------------------------------------------- torn tails and corruption


def _single_segment(tmp_path) -> str:
    (name,) = segments(tmp_path)
    return os.path.join(tmp_path, name)


def record_ends(path) -> list[int]:
    """Where each intact record of a segment ends (segments are preallocated: the file is longer)."""
    records, _ = wal.scan(Path(path).read_bytes())
    return [offset + wal.HEADER_SIZE + len(payload) for offset, _type, payload in records]


SMALL = 4096  # a small preallocation keeps byte-by-byte rewrites cheap


def test_torn_last_record_is_dropped_at_every_byte_offset(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=SMALL)
    store.append(ents(1, 20, 1))
    store.set_hard_state(HardState(1, 1, 20))
    store.sync()
    path = _single_segment(tmp_path)
    synced_end = record_ends(path)[-1]
    store.append(ents(21, 23, 1, b"tail"))
    store.close()
    full = Path(path).read_bytes()
    tail_end = record_ends(path)[-1]
    assert tail_end > synced_end + wal.HEADER_SIZE and len(full) == SMALL
    for cut in range(synced_end, tail_end):
        # a file cut short (crash while growing it) or a preallocated one whose tail went unwritten
        for torn in (full[:cut], full[:cut] + bytes(len(full) - cut)):
            Path(path).write_bytes(torn)
            with LogStorage.open(tmp_path, segment_bytes=SMALL) as again:
                state = again.load()
                assert state.entries == ents(1, 20, 1), f"cut at {cut}"
                assert state.hard_state == HardState(1, 1, 20)
                again.append(ents(21, 21, 2, b"after"))  # must not land behind garbage
            with LogStorage.open(tmp_path, segment_bytes=SMALL) as again:
                assert again.load().entries == ents(1, 20, 1) + ents(21, 21, 2, b"after"), f"cut at {cut}"
    Path(path).write_bytes(full)
    with LogStorage.open(tmp_path, segment_bytes=SMALL) as again:
        assert again.load().entries == ents(1, 20, 1) + ents(21, 23, 1, b"tail")


def test_damaged_last_record_is_a_torn_tail(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 5, 1))
    store.sync()
    store.append(ents(6, 6, 1))
    store.close()
    path = _single_segment(tmp_path)
    data = bytearray(Path(path).read_bytes())
    data[record_ends(path)[-1] - 1] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    with LogStorage.open(tmp_path) as again:
        assert again.load().entries == ents(1, 5, 1)


def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=SMALL)
    store.append(ents(1, 5, 1))
    store.close()
    path = _single_segment(tmp_path)
    data = bytearray(Path(path).read_bytes())
    data[record_ends(path)[-1] + 100] = 0x5A  # a stray byte in the preallocated zeros
    Path(path).write_bytes(bytes(data))
    with LogStorage.open(tmp_path, segment_bytes=SMALL) as again:
        assert again.load().entries == ents(1, 5, 1)
    assert wal.zeros_from(Path(path).read_bytes(), record_ends(path)[-1])


@pytest.mark.parametrize("where", ["payload", "length", "magic"])
def test_damage_in_the_middle_stops_with_file_and_offset(tmp_path, where):
    store = LogStorage.open(tmp_path, segment_bytes=SMALL)
    for i in range(1, 6):
        store.append(ents(i, i, 1))
    store.close()
    path = _single_segment(tmp_path)
    data = bytearray(Path(path).read_bytes())
    victim = record_ends(path)[2]  # fourth record (the checkpoint is the first), two follow it
    pos = {"payload": victim + wal.HEADER_SIZE + 2, "length": victim + 5, "magic": victim}[where]
    data[pos] ^= 0x40
    Path(path).write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as info:
        LogStorage.open(tmp_path, segment_bytes=SMALL)
    assert info.value.path == path and info.value.offset == victim
    assert path in str(info.value) and f"offset {victim}" in str(info.value)
    assert Path(path).read_bytes() == bytes(data)  # nothing was cut off or rewritten


def test_damage_at_the_end_of_a_sealed_segment_is_corruption(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=200)
    for i in range(1, 30):
        store.append(ents(i, i, 1))
    store.close()
    first = os.path.join(tmp_path, segments(tmp_path)[0])
    data = bytearray(Path(first).read_bytes())
    data[record_ends(first)[-1] - 1] ^= 1  # last record of a segment that was synced when sealed
    Path(first).write_bytes(bytes(data))
    with pytest.raises(LogCorruptError, match="later segments exist"):
        LogStorage.open(tmp_path, segment_bytes=200)


def test_a_missing_middle_segment_is_refused(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=200)
    for i in range(1, 30):
        store.append(ents(i, i, 1))
    store.close()
    os.unlink(os.path.join(tmp_path, segments(tmp_path)[1]))
    with pytest.raises(StorageError, match="not consecutive"):
        LogStorage.open(tmp_path, segment_bytes=200)


def test_a_missing_oldest_segment_with_live_entries_is_refused(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=200)
    for i in range(1, 30):
        store.append(ents(i, i, 1))
    store.close()
    os.unlink(os.path.join(tmp_path, segments(tmp_path)[0]))
    with pytest.raises(StorageError, match="lacks entries 1\\.\\."):
        LogStorage.open(tmp_path, segment_bytes=200)


def test_leftover_temp_segment_from_a_crashed_rotation_is_ignored(tmp_path):
    store = LogStorage.open(tmp_path)
    store.append(ents(1, 3, 1))
    store.close()
    (tmp_path / "wal-0000000000000002.log.tmp").write_bytes(b"half a checkpoint")
    with LogStorage.open(tmp_path) as again:
        assert again.load().entries == ents(1, 3, 1)
    assert not (tmp_path / "wal-0000000000000002.log.tmp").exists()


# ---------------------------------------------------------------- failpoints and poisoning


def test_failed_fsync_poisons_the_storage(tmp_path):
    fp = Failpoints()
    store = LogStorage.open(tmp_path, failpoints=fp)
    store.append(ents(1, 3, 1))
    store.sync()
    store.append(ents(4, 4, 1))
    fp.set("log.fsync", "1*eio")
    with pytest.raises(OSError) as info:
        store.sync()
    assert info.value.errno == 5
    assert store.poisoned
    for call in (lambda: store.sync(), lambda: store.append(ents(5, 5, 1)), lambda: store.load()):
        with pytest.raises(StoragePoisonedError, match="restart"):
            call()
    store.close()
    with LogStorage.open(tmp_path) as again:  # a restart reads what is on disk
        assert again.load().entries[:3] == ents(1, 3, 1)


def test_enospc_on_append_leaves_the_log_usable(tmp_path):
    fp = Failpoints({"log.append": "1*enospc"})
    store = LogStorage.open(tmp_path, failpoints=fp)
    with pytest.raises(OSError) as info:
        store.append(ents(1, 2, 1))
    assert info.value.errno == 28
    assert not store.poisoned and store.last_index == 0
    store.append(ents(1, 2, 1))
    store = reopen(store)
    assert store.load().entries == ents(1, 2, 1)
    store.close()


def test_snapshot_failpoint_refuses_the_snapshot_record(tmp_path):
    store = LogStorage.open(tmp_path, failpoints=Failpoints({"log.snapshot": "eio"}))
    store.append(ents(1, 4, 1))
    with pytest.raises(OSError):
        store.save_snapshot_meta(SnapshotMeta(2, 1))
    assert store.snapshot is None and store.first_index == 1
    store.failpoints.clear()
    store.save_snapshot_meta(SnapshotMeta(2, 1))
    assert store.first_index == 3
    store.close()


def test_failpoint_specs_are_validated_and_counted():
    fp = Failpoints.from_string("log.fsync=2*eio; log.append=delay(1)")
    assert fp.active() == {"log.fsync": "2*eio", "log.append": "delay(1)"}
    for _ in range(2):
        with pytest.raises(OSError):
            fp.hit("log.fsync")
    assert fp.hit("log.fsync") is None and "log.fsync" not in fp.active()
    assert fp.hit("log.append") is None  # a delay goes on
    fp.set("log.append", "off")
    assert fp.active() == {}
    for bad in [("log.nope", "eio"), ("log.fsync", "explode"), ("log.fsync", "delay"),
                ("log.fsync", "torn"), ("log.fsync", "150%eio")]:
        with pytest.raises(ValueError):
            fp.set(*bad)
    with pytest.raises(ValueError, match="name=action"):
        Failpoints.from_string("log.fsync")


def test_probabilistic_failpoint_is_reproducible_from_its_seed():
    def pattern(seed):
        fp = Failpoints({"log.append": "50%eio"}, seed=seed)
        out = []
        for _ in range(64):
            try:
                fp.hit("log.append")
                out.append(0)
            except OSError:
                out.append(1)
        return out

    assert pattern(7) == pattern(7)
    assert 0 < sum(pattern(7)) < 64


def test_entries_covered_by_the_snapshot_cannot_be_replaced(tmp_path):
    with LogStorage.open(tmp_path) as store:
        store.append(ents(1, 10, 1))
        store.save_snapshot_meta(SnapshotMeta(6, 1), compact=False)  # entries 1..6 stay as a trail
        with pytest.raises(ValueError, match="committed"):
            store.append(ents(6, 7, 2))
        store.append(ents(7, 8, 2))
        assert store.entries(1, 9) == ents(1, 6, 1) + ents(7, 8, 2)


def test_an_intact_but_undecodable_record_is_reported_not_crashed_on(tmp_path):
    store = LogStorage.open(tmp_path, segment_bytes=SMALL)
    store.append(ents(1, 2, 1))
    store.close()
    path = _single_segment(tmp_path)
    end = record_ends(path)[-1]
    with open(path, "r+b") as f:  # a well-framed record whose payload is not a valid entries batch
        f.seek(end)
        f.write(wal.frame(2, b"\x92\x03\x91\x93\x01\x09\xc4\x00"))  # kind 9 does not exist
    with pytest.raises(LogCorruptError, match="undecodable record") as info:
        LogStorage.open(tmp_path, segment_bytes=SMALL)
    assert info.value.offset == end


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    big = [Entry(1, 2, EntryKind.NORMAL, bytes(range(256)) * 8)]
    with LogStorage.open(tmp_path, segment_bytes=256) as store:
        store.append(ents(1, 1, 1))
        store.append(big)
        store.append(ents(3, 4, 1))
        assert store.entries(1, 5) == ents(1, 1, 1) + big + ents(3, 4, 1)
    assert len(segments(tmp_path)) == 3
    with LogStorage.open(tmp_path, segment_bytes=256) as store:
        assert store.load().entries == ents(1, 1, 1) + big + ents(3, 4, 1)


def test_entries_and_their_hard_state_go_out_in_one_write(tmp_path, monkeypatch):
    writes: list[int] = []
    real = wal.write_all
    monkeypatch.setattr(wal, "write_all", lambda fd, data, offset: (writes.append(len(data)), real(fd, data, offset)))
    store = LogStorage.open(tmp_path)
    writes.clear()  # opening writes the segment's header
    store.append(ents(1, 3, 1), HardState(1, 1, 2))
    assert len(writes) == 1
    store.append(ents(4, 4, 1), HardState(1, 1, 2))  # the same hard state: no second record for it
    store.append([], HardState(1, 1, 4))  # a hard state alone is a write of its own
    assert len(writes) == 3 and writes[1] < writes[0]
    with pytest.raises(ValueError, match="backwards"):
        store.append(ents(5, 5, 1), HardState(0, 0, 4))
    assert len(writes) == 3  # refused before anything was written
    store.sync()
    store = reopen(store)
    state = store.load()
    assert state.entries == ents(1, 4, 1) and state.hard_state == HardState(1, 1, 4)
    store.close()
