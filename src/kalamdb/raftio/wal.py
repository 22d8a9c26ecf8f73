"""The file layer under the Raft log: record framing with CRC, segment scanning, the few syscalls that
make data durable (write, fdatasync, directory fsync), and the failpoints that can break them.

Kept apart from `storage.py` so that the log's meaning (entries, truncation, compaction) never mixes
with how bytes reach the disk, and so that every durable syscall passes one place where faults are
injected.

Record layout (little endian), 12-byte header then payload:

    magic u16 | type u8 | pad u8 | length u32 | crc32 u32 | payload[length]

The CRC covers the first 8 header bytes and the payload, so a damaged length is caught too. The magic
lets a scan for "is there any valid record after this bad one?" skip most offsets cheaply.
"""

from __future__ import annotations

import errno
import os
import random
import re
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Self

MAGIC = 0x4B57  # b"WK" on disk
_MAGIC_BYTES = struct.pack("<H", MAGIC)
_HEAD = struct.Struct("<HBxI")  # magic, type, pad, length (the part the CRC covers)
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _CRC.size  # 12
MAX_RECORD = 256 << 20  # one append batch may not exceed this; a larger length field is garbage

# exit status of a process ended by a "crash"/"torn" failpoint (recognisable in test kits)
CRASH_EXIT_CODE = 86


def frame(rtype: int, payload: bytes) -> bytes:
    """One record: header (magic, type, length, CRC) + payload, ready for a single write()."""
    if len(payload) > MAX_RECORD:
        raise ValueError(f"log record of {len(payload)} bytes exceeds the {MAX_RECORD} byte limit")
    head = _HEAD.pack(MAGIC, rtype, len(payload))
    return b"".join((head, _CRC.pack(zlib.crc32(payload, zlib.crc32(head))), payload))


@dataclass(slots=True)
class BadRecord:
    """Where a scan stopped, and why."""

    offset: int
    reason: str


def parse_at(data: bytes | memoryview, offset: int) -> tuple[int, memoryview, int] | str:
    """Parse the record at `offset`: (type, payload view, next offset), or a reason string if the
    bytes there are not a complete, intact record."""
    end = len(data)
    if end - offset < HEADER_SIZE:
        return f"short header ({end - offset} of {HEADER_SIZE} bytes)"
    magic, rtype, length = _HEAD.unpack_from(data, offset)
    if magic != MAGIC:
        return f"bad magic 0x{magic:04x}"
    if length > MAX_RECORD:
        return f"implausible length {length}"
    start = offset + HEADER_SIZE
    if end - start < length:
        return f"short payload ({end - start} of {length} bytes)"
    view = memoryview(data)
    (crc,) = _CRC.unpack_from(data, offset + _HEAD.size)
    actual = zlib.crc32(view[start : start + length], zlib.crc32(view[offset : offset + _HEAD.size]))
    if crc != actual:
        return f"CRC mismatch (stored 0x{crc:08x}, computed 0x{actual:08x})"
    return rtype, view[start : start + length], start + length


def scan(data: bytes) -> tuple[list[tuple[int, int, memoryview]], BadRecord | None]:
    """All intact records from the start of `data` as (offset, type, payload), and the first bad
    record (None when the data ends exactly at a record boundary)."""
    records: list[tuple[int, int, memoryview]] = []
    offset = 0
    end = len(data)
    while offset < end:
        parsed = parse_at(data, offset)
        if isinstance(parsed, str):
            return records, BadRecord(offset, parsed)
        rtype, payload, nxt = parsed
        records.append((offset, rtype, payload))
        offset = nxt
    return records, None


def valid_record_after(data: bytes, bad: BadRecord) -> int | None:
    """Offset of any intact record that starts after a bad one, or None.

    A bad record followed by a good one is damage in the middle of the log (an error), while a bad
    record with nothing valid after it is a torn tail (discarded). The fast path trusts the bad
    record's length field (a flipped bit in a payload leaves it right); the slow path looks at every
    later occurrence of the magic."""
    if len(data) - bad.offset >= _HEAD.size:
        magic, _rtype, length = _HEAD.unpack_from(data, bad.offset)
        if magic == MAGIC and length <= MAX_RECORD:
            nxt = bad.offset + HEADER_SIZE + length
            if nxt < len(data) and not isinstance(parse_at(data, nxt), str):
                return nxt
    pos = bad.offset + 1
    while True:
        pos = data.find(_MAGIC_BYTES, pos)
        if pos < 0:
            return None
        if not isinstance(parse_at(data, pos), str):
            return pos
        pos += 1


# ---------------------------------------------------------------- syscalls


def zeros_from(data: bytes, offset: int) -> bool:
    """True if everything from `offset` on is zero bytes: the unused, preallocated end of a segment."""
    return data.count(b"\0", offset) == len(data) - offset


