"""The fault schedule and the cluster operator.

The nemesis draws a fault every so often (kind by the run's weights): crashes of one node, the
leader, a minority or the whole cluster (each restarted later from its disk), partitions (random,
leader isolated, asymmetric), clogged links, slow disks, membership changes and leadership
transfers. Membership changes only move a *target*; the operator reconciles the real membership
toward it the way an admin tool would (add as learner, promote when caught up, remove, and
decommission nodes that left), one change at a time, through the leader.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from kalamdb.raft.core import RaftCore, RaftError
from kalamdb.raft.messages import MsgType
from kalamdb.sim.params import FAULT_KINDS

if TYPE_CHECKING:
    from kalamdb.sim.simulation import Simulation


class Nemesis:
    __slots__ = (
        "active",
        "faults",
        "kinds",
        "rng",
        "sim",
        "spares",
        "target_learners",
        "target_voters",
        "weights",
    )

    def __init__(self, sim: Simulation, rng: random.Random, voters: set[int], spares: list[int]) -> None:
        self.sim = sim
        self.rng = rng
        self.target_voters = set(voters)
        self.target_learners: set[int] = set()
        self.spares = list(spares)
        self.active = False
        w = sim.params.fault_weights
        self.kinds = [k for k in FAULT_KINDS if w.get(k, 0) > 0]
        self.weights = [w[k] for k in self.kinds]
        self.faults = 0

    @property
    def target_members(self) -> set[int]:
        return self.target_voters | self.target_learners

    def start(self) -> None:
        self.active = bool(self.kinds)
        p = self.sim.params
        if self.active:
            self.sim.loop.after(self._gap(), self._fault)
        self.sim.loop.after(p.tick * p.election_ticks, self._operate)

    def stop(self) -> None:
        self.active = False

    def _gap(self) -> int:
        return 1 + int(self.rng.expovariate(1.0 / self.sim.params.fault_interval))

    def _duration(self) -> int:
        p = self.sim.params
        return self.rng.randint(p.tick, p.fault_duration_max)

    # --- faults -----------------------------------------------------------------------------------
    def _fault(self) -> None:
        if not self.active:
            return
        kind = self.rng.choices(self.kinds, self.weights)[0]
        self.faults += 1
        getattr(self, "_" + kind)()
        self.sim.loop.after(self._gap(), self._fault)

    def _live(self) -> list:
        return [n for n in self.sim.node_list if n.up]

    def _crash(self, nodes: list) -> None:
        p = self.sim.params
        for n in nodes:
            n.crash()
            self.sim.loop.after(self.rng.randint(p.down_time_min, p.down_time_max), self._restart, n.id)

    def _restart(self, node_id: int) -> None:
        node = self.sim.nodes[node_id]
        if not node.up and not node.removed:
            node.start()

    def crash_now(self, node_id: int, incarnation: int, down: int) -> None:
        node = self.sim.nodes[node_id]
        if node.up and node.incarnation == incarnation:
            node.crash()
            self.sim.loop.after(down, self._restart, node_id)

    def _crash_point(self) -> None:
        """Arm a node to crash right after it next sends a vote grant or an append ack: the
        instants where a driver that answers before its fsync would lose what it promised."""
        live = self._live()
        if live:
            node = self.rng.choice(live)
            mtype = self.rng.choice((MsgType.VOTE_RESP, MsgType.APP_RESP, MsgType.PRE_VOTE_RESP, MsgType.APP))
            p = self.sim.params
            node.crash_point = (mtype, self.rng.randint(p.down_time_min, p.down_time_max))

    def _crash_one(self) -> None:
        live = self._live()
        if live:
            self._crash([self.rng.choice(live)])

    def _crash_leader(self) -> None:
        leader = self.sim.leader()
        if leader is not None:
            self._crash([leader])

    def _crash_minority(self) -> None:
        voters = [n for n in self._live() if n.id in self.target_voters]
        k = max(1, (len(self.target_voters) - 1) // 2)
        if voters:
            self._crash(self.rng.sample(voters, min(k, len(voters))))

    def _crash_all(self) -> None:
        self.sim.trace.add(0, "fault", "crash the whole cluster")
        self._crash(self._live())

    def _partition(self) -> None:
        ids = [n.id for n in self.sim.node_list]
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        a, b = sorted(ids[:cut]), sorted(ids[cut:])
        self.sim.net.partition(a, b)
        self.sim.trace.add(0, "fault", f"partition {a} | {b}")
        self.sim.loop.after(self._duration(), self._heal)

    def _isolate_leader(self) -> None:
        leader = self.sim.leader()
        if leader is None:
            return
        rest = [n.id for n in self.sim.node_list if n.id != leader.id]
        self.sim.net.partition([leader.id], rest)
        self.sim.trace.add(0, "fault", f"isolate leader n{leader.id}")
        self.sim.loop.after(self._duration(), self._heal)

    def _asymmetric(self) -> None:
        ids = [n.id for n in self.sim.node_list]
        src, dst = self.rng.sample(ids, 2)
        leader = self.sim.leader()
        if leader is not None and self.rng.random() < 0.5:  # the classic: leader can't reach a follower
            src = leader.id
            dst = self.rng.choice([i for i in ids if i != src])
        self.sim.net.block(src, dst)
        self.sim.trace.add(0, "fault", f"block n{src} -> n{dst}")
        self.sim.loop.after(self._duration(), self._heal)

    def _clog(self) -> None:
        ids = [n.id for n in self.sim.node_list]
        src, dst = self.rng.sample(ids, 2)
        self.sim.net.clog(src, dst)
        self.sim.trace.add(0, "fault", f"clog n{src} -> n{dst}")
        self.sim.loop.after(self._duration(), self._unclog)

    def _heal(self) -> None:
        self.sim.net.heal()
        self.sim.trace.add(0, "heal", "network")

    def _unclog(self) -> None:
        self.sim.net.unclog_all()
        self.sim.trace.add(0, "heal", "unclog")

    def _slow_disk(self) -> None:
        node = self.rng.choice(self.sim.node_list)
        node.slow_disk = True
        self.sim.trace.add(node.id, "fault", "slow disk")
        self.sim.loop.after(self._duration(), self._fast_disk, node.id)

    def _fast_disk(self, node_id: int) -> None:
        self.sim.nodes[node_id].slow_disk = False

    def _add_learner(self) -> None:
        if not self.spares:
            return
        node_id = self.spares.pop(0)
        if self.rng.random() < 0.5:
            self.target_voters.add(node_id)  # add as learner, then promote once caught up
        else:
            self.target_learners.add(node_id)
        self.sim.nodes[node_id].start()
        self.sim.trace.add(0, "member", f"target += n{node_id} voters {sorted(self.target_voters)} "
                           f"learners {sorted(self.target_learners)}")

    def _promote(self) -> None:
        if self.target_learners:
            node_id = self.rng.choice(sorted(self.target_learners))
            self.target_learners.discard(node_id)
            self.target_voters.add(node_id)
            self.sim.trace.add(0, "member", f"target promote n{node_id}")

    def _remove(self) -> None:
        if self.target_learners and self.rng.random() < 0.3:
            node_id = self.rng.choice(sorted(self.target_learners))
            self.target_learners.discard(node_id)
        elif len(self.target_voters) > 2:
            node_id = self.rng.choice(sorted(self.target_voters))
            self.target_voters.discard(node_id)
        else:
            return
        self.sim.trace.add(0, "member", f"target -= n{node_id}")

    def _transfer(self) -> None:
        leader = self.sim.leader()
        if leader is None:
            return
        others = sorted(v for v in leader.core.membership.voters if v != leader.id)
        if others:
            target = self.rng.choice(others)
            try:
                leader.core.transfer_leadership(target)
            except (RaftError, ValueError) as exc:
                self.sim.trace.add(leader.id, "transfer", f"refused: {exc}")
                return
            self.sim.trace.add(leader.id, "transfer", f"to n{target}")
            leader.kick()

    # --- the operator -----------------------------------------------------------------------------
    def _operate(self) -> None:
        sim = self.sim
        p = sim.params
        sim.loop.after(p.tick * p.election_ticks, self._operate)
        leader = sim.leader()
        if leader is None:
            return
        core = leader.core
        m = core.membership
        if m.is_joint or core.pending_conf_index > core.commit_index:
            return
        want = self.target_members
        try:
            add = sorted(want - m.members)
            if add:
                what, index = f"add learner n{add[0]}", core.add_learner(add[0])
            else:
                last = core.last_index
                prs = core.progress
                ready = {n for n in self.target_voters & m.learners if n in prs and prs[n].match >= last - 4}
                voters = (m.voters & self.target_voters) | ready
                drop = sorted(m.learners - want)
                if voters and voters != m.voters:
                    what, index = f"voters -> {sorted(voters)}", core.change_membership(voters)
                elif drop:
                    what, index = f"remove learner n{drop[0]}", core.remove_learner(drop[0])
                else:
                    self._decommission(core)
                    return
        except (RaftError, ValueError) as exc:
            sim.trace.add(leader.id, "member", f"refused: {exc}")
            return
        sim.trace.add(leader.id, "member", f"{what} at index {index}")
        leader.kick()

    def _decommission(self, core: RaftCore) -> None:
        """Stop nodes that left the cluster (their removal is committed): an operator's last step."""
        committed = core.membership_at(core.commit_index).members
        want = self.target_members
        for node in self.sim.node_list:
            if node.id not in want and node.id not in committed and not node.removed and node.incarnation:
                node.removed = True
                if node.up:
                    node.crash()
                self.sim.trace.add(node.id, "decommission", "left the cluster")
