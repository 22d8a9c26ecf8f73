"""kill -9 at random moments loses nothing sync() returned for: a real writer process (crash_writer.py)
prints a claim after each sync; we SIGKILL it after a seeded random number of claims, reopen the
log, and check every claim from every life against what is on disk."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kalamdb.raftio.storage import LogStorage
from kalamdb.raftio.wal import CRASH_EXIT_CODE

WRITER = Path(__file__).with_name("crash_writer.py")
SRC = Path(__file__).resolve().parents[2] / "src"
ITERATIONS = 30
SEGMENT_BYTES = 32 << 10  # small, so rotation and segment deletion happen under the kills
# every 5th life ends by a failpoint instead of SIGKILL: a half-written record (what a power cut can
# leave), or an exit just before / just after an fsync
FAILPOINT_LIVES = ["log.append=5%torn", "log.fsync=5%crash", "log.fsync.after=5%crash"]


@dataclass(frozen=True)
class Claim:
    last_index: int
    last_term: int
    hs_term: int
    hs_commit: int
    snap_index: int


def expected_data(index: int, term: int) -> bytes:
    head = b"%d:%d:" % (index, term)
    return head + bytes((index * 31 + term * 7 + k) & 0xFF for k in range(8 + (index * 13 + term) % 64))


def run_one_life(directory: Path, seed: int, kill_after: int, failpoints: str) -> tuple[list[Claim], int]:
    """Start the writer, read `kill_after` claims (or until it dies on its own), SIGKILL it, and
    return every claim it managed to print plus its exit status."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, str(WRITER), str(directory), str(seed), "--segment-bytes", str(SEGMENT_BYTES)]
    if failpoints:
        cmd += ["--failpoints", failpoints]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    claims: list[Claim] = []
    buf = b""
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        eof = False
        while len(claims) < kill_after and not eof:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                pytest.fail(f"writer printed only {len(claims)} claims in 20 s")
            chunk = os.read(proc.stdout.fileno(), 65536)
            eof = not chunk
            buf += chunk
            *lines, buf = buf.split(b"\n")
            claims.extend(Claim(*map(int, line.split()[1:])) for line in lines)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sel.close()
    # lines already in the pipe were printed after a completed sync: they are claims too
    *lines, _unfinished = (buf + rest).split(b"\n")
    claims.extend(Claim(*map(int, line.split()[1:])) for line in lines)
    if proc.returncode not in (-signal.SIGKILL, CRASH_EXIT_CODE):
        pytest.fail(f"writer died with status {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return claims, proc.returncode


def check_log(directory: Path, claims: list[Claim]) -> None:
    """Every claim from every life holds on disk, and the log is contiguous and intact."""
    with LogStorage.open(directory, segment_bytes=SEGMENT_BYTES) as store:
        state = store.load()
        snap = state.snapshot.index if state.snapshot else 0
        first = snap + 1
        assert store.first_index == first
        indexes = [e.index for e in state.entries]
        assert indexes == list(range(first, first + len(indexes))), "log not contiguous"
        prev_term = store.term(first - 1) if first > 1 else 0
        for e in state.entries:
            assert e.data == expected_data(e.index, e.term), f"entry {e.index} damaged or mixed up"
            assert e.term >= prev_term, f"term goes backwards at {e.index}"
            prev_term = e.term
        for c in claims:
            assert c.last_index <= store.last_index, f"synced index {c.last_index} lost ({store.last_index})"
            assert c.snap_index <= snap, f"synced snapshot {c.snap_index} lost (have {snap})"
            if c.last_index > snap:
                assert store.term(c.last_index) == c.last_term, f"synced entry {c.last_index} replaced"
            assert state.hard_state.term >= c.hs_term and state.hard_state.commit >= c.hs_commit


def test_sigkill_at_random_moments_loses_no_synced_entry(tmp_path):
    seed = int(os.environ.get("KALAMDB_SEED", random.randrange(1 << 30)))
    print(f"crash test seed={seed} (replay with KALAMDB_SEED={seed})")
    rng = random.Random(seed)
    directory = tmp_path / "log"
    all_claims: list[Claim] = []
    crashed_by_failpoint = 0
    try:
        for life in range(ITERATIONS):
            failpoints = FAILPOINT_LIVES[(life // 5) % len(FAILPOINT_LIVES)] if life % 5 == 4 else ""
            kill_after = 1 << 30 if failpoints else rng.randint(1, 120)
            claims, status = run_one_life(directory, rng.randrange(1 << 30), kill_after, failpoints)
            crashed_by_failpoint += status == CRASH_EXIT_CODE
            all_claims += claims
            check_log(directory, all_claims)
    except BaseException:
        print(f"FAILED with seed={seed} in life {life}")
        raise
    segments = sorted(p.name for p in directory.glob("wal-*.log"))
    print(f"{len(all_claims)} claims, {crashed_by_failpoint} lives ended by a failpoint, "
          f"segments now {segments[0]}..{segments[-1]}")
    assert len(all_claims) > ITERATIONS, "the writer hardly ever got to sync"
    assert crashed_by_failpoint == ITERATIONS // 5, "a failpoint life did not end by its failpoint"
    assert max(c.snap_index for c in all_claims) > 0, "no snapshot was ever taken"
    assert int(segments[0][4:20]) > 1, "no segment was ever deleted by compaction"
