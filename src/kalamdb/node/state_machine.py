"""What the Raft driver needs from the replicated state machine (the SQL engine is one).

The driver never imports the engine: it applies opaque command bytes in log order and moves whole
snapshots, so any object with these methods can sit under it (the engine in a node, a toy state
machine in a driver test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class StateMachine(Protocol):
    @property
    def applied_index(self) -> int:
        """The last log index applied, read from the state itself (survives restarts)."""

    def apply_batch(self, items: list[tuple[int, bytes]]) -> list[Any]:
        """Apply (index, command) pairs in order, atomically with the new applied index; one
        outcome per item. Deterministic: the same log gives the same state on every replica."""

    def light_batch(self, items: list[tuple[int, bytes]]) -> bool:
        """True when applying these (index, command) pairs is cheap, with a cost bounded by their
        size and known without running them: the node may then apply them on its request loop
        (node/apply_router.py). False is always safe."""

    def noop_command(self) -> bytes:
        """A command that changes nothing but the applied index (for Raft's own entries)."""

    def snapshot_to(self, path: Path) -> int:
        """Write a consistent copy of the state to `path`; returns the applied index it holds."""

    def restore_from(self, path: Path) -> None:
        """Replace the whole state by a snapshot file written by `snapshot_to`."""
