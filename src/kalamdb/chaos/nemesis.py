"""The nemesis: a seeded schedule of faults, and the thread that applies it to a running cluster.

Every choice (when, which faults, combined or not, which targets, how strong) is drawn from ONE
`random.Random(seed)` when the schedule is made, so the same seed replays the same schedule.
What only the running cluster knows (who leads now) is resolved when a fault starts, from the
schedule's seeded node ranking, and recorded in the fault window so the report shows what
really happened. A run ends with heal (everything undone, every node running), a recovery
barrier (one leader, every node applied the leader's commit index) and then the final reads.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

FAULT_KINDS = ("partition", "kill", "pause", "delay", "loss", "disk", "cpu", "memory", "clock",
               "membership", "transfer")
# what `kalamdb chaos` runs without --faults: every kind that keeps the configuration as it is
DEFAULT_FAULTS = FAULT_KINDS[:9]
# kinds that change who is in the cluster or who leads: run last in a combined window, so the
# other fault of the window is already in force while the change is made
MEMBERSHIP_KINDS = ("membership", "transfer")
#: faults that stop a node's process or restart it: in a window of combined faults they go after
#: the ones that need the node to answer (a disk failpoint is set through its HTTP API, which a
#: paused node cannot answer), so that both happen instead of the second one failing
STOPPING_KINDS = ("pause", "kill", "clock")
TARGETS = ("one", "leader", "minority", "majority", "all")
# which target shapes make sense for each fault (a delay on "one" node = on its links)
_TARGETS_FOR = {
    "partition": ("one", "leader", "minority", "majority", "all"),
    "kill": ("one", "leader", "minority", "majority", "all"),
    "pause": ("one", "leader", "minority", "majority", "all"),
    "delay": ("one", "leader", "minority", "all"),
    "loss": ("one", "leader", "minority", "all"),
    "disk": ("one", "leader", "minority"),
    "cpu": ("one", "leader", "minority", "all"),
    "memory": ("one", "leader", "minority"),
    "clock": ("one", "leader", "minority", "all"),
    "membership": ("one", "leader"),  # the node removed or replaced (an add needs none)
    "transfer": ("one",),  # the node that should lead next
}


@dataclass(frozen=True)
class FaultStep:
    """One fault of the schedule: starts `start` s into the run, lasts `duration` s."""

    start: float
    duration: float
    kind: str
    target: str
    ranking: tuple[int, ...]  # seeded node order that resolves the target at run time
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def to_json(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        d["ranking"] = list(self.ranking)
        return d


def make_schedule(seed: int, duration: float, faults: Sequence[str], node_ids: Sequence[int], *,
                  quiet: tuple[float, float] = (1.0, 2.5), active: tuple[float, float] = (2.0, 4.0),
                  combine_p: float = 0.3, tail: float = 1.0) -> list[FaultStep]:
    """Fault windows separated by quiet gaps, each window one fault or (with `combine_p`) two at
    once, all inside [0, duration - tail]. Deterministic in (seed, arguments)."""
    unknown = [f for f in faults if f not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    if not node_ids:
        raise ValueError("a schedule needs at least one node")
    rng = random.Random(seed)
    steps: list[FaultStep] = []
    kinds = sorted(set(faults), key=FAULT_KINDS.index)
    if not kinds:
        return steps
    t = rng.uniform(*quiet)
    while True:
        length = rng.uniform(*active)
        if t + length > duration - tail:
            break
        n_faults = 2 if len(kinds) > 1 and rng.random() < combine_p else 1
        for kind in rng.sample(kinds, n_faults):
            target = rng.choice(_TARGETS_FOR[kind])
            ranking = list(node_ids)
            rng.shuffle(ranking)
            steps.append(FaultStep(round(t, 3), round(length, 3), kind, target, tuple(ranking),
                                   _params(kind, rng)))
        t += length + rng.uniform(*quiet)
    return steps


def _params(kind: str, rng: random.Random) -> tuple[tuple[str, Any], ...]:
    if kind == "delay":
        return (("ms", rng.choice((20, 50, 100, 200))), ("jitter_ms", rng.choice((0, 10, 50))))
    if kind == "loss":
        return (("p", rng.choice((0.05, 0.1, 0.2, 0.4))),)
    if kind == "cpu":
        return (("fraction", rng.choice((0.05, 0.1, 0.25))),)
    if kind == "memory":
        return (("extra_mb", rng.choice((16, 64, 128))),)
    if kind == "clock":
        return (("offset_s", rng.choice((-30.0, -1.0, 1.0, 30.0, 300.0))),)
    if kind == "disk":
        return (("mode", rng.choice(("slow", "eio"))),)
    if kind == "membership":
        return (("op", rng.choice(("add", "remove", "replace"))),)
    return ()


def resolve_targets(step: FaultStep, leader: int | None, current: Sequence[int] | None = None) -> list[int]:
    """Concrete node ids for a step, given who leads now (None: nobody known) and the current
    members (`current`, sorted ids; default: the schedule's nodes). The ranking is a seeded order of
    the schedule's nodes; after membership changes its k-th entry stands for the k-th current member,
    so the same seed still picks the same positions."""
    ranking = list(step.ranking)
    if current is not None and sorted(current) != sorted(ranking):
        base = sorted(ranking)
        members = sorted(current)
        pos = [base.index(r) for r in ranking]
        ranking = [members[p] for p in pos if p < len(members)] + members[len(base):]
    n = len(ranking)
    if step.target == "leader" and leader in ranking:
        return [leader]
    if step.target in ("one", "leader"):
        return ranking[:1]
    if step.target == "minority":
        return ranking[:max(1, (n - 1) // 2)]
    if step.target == "majority":
        return ranking[:n // 2 + 1]
    return ranking


class FaultBackend(Protocol):
    """What the nemesis needs from a cluster (`kalamdb.chaos.cluster_faults.KitFaultBackend` provides it)."""

    def node_ids(self) -> list[int]: ...
    def leader_id(self) -> int | None: ...
    def supports(self, kind: str) -> bool: ...
    def inject(self, kind: str, nodes: list[int], params: dict) -> Any: ...
    def undo(self, kind: str, nodes: list[int], token: Any) -> None: ...
    def heal_all(self) -> None: ...
    def recovery_barrier(self, timeout: float) -> int: ...


@dataclass
class FaultWindow:
    """What the nemesis actually did: a fault on concrete nodes, from `start` to `end` (seconds
    since the run's time zero, from the same monotonic clock as the history)."""

    kind: str
    target: str
    nodes: list[int]
    start: float
    end: float | None = None
    params: dict = field(default_factory=dict)
    error: str | None = None


def _apply_order(step: FaultStep) -> tuple[bool, bool]:
    """In a window of combined faults: faults that need the node to answer, then those that stop or
    restart it (STOPPING_KINDS), membership changes last (the order is stable otherwise)."""
    return step.kind in MEMBERSHIP_KINDS, step.kind in STOPPING_KINDS


class Nemesis:
    """Applies a schedule in its own thread; `finish()` stops early if needed, heals and runs the
    recovery barrier. Faults the backend cannot inject are skipped and listed in `skipped`."""

    def __init__(self, backend: FaultBackend, schedule: list[FaultStep], t0_ns: int):
        self.backend = backend
        self.schedule = schedule
        self.t0_ns = t0_ns
        self.windows: list[FaultWindow] = []
        self.skipped = sorted({s.kind for s in schedule if not backend.supports(s.kind)})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def _now(self) -> float:
        return (time.monotonic_ns() - self.t0_ns) / 1e9

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        # group steps that start together (combined faults) and end together
        groups: dict[tuple[float, float], list[FaultStep]] = {}
        for s in self.schedule:
            if self.backend.supports(s.kind):
                groups.setdefault((s.start, s.duration), []).append(s)
        for (start, duration), steps in sorted(groups.items()):
            if self._stop.wait(max(0.0, start - self._now())):  # the schedule's clock, or stop
                return
            active = []
            leader = self._leader()
            for s in sorted(steps, key=_apply_order):
                nodes = resolve_targets(s, leader, self._members())
                w = FaultWindow(s.kind, s.target, nodes, self._now(), params=dict(s.params))
                try:
                    token = self.backend.inject(s.kind, nodes, dict(s.params))
                except Exception as exc:  # noqa: BLE001 - a fault that failed is reported, the run goes on
                    w.error = f"{type(exc).__name__}: {exc}"
                    w.end = w.start
                    self.errors.append(f"{s.kind} on {nodes}: {w.error}")
                    token = None
                else:
                    active.append((s, nodes, token, w))
                with self._lock:
                    self.windows.append(w)
            stopped = self._stop.wait(max(0.0, start + duration - self._now()))
            for s, nodes, token, w in reversed(active):
                try:
                    self.backend.undo(s.kind, nodes, token)
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(f"undo {s.kind} on {nodes}: {type(exc).__name__}: {exc}")
                w.end = self._now()
            if stopped:
                return

    def _members(self) -> list[int] | None:
        try:
            return sorted(self.backend.node_ids())
        except Exception:  # noqa: BLE001 - keep the schedule's own nodes
            return None

    def _leader(self) -> int | None:
        try:
            return self.backend.leader_id()
        except Exception:  # noqa: BLE001 - no leader known right now
            return None

    def stop(self) -> None:
        """No new faults from now on (the active ones are undone by the nemesis thread)."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait until the whole schedule has played out (every fault injected and undone); True if
        it has within `timeout` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def finish(self, barrier_timeout: float = 60.0) -> dict:
        """Stop, heal everything, wait for recovery; returns {"healed_at", "recovered_at", "index"}."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=120)
        healed = self._now()
        self.backend.heal_all()
        for w in self.windows:
            if w.end is None:
                w.end = healed
        index = self.backend.recovery_barrier(barrier_timeout)
        return {"healed_at": healed, "recovered_at": self._now(), "index": index}
