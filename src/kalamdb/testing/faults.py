"""Node-level faults of a kit cluster besides the network and the processes: CPU and memory
pressure (`c.pressure`). Run-time failpoints (disk faults) are `c.failpoints`
(`kalamdb.testing.ops.Failpoints`), settings for a node's next start (clock, failpoints at start)
are on `c.processes`, and network faults are `c.net` (`kalamdb.testing.network`).

See docs/faults.md for every fault, its semantics and what each mode can show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kalamdb.node.failpoints import FAILPOINT_CRASH_EXIT_CODE as CRASH_EXIT_CODE
from kalamdb.node.failpoints import STORAGE_FAILURE_EXIT_CODE
from kalamdb.testing import pressure
from kalamdb.testing.nodes import NodeHandle

if TYPE_CHECKING:
    from kalamdb.testing.cluster import ClusterTestServer
    from kalamdb.testing.ops import Target

__all__ = ["CRASH_EXIT_CODE", "STORAGE_FAILURE_EXIT_CODE", "Pressure", "PressureRecord"]


@dataclass
class PressureRecord:
    """One CPU/memory pressure applied, and the mechanism the machine allowed."""

    kind: str  # "cpu" | "memory" | "hogs"
    node: NodeHandle | None  # None: machine-wide (hogs, or a memory hog without cgroups)
    mechanism: str
    handle: pressure.PressureHandle

    @property
    def index(self) -> int | None:
        return self.node.index if self.node is not None else None


class Pressure:
    """CPU and memory pressure on a kit cluster's node processes (`c.pressure`)."""

    def __init__(self, cluster: ClusterTestServer):
        self._cluster = cluster
        self.records: list[PressureRecord] = []

    def cpu_starve(self, target: Target = "leader", fraction: float = 0.05, mechanism: str = "auto"
                   ) -> list[PressureRecord]:
        """Limit each running target node to `fraction` of one CPU (cgroup quota, else a
        SIGSTOP/SIGCONT duty cycle)."""
        out = []
        for n in self._cluster.select(target):
            if n.pid is None or not n.is_running():
                continue
            h = pressure.cpu_limit(n.pid, fraction, mechanism=mechanism)
            out.append(PressureRecord("cpu", n, h.mechanism, h))
        self.records.extend(out)
        return out

    def memory_pressure(self, target: Target = "leader", limit_bytes: int = 256 << 20, mechanism: str = "auto"
                        ) -> list[PressureRecord]:
        """Cap each running target node's memory (cgroup: the kernel OOM-kills it past the cap;
        else a machine-wide hog of that size)."""
        out = []
        for n in self._cluster.select(target):
            if n.pid is None or not n.is_running():
                continue
            h = pressure.memory_limit(n.pid, limit_bytes, mechanism=mechanism)
            out.append(PressureRecord("memory", n if h.mechanism == "cgroup" else None, h.mechanism, h))
        self.records.extend(out)
        return out

    def busy_hogs(self, n: int) -> PressureRecord:
        """n competing processes spinning on the shared CPUs."""
        rec = PressureRecord("hogs", None, "processes", pressure.busy_hogs(n))
        self.records.append(rec)
        return rec

    def release(self, records: list[PressureRecord] | None = None) -> None:
        """Undo the given pressures (default: all of them)."""
        for rec in list(self.records if records is None else records):
            rec.handle.release()
            if rec in self.records:
                self.records.remove(rec)
