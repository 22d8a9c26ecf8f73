"""A node's state-machine snapshot files: the latest one under its final name, plus the staging file
of one being received from the leader. Publishing is atomic (fsync, rename, fsync of the directory),
so a crash leaves either the old snapshot or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path

from kalamdb.node.cluster_results import ClearReport


class SnapshotFiles:
    """The node's latest state-machine snapshot as a file, plus the staging file of one being received."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.staging = self.dir / "incoming.sqlite.part"

    def path(self, index: int) -> Path:
        return self.dir / f"snap-{index:020d}.sqlite"

    def latest(self) -> tuple[int, Path] | None:
        found = sorted(self.dir.glob("snap-*.sqlite"))
        if not found:
            return None
        return int(found[-1].name[5:25]), found[-1]

    def publish(self, tmp: Path, index: int) -> Path:
        """Make a complete snapshot file durable under its final name, then drop older ones."""
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.path(index)
        os.replace(tmp, final)
        self._fsync_dir()
        for old in self.dir.glob("snap-*.sqlite"):
            if old != final and int(old.name[5:25]) < index:
                old.unlink(missing_ok=True)
        return final

    def clear_old(self) -> ClearReport:
        """CLUSTER CLEAR: remove every snapshot older than the latest (the latest stays: the compacted
        log starts after it). `publish` already removes older ones, so this finds work only where a
        removal failed before (a crash between the rename and the unlink, a permission error)."""
        files = sorted(self.dir.glob("snap-*.sqlite"))
        sizes = {f: _size(f) for f in files}
        cleared, cleared_bytes, errors = 0, 0, []
        for old in files[:-1]:
            try:
                old.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.append(f"{old.name}: {exc.strerror or exc}")
                continue
            cleared += 1
            cleared_bytes += sizes[old]
        return ClearReport(str(self.dir), self.dir.is_dir(), len(files), sum(sizes.values()), cleared,
                           cleared_bytes, tuple(errors))

    def write_chunk(self, offset: int, data: bytes) -> None:
        mode = "wb" if offset == 0 else "r+b"
        if offset and not self.staging.exists():
            raise OSError(f"snapshot chunk at offset {offset} without a staging file")
        with open(self.staging, mode) as f:
            f.seek(offset)
            f.write(data)
            f.truncate(offset + len(data))

    def read_chunk(self, index: int, offset: int, max_bytes: int) -> tuple[bytes, bool] | None:
        path = self.path(index)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset)
                data = f.read(max_bytes)
        except FileNotFoundError:
            return None
        return data, offset + len(data) >= size

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
