"""Crash-test writer: a real process that appends, overwrites, snapshots and syncs a LogStorage
forever, printing a claim line only AFTER sync() returned, so a SIGKILL at any instant tests
exactly the promise "nothing sync() returned for is lost".

Usage: python crash_writer.py DIR SEED [--segment-bytes N] [--failpoints SPEC]

Each claim line (flushed): `synced LAST_INDEX LAST_TERM HS_TERM HS_COMMIT SNAP_INDEX`.
Entry data is a pure function of (index, term) (see `expected_data`), so the checker can tell an
intact entry from a stale or mixed-up one. Synced entries are never overwritten: a conflicting append
only ever replaces entries written since the last claim, like a Raft follower whose unacknowledged
suffix is replaced by a new leader.
"""

from __future__ import annotations

import argparse
import random
import sys

from kalamdb.raft.types import Entry, EntryKind, HardState, SnapshotMeta
from kalamdb.raftio.storage import LogStorage
from kalamdb.raftio.wal import Failpoints


def expected_data(index: int, term: int) -> bytes:
    """Deterministic payload of 8..71 bytes naming its index and term."""
    head = b"%d:%d:" % (index, term)
    return head + bytes((index * 31 + term * 7 + k) & 0xFF for k in range(8 + (index * 13 + term) % 64))


def make(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, expected_data(i, term)) for i in range(lo, hi + 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("seed", type=int)
    ap.add_argument("--segment-bytes", type=int, default=64 << 10)
    ap.add_argument("--failpoints", default="")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    store = LogStorage.open(args.directory, segment_bytes=args.segment_bytes,
                            failpoints=Failpoints.from_string(args.failpoints, seed=args.seed))
    store.load()
    # a new "leader term" per life; everything found on disk counts as claimed (never overwritten)
    term = max(store.hard_state.term, store.last_term) + 1
    claimed = store.last_index
    commit = store.hard_state.commit
    out = sys.stdout
    while True:
        lo = store.last_index + 1
        store.append(make(lo, lo + rng.randint(0, 63), term))
        if rng.random() < 0.2 and store.last_index > claimed:
            # a new leader replaces part of the unclaimed suffix
            term += 1
            at = rng.randint(claimed + 1, store.last_index)
            store.append(make(at, at + rng.randint(0, 20), term))
        if rng.random() < 0.05 and claimed > store.first_index + 50:
            snap_at = rng.randint(store.first_index, claimed - 10)
            store.save_snapshot_meta(SnapshotMeta(snap_at, store.term(snap_at)))
        store.set_hard_state(HardState(term, 1, commit))
        store.sync()
        claimed = store.last_index
        commit = claimed
        snap = store.snapshot.index if store.snapshot else 0
        out.write(f"synced {store.last_index} {store.last_term} {term} {store.hard_state.commit} {snap}\n")
        out.flush()


if __name__ == "__main__":
    main()