def write_all(fd: int, buf: bytes, offset: int) -> None:
    """pwrite() until every byte is out (a regular file returns short only on errors like ENOSPC)."""
    view = memoryview(buf)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def preallocate(fd: int, start: int, end: int) -> None:
    """Reserve [start, end) as zeros, so appends overwrite allocated blocks and fdatasync does not
    also have to commit a growing file size (measured: roughly halves its latency on ext4)."""
    if end > start:
        try:
            os.posix_fallocate(fd, start, end - start)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def fsync_dir(directory: str) -> None:
    """Make creations, renames and deletions inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file_durably(directory: str, name: str, content: bytes, size: int) -> int:
    """Create `name` holding `content` (preallocated to `size` bytes) so that after a crash it either
    does not exist or is complete: temp file, fdatasync, rename, directory fsync. Returns a
    read-write fd for further writes."""
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, content, 0)
        preallocate(fd, len(content), size)
        os.fdatasync(fd)
        os.rename(tmp, final)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def cut_tail(path: str, offset: int, size: int) -> None:
    """Durably replace everything from `offset` on with zeros (a torn tail), keeping the file
    preallocated to `size`, so later appends never sit behind garbage."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, offset)
        preallocate(fd, offset, size)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- failpoints

_ACTION = re.compile(
    r"^(?:(?P<count>\d+)\*)?(?:(?P<pct>\d+(?:\.\d+)?)%)?"
    r"(?P<kind>eio|enospc|crash|torn|delay)(?:\((?P<arg>\d+(?:\.\d+)?)\))?$"
)


@dataclass(slots=True)
class _Action:
    spec: str
    kind: str
    remaining: int | None  # None = unlimited
    probability: float
    delay_ms: float


class Failpoints:
    """Named fault switches in the storage syscalls, settable at run time (disk-fault tests).

    Points: `log.append` (before an append's write), `log.fsync` (before fdatasync), `log.fsync.after`
    (after fdatasync returned, before sync() returns), `log.snapshot` (before a snapshot record).
    Actions, optionally prefixed by `N*` (fire N times, then switch off) and/or `P%` (fire with that
    probability, from a seeded RNG):
      `eio` / `enospc`  raise OSError with that errno;
      `delay(MS)`       sleep MS milliseconds, then go on;
      `crash`           os._exit() on the spot: nothing after this point reaches the disk;
      `torn`            (log.append only) write part of the record, then os._exit().
    Example: `Failpoints({"log.fsync": "1*eio", "log.append": "delay(5)"})`.
    """

    POINTS: tuple[str, ...] = ("log.append", "log.fsync", "log.fsync.after", "log.snapshot")

    def __init__(self, actions: dict[str, str] | None = None, *, seed: int = 0):
        self._actions: dict[str, _Action] = {}
        self._rng = random.Random(seed)
        for name, spec in (actions or {}).items():
            self.set(name, spec)

    @classmethod
    def from_string(cls, text: str, *, seed: int = 0) -> Self:
        """Parse `name=action;name=action` (the form an env variable or a CLI flag carries)."""
        actions: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, sep, spec = part.partition("=")
            if not sep:
                raise ValueError(f"failpoint {part!r} must look like name=action")
            actions[name.strip()] = spec.strip()
        return cls(actions, seed=seed)

    def set(self, name: str, spec: str) -> None:
        """Switch a failpoint on (`spec` as in the class doc) or off (`off`)."""
        if name not in self.POINTS:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(self.POINTS)}")
        if spec == "off":
            self._actions.pop(name, None)
            return
        m = _ACTION.match(spec)
        if m is None:
            raise ValueError(f"bad failpoint action {spec!r} for {name}: expected e.g. eio, enospc, "
                             f"delay(5), crash, torn, 3*eio, 10%enospc")
        kind, arg = m["kind"], m["arg"]
        if (kind == "delay") != (arg is not None):
            raise ValueError(f"bad failpoint action {spec!r}: only delay takes an argument, and needs one")
        if kind == "torn" and name != "log.append":
            raise ValueError("the torn action only applies to log.append")
        pct = float(m["pct"]) if m["pct"] is not None else 100.0
        if not 0 <= pct <= 100:
            raise ValueError(f"bad failpoint probability in {spec!r}")
        self._actions[name] = _Action(spec, kind, int(m["count"]) if m["count"] else None,
                                      pct / 100.0, float(arg) if arg else 0.0)

    def clear(self, name: str | None = None) -> None:
        if name is None:
            self._actions.clear()
        else:
            self._actions.pop(name, None)

    def active(self) -> dict[str, str]:
        return {name: a.spec for name, a in self._actions.items()}

    def armed(self, name: str) -> bool:
        """Is an action set at point `name` (it may still not fire: a probability or a count)?"""
        return name in self._actions

    def hit(self, name: str) -> str | None:
        """Called by storage at point `name`: performs eio/enospc/delay/crash; returns "torn" for the
        caller to carry out; None when nothing fires."""
        action = self._actions.get(name)
        if action is None:
            return None
        if action.probability < 1.0 and self._rng.random() >= action.probability:
            return None
        if action.remaining is not None:
            action.remaining -= 1
            if action.remaining <= 0:
                self._actions.pop(name, None)  # (two threads may hit it at once: the log's sync thread)
        if action.kind == "delay":
            time.sleep(action.delay_ms / 1000.0)
            return None
        if action.kind == "eio":
            raise OSError(errno.EIO, f"injected I/O error at failpoint {name}")
        if action.kind == "enospc":
            raise OSError(errno.ENOSPC, f"injected no space left on device at failpoint {name}")
        if action.kind == "crash":
            os._exit(CRASH_EXIT_CODE)
        return action.kind  # "torn"
