"""The nemesis's `FaultBackend` over a kit cluster: the nemesis speaks node ids and fault kinds, the
kit's composed objects (`c.net`, `c.processes`, `c.failpoints`, `c.pressure`) do the work. The same
backend drives the proxy and the netns network modes; a fault kind the mode cannot produce (delay
without tc netem in netns mode) is reported as not supported and the nemesis skips it."""

from __future__ import annotations

import contextlib
from typing import Any

from kalamdb.chaos.nemesis import FAULT_KINDS
from kalamdb.testing.cluster import ClusterTestServer
from kalamdb.testing.process import NodeProcess

# fault kind -> network feature it needs (kinds not listed need none)
_NEEDS = {"partition": "partition", "delay": "delay", "loss": "loss"}


class KitFaultBackend:
    """Applies and undoes nemesis faults on a `ClusterTestServer` started with faults=True."""

    def __init__(self, cluster: ClusterTestServer):
        self.c = cluster

    # ---- what the nemesis asks ------------------------------------------------------------------
    def node_ids(self) -> list[int]:
        return [n.node_id for n in self.c.nodes]

    def _nodes(self, ids: list[int]) -> list[NodeProcess]:
        return [n for n in self.c.nodes if n.node_id in ids]

    def leader_id(self) -> int | None:
        for nid, h in self.c._health_all().items():
            if isinstance(h, dict) and h.get("is_leader"):
                return nid
        return None

    def supports(self, kind: str) -> bool:
        if kind not in FAULT_KINDS:
            return False
        feature = _NEEDS.get(kind)
        return feature is None or self.c.net.supports(feature)

    # ---- faults ---------------------------------------------------------------------------------
    def inject(self, kind: str, ids: list[int], params: dict) -> Any:
        c = self.c
        nodes = self._nodes(ids)
        up = [n for n in nodes if n.is_running()]
        if kind == "kill":
            c.processes.kill(nodes)
        elif kind == "pause":
            # a node that an overlapping kill already stopped is down anyway: pause the others
            c.processes.pause(up)
        elif kind == "partition":
            if set(ids) == set(self.node_ids()):
                c.net.partition_majorities_ring()
            else:
                c.net.partition([nodes, [n for n in c.nodes if n not in nodes]])
        elif kind == "delay":
            c.net.delay(params.get("ms", 50), params.get("jitter_ms", 0), nodes=nodes)
        elif kind == "loss":
            c.net.loss(params.get("p", 0.1), nodes=nodes)
        elif kind == "disk":
            spec = "delay(50)" if params.get("mode") == "slow" else "1*eio"
            c.failpoints.set(up, {"log.fsync": spec})
        elif kind == "clock":
            for n in nodes:
                c.processes.set_clock(n, offset_ms=params.get("offset_s", 1.0) * 1000)
            c.processes.restart(nodes, kill=False)
        elif kind == "cpu":
            return c.pressure.cpu_starve(up, fraction=params.get("fraction", 0.1))
        elif kind == "memory":
            recs = []
            for n in up:
                rss = n.stats().rss_mb or 64.0
                recs += c.pressure.memory_pressure(n, limit_bytes=int((rss + params.get("extra_mb", 64)) * (1 << 20)))
            return recs
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return None

    def undo(self, kind: str, ids: list[int], token: Any) -> None:
        c = self.c
        nodes = self._nodes(ids)
        if kind == "pause":
            c.processes.resume(nodes)
        elif kind == "partition":
            c.net.heal()
        elif kind == "delay":
            c.net.delay(0, 0, nodes=nodes)
        elif kind == "loss":
            c.net.loss(0.0, nodes=nodes)
        elif kind == "disk":
            with contextlib.suppress(Exception):
                c.failpoints.set([n for n in nodes if n.is_up()], {"log.fsync": "off"})
        elif kind == "clock":
            for n in nodes:
                c.processes.set_clock(n, 0.0)
            c.processes.restart(nodes, kill=False)
        elif kind in ("cpu", "memory"):
            c.pressure.release(token or [])
        # kills, OOM kills under a memory cap and fsync failures all end in a stopped process
        c.processes.restart_crashed()
        c.processes.start(nodes)

    def heal_all(self) -> None:
        """Everything undone, every node running (the clock settings back to the real clock)."""
        c = self.c
        c.net.clear()
        c.pressure.release()
        c.processes.resume("all")
        for n in c.nodes:
            if n.start_env:
                c.processes.set_clock(n, 0.0)
        c.processes.restart_crashed()
        c.processes.start("all")

    def recovery_barrier(self, timeout: float) -> int:
        return self.c.recover(timeout)
