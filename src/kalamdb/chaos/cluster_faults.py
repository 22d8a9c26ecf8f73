"""The nemesis's `FaultBackend` over a kit cluster: the nemesis speaks node ids and fault kinds, the
kit's composed objects (`c.net`, `c.processes`, `c.failpoints`, `c.pressure`, `c.membership`) do the
work. The same backend drives the proxy and the netns network modes; a fault kind the mode cannot
produce (delay without tc netem in netns mode) is reported as not supported and the nemesis skips it.

Membership faults (`membership`: add a fresh node, remove a voter -- the leader included -- or
replace one under a new id; `transfer`: CLUSTER TRANSFER LEADER) are recorded in the history as
operations of the process "nemesis" (f "membership", ok / fail / info), and every change updates
the `MemberView` that clients follow. The size of the configuration stays between `min_voters` and
`max_voters`: a scheduled removal at the minimum becomes an add, an add at the maximum a removal,
so a majority of the configuration can always recover once the faults are healed."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from kalamdb.chaos.history import HistoryRecorder
from kalamdb.chaos.nemesis import FAULT_KINDS
from kalamdb.testing.cluster import ClusterTestServer
from kalamdb.testing.nodes import ClusterError
from kalamdb.testing.process import NodeProcess

# fault kind -> network feature it needs (kinds not listed need none)
_NEEDS = {"partition": "partition", "delay": "delay", "loss": "loss"}


class MemberView:
    """The current members' client URLs (node id -> URL), versioned: clients re-pin when it changes."""

    def __init__(self, cluster: ClusterTestServer):
        self._lock = threading.Lock()
        self.version = 0
        self._members: list[tuple[int, str]] = []
        self.update(cluster)

    def update(self, cluster: ClusterTestServer) -> None:
        members = sorted((n.node_id, n.listen_url) for n in cluster.nodes)
        with self._lock:
            if members != self._members:
                self._members = members
                self.version += 1

    def snapshot(self) -> tuple[int, list[tuple[int, str]]]:
        with self._lock:
            return self.version, list(self._members)


class KitFaultBackend:
    """Applies and undoes nemesis faults on a `ClusterTestServer` started with faults=True."""

    def __init__(self, cluster: ClusterTestServer, recorder: HistoryRecorder | None = None,
                 view: MemberView | None = None, min_voters: int = 3, max_voters: int | None = None,
                 t0_ns: int | None = None):
        self.c = cluster
        self.rec = recorder
        self.view = view or MemberView(cluster)
        self.min_voters = min(min_voters, len(cluster.nodes))
        self.max_voters = max_voters if max_voters is not None else len(cluster.nodes) + 2
        self.t0_ns = t0_ns if t0_ns is not None else time.monotonic_ns()
        self.changes: list[dict] = []  # every membership change, with its outcome and times
        self.configurations: list[dict] = [{"t": 0.0, "voters": self.node_ids(), "reason": "start"}]

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
        elif kind == "membership":
            return self._membership(str(params.get("op", "add")), nodes)
        elif kind == "transfer":
            return self._transfer(nodes)
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

    # ---- membership -------------------------------------------------------------------------------
    def _now(self) -> float:
        return (time.monotonic_ns() - self.t0_ns) / 1e9

    def _membership(self, op: str, nodes: list[NodeProcess]) -> dict:
        """One change, its outcome in the history; the schedule's op adjusted to the size bounds."""
        c = self.c
        size = len(c.nodes)
        if op == "remove" and size <= self.min_voters:
            op = "add"
        elif op == "add" and size >= self.max_voters:
            op = "remove"
        target = nodes[0] if nodes else None
        if op in ("remove", "replace") and target is None:
            op = "add"
        value = {"op": op, "node": target.node_id if target is not None and op != "add" else None}
        if self.rec is not None:
            self.rec.invoke("nemesis", "membership", value=value)
        t0 = self._now()
        if op == "add" or target is None:  # (None only with "add", see above)
            ch = c.membership.add()
        elif op == "remove":
            ch = c.membership.remove(target)
        else:
            ch = c.membership.replace(target)
        return self._record(ch, value, t0)

    def _transfer(self, nodes: list[NodeProcess]) -> dict:
        leader = self.leader_id()
        candidates = [n for n in nodes if n.node_id != leader] or [n for n in self.c.nodes if n.node_id != leader]
        value = {"op": "transfer", "node": candidates[0].node_id if candidates else None}
        if self.rec is not None:
            self.rec.invoke("nemesis", "membership", value=value)
        t0 = self._now()
        if not candidates:
            from kalamdb.testing.membership import Change

            ch = Change("transfer", outcome="fail", error="no other node to lead")
        else:
            ch = self.c.membership.transfer(candidates[0])
        return self._record(ch, value, t0)

    def _record(self, ch: Any, value: dict, t0: float) -> dict:
        result = {**value, "new_node": ch.new_node_id, "outcome": ch.outcome, "error": ch.error}
        if self.rec is not None:
            {"ok": self.rec.ok, "fail": self.rec.fail}.get(ch.outcome, self.rec.info)(
                "nemesis", "membership", value=result)
        self.view.update(self.c)
        entry = {**result, "start": t0, "end": self._now()}
        self.changes.append(entry)
        if ch.outcome != "fail" and value["op"] != "transfer":
            try:
                voters = self.c.membership.config(timeout=2.0).voters
            except ClusterError:  # no agreed leader right now: the kit's own view
                voters = self.node_ids()
            self.configurations.append({"t": entry["end"], "voters": voters, "reason": f"{value['op']} {ch.outcome}"})
        return entry

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
        """Everything undone and caught up; then the kit's nodes are reconciled with the final
        configuration (non-members stopped, every member running, all agreeing on the voters)."""
        deadline = time.monotonic() + timeout
        # first settle who is a member (a node whose removal was indeterminate may still run, and
        # as a non-member it never catches up), then the barrier over the members
        self.c.leader(timeout)
        cfg = self.c.membership.reconcile(max(5.0, deadline - time.monotonic()))
        self.view.update(self.c)
        if cfg.voters != self.configurations[-1]["voters"]:
            self.configurations.append({"t": self._now(), "voters": cfg.voters, "reason": "final"})
        return self.c.recover(max(5.0, deadline - time.monotonic()))
