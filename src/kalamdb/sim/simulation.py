"""One deterministic simulation run: a cluster of real RaftCores on a simulated clock, network and
disks, under a seeded fault schedule and client load, with safety checked continuously and
liveness checked after the faults stop.

Phases: (1) faults + load for `fault_time`; (2) heal everything (network, disks, restart crashed
nodes), stop new load, and require within `liveness_bound` a leader, the target membership, every
client write acknowledged and every member applied up to the leader's commit with equal state.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from kalamdb.raft.core import Role
from kalamdb.raft.messages import Message, MsgType, decode_membership
from kalamdb.raft.types import Entry, Membership
from kalamdb.sim.checker import SafetyChecker, SafetyViolation
from kalamdb.sim.loop import MS, EventBudgetExceeded, EventLoop
from kalamdb.sim.nemesis import Nemesis
from kalamdb.sim.network import SimNetwork
from kalamdb.sim.node import SimNode
from kalamdb.sim.params import PROFILES, SimParams, child_rng
from kalamdb.sim.trace import Trace
from kalamdb.sim.workload import Client

_LEADER = Role.LEADER
_APP_RESP = MsgType.APP_RESP
_VOTE_RESP = MsgType.VOTE_RESP
STORM_WINDOW = 50 * MS
STORM_EVENTS = 100_000  # 2000 events per simulated ms: far above a pipelined catch-up (~500)


@dataclass
class SimResult:
    seed: int
    ok: bool
    failure: str = ""  # "<kind>: <what>" when not ok
    kind: str = ""  # safety | liveness | error
    trace_tail: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    params: SimParams | None = None


class Simulation:
    def __init__(self, params: SimParams, root: random.Random, echo: Callable[[str], None] | None = None,
                 node_factory: type[SimNode] = SimNode) -> None:
        self.params = params
        # a healthy run needs ~10k events per simulated second at most; 3x that plus slack is a storm
        self.loop = EventLoop(max_events=200_000 + (params.fault_time + params.liveness_bound) // 30)
        self.trace = Trace(self.loop, keep=40, echo=echo)
        self.checker = SafetyChecker()
        self.net = SimNetwork(self.loop, child_rng(root), params.net, self._deliver, self.trace)
        ids = list(range(1, params.nodes + params.spares + 1))
        self.nodes: dict[int, SimNode] = {i: node_factory(i, self, child_rng(root)) for i in ids}
        self.node_list = [self.nodes[i] for i in ids]
        self.client = Client(self, child_rng(root))
        voters = set(range(1, params.nodes + 1))
        self.nemesis = Nemesis(self, child_rng(root), voters, ids[params.nodes:])
        self.settled = False
        self.phase = "faults"

    # --- wiring -----------------------------------------------------------------------------------
    def _deliver(self, src: int, dst: int, msg: Message) -> None:
        node = self.nodes[dst]
        if node.up:
            if self.params.wire:  # as over TCP: encode, decode, validate (a decode error fails the run)
                msg = Message.from_wire(msgpack.unpackb(msgpack.packb(msg.to_wire()), raw=False))
            self.trace.add(dst, "recv", msg)
            node.receive(msg)

    def send(self, src: int, msg: Message) -> None:
        """Every message a driver sends: first check that what it promises is on the sender's disk
        (an append ack covers only synced entries; a vote grant only a synced vote)."""
        t = msg.type
        if not msg.reject and (t is _APP_RESP or t is _VOTE_RESP):
            self.checker.on_promise(src, msg, self.nodes[src].disk)
        self.net.send(src, msg.to, msg)

    def leader(self) -> SimNode | None:
        """The live leader with the highest term (a stale one may linger in a partition)."""
        best = None
        for n in self.node_list:
            if n.up and n.core.role is _LEADER and (best is None or n.core.term > best.core.term):
                best = n
        return best

    def pick_leader(self, rng: random.Random) -> SimNode | None:
        """Where a client sends a write: any node that believes it leads (stale leaders too)."""
        leaders = [n for n in self.node_list if n.up and n.core.role is _LEADER]
        if not leaders:
            return None
        return leaders[0] if len(leaders) == 1 else rng.choice(leaders)

    def on_config_applied(self, node: SimNode, entry: Entry) -> None:
        m = decode_membership(entry.data)
        self.trace.add(node.id, "config", f"at {entry.index}: voters {sorted(m.voters)} learners "
                       f"{sorted(m.learners)} outgoing {sorted(m.voters_outgoing)}")

    # --- run --------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        p = self.params
        founders = set(range(1, p.nodes + 1))
        for n in self.node_list[: p.nodes]:
            if p.grow:
                n.start(bootstrap=Membership(frozenset({1})) if n.id == 1 else None)
            else:
                n.start(bootstrap=Membership(frozenset(founders)))
        self.trace.add(0, "params", f"seed {p.seed} nodes {p.nodes}+{p.spares} grow {p.grow} tick {p.tick}us "
                       f"election {p.election_ticks} heartbeat {p.heartbeat_ticks} net {p.net}")
        self.client.start()
        self.nemesis.start()
        self.loop.after(p.check_every, self._periodic_check)
        self.loop.after(STORM_WINDOW, self._storm_check, 0)
        try:
            self.loop.run_until(p.fault_time)
            self._heal_all()
            end = p.fault_time + p.liveness_bound
            self.loop.after(p.tick, self._settle_check)
            if not self.loop.run_until(end, stop=lambda: self.settled):
                return self._result(False, "liveness", self._stuck_reason())
            self._final_checks()
        except SafetyViolation as v:
            return self._result(False, "safety", str(v))
        except Exception as exc:  # noqa: BLE001 -- the core or driver blew up: a failure, with where
            tb = traceback.format_exception(exc)
            return self._result(False, "error", f"{type(exc).__name__}: {exc}\n" + "".join(tb[-6:]))
        return self._result(True)

    def _result(self, ok: bool, kind: str = "", what: str = "") -> SimResult:
        if not ok:
            self.trace.add(0, "FAILED", f"{kind}: {what.splitlines()[0] if what else ''}")
        stats = {
            "events": self.loop.events_run,
            "sim_ms": self.loop.now // 1000,
            "messages": self.net.sent,
            "dropped": self.net.dropped,
            "faults": self.nemesis.faults,
            "acked": self.client.acked,
            "reads": self.client.reads_started,
            "leaders": len(self.checker.leaders),
            "committed": self.checker.max_committed,
        }
        return SimResult(self.params.seed, ok, f"{kind}: {what}" if not ok else "", kind,
                         self.trace.tail() if not ok else [], stats, self.params)

    def _heal_all(self) -> None:
        """End of the fault phase: everything is repaired; the cluster must now make progress."""
        self.phase = "liveness"
        self.trace.add(0, "phase", "faults stop: heal network, fast disks, restart crashed nodes")
        self.nemesis.stop()
        self.client.running = False
        self.net.faulty = False
        self.net.heal()
        for n in self.node_list:
            n.slow_disk = False
            if not n.up and not n.removed and n.incarnation:
                n.start()

    def _storm_check(self, last_seq: int) -> None:
        """Fail fast on a message storm (a livelock that would otherwise burn the event budget)."""
        seq = self.loop._seq
        if seq - last_seq > STORM_EVENTS:
            raise EventBudgetExceeded(f"message storm: {seq - last_seq} events scheduled within "
                                      f"{STORM_WINDOW // 1000} ms simulated")
        self.loop.after(STORM_WINDOW, self._storm_check, seq)

    def _periodic_check(self) -> None:
        self.checker.check_log_matching({n.id: n.core for n in self.node_list if n.up})
        self.loop.after(self.params.check_every, self._periodic_check)

    def _settle_check(self) -> None:
        if self._stuck_reason() == "":
            self.settled = True
        else:
            self.loop.after(self.params.tick, self._settle_check)

    def _stuck_reason(self) -> str:
        """'' when the cluster has settled, else what it is still waiting for."""
        leader = self.leader()
        if leader is None:
            return self._no_leader_reason()
        core = leader.core
        if core.term_at(core.commit_index) != core.term:
            return f"leader n{leader.id} has not committed in its term {core.term}"
        nem = self.nemesis
        m = core.membership
        want = Membership(frozenset(nem.target_voters), frozenset(nem.target_learners))
        if m != want:
            return f"membership {m} is not the target {want}"
        if self.client.pending:
            ops = sorted(self.client.pending)[:5]
            return f"{len(self.client.pending)} client writes not acknowledged (e.g. ops {ops})"
        commit = core.commit_index
        digest = leader.sm.digest
        for i in sorted(m.members):
            n = self.nodes[i]
            if not n.up:
                return f"member n{i} is down"
            if n.sm.applied < commit:
                return f"member n{i} applied {n.sm.applied} < leader commit {commit}"
            if n.sm.digest != digest:
                return f"member n{i} state digest differs from the leader's at {commit}"
        return ""

    def _no_leader_reason(self) -> str:
        up = [n for n in self.node_list if n.up]
        views = "; ".join(f"n{n.id} {n.core.role.name} t{n.core.term} last {n.core.last_index}/"
                          f"t{n.core.last_term} {'voter' if n.core.promotable else 'non-voter'}" for n in up)
        if up:
            best = max(up, key=lambda n: (n.core.last_term, n.core.last_index))
            top = [n for n in up if (n.core.last_term, n.core.last_index) ==
                   (best.core.last_term, best.core.last_index)]
            if not any(n.core.promotable for n in top):
                return (f"no leader: the most up-to-date log ({', '.join(f'n{n.id}' for n in top)}) is held "
                        f"only by nodes that are not voters in their own latest config, so no voter can win "
                        f"[{views}]")
        return f"no leader [{views}]"

    def _final_checks(self) -> None:
        leader = self.leader()
        if leader is None:  # _final_checks runs only once settled, and a settled cluster has a leader
            raise RuntimeError("final checks of a simulation without a leader")
        members = sorted(leader.core.membership.members)
        self.checker.check_log_matching({n.id: n.core for n in self.node_list if n.up})
        for i in members:
            node = self.nodes[i]
            self.checker.check_acked_present(i, node.sm.first_index.get)


def run_seed(seed: int, nodes: int | None = None, seconds: float | None = None,
             echo: Callable[[str], None] | None = None, tweak: Callable[[SimParams], None] | None = None,
             node_factory: type[SimNode] = SimNode, profile: str = "swarm") -> SimResult:
    """Run one seed: draw its parameters (swarm), apply a named profile (params.PROFILES) and
    `tweak` (tests use it to force a scenario), build the cluster, simulate, check."""
    root = random.Random(seed)
    params = SimParams.draw(seed, nodes=nodes, seconds=seconds, rng=child_rng(root))
    shape = PROFILES[profile]
    if shape is not None:
        shape(params)
    if tweak is not None:
        tweak(params)
    return Simulation(params, root, echo=echo, node_factory=node_factory).run()
