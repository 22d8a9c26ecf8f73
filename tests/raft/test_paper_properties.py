"""The five safety properties of the Raft paper (Figure 3), checked after every step of seeded random
runs with partitions, message loss and reordering, crashes and restarts, and compaction."""

from __future__ import annotations

import contextlib
import random

import pytest

from kalamdb.raft.core import ProposalRejected, Role
from tests.raft.memnet import MemCluster


class SafetyChecker:
    """Accumulates history across checks so properties spanning time can be verified."""

    def __init__(self, cluster: MemCluster, seed: int):
        self.c = cluster
        self.seed = seed
        self.leader_of_term: dict[int, int] = {}
        self.leader_logs: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) ever committed

    def fail(self, what: str) -> None:
        raise AssertionError(f"{what} (seed={self.seed})")

    def check(self) -> None:
        c = self.c
        cores = {i: n.core for i, n in c.nodes.items()}
        for i, core in cores.items():
            if core.role is Role.LEADER:
                # Election Safety: at most one leader per term
                prev = self.leader_of_term.setdefault(core.term, i)
                if prev != i:
                    self.fail(f"two leaders in term {core.term}: {prev} and {i}")
                # Leader Append-Only: a leader never overwrites or deletes its entries
                log = [(e.index, e.term, e.data) for e in core.log.entries]
                key = (i, core.term)
                old = self.leader_logs.get(key)
                if old is not None:
                    have = {e[0]: e for e in log}
                    for e in old:
                        if e[0] >= core.log.first_index and have.get(e[0]) != e:
                            self.fail(f"leader {i} changed entry {e[0]} in term {core.term}")
                self.leader_logs[key] = log
        # record committed entries; committed entries must never change (State Machine Safety)
        for i, core in cores.items():
            for e in core.entries(max(core.log.first_index, core.commit - 50), core.commit):
                prev = self.committed.setdefault(e.index, (e.term, e.data))
                if prev != (e.term, e.data):
                    self.fail(f"index {e.index} committed as {prev} and as {(e.term, e.data)} on {i}")
        # Log Matching: same index and term => identical prefixes (checked on overlapping windows)
        ids = sorted(cores)
        for a_pos, a in enumerate(ids):
            for b in ids[a_pos + 1:]:
                la, lb = cores[a].log, cores[b].log
                lo = max(la.first_index, lb.first_index)
                hi = min(la.last_index, lb.last_index)
                matched = False
                for idx in range(hi, lo - 1, -1):
                    ta, tb = la.term(idx), lb.term(idx)
                    if matched:
                        ea, eb = la.slice(idx, idx)[0], lb.slice(idx, idx)[0]
                        if (ea.term, ea.data, ea.kind) != (eb.term, eb.data, eb.kind):
                            self.fail(f"log matching violated at {idx} between {a} and {b}")
                    elif ta == tb:
                        matched = True
        # Leader Completeness: every committed entry is in the log of every leader of a later term
        for i, core in cores.items():
            if core.role is Role.LEADER:
                for idx, (term, data) in self.committed.items():
                    if term < core.term and idx > core.log.snap_index:
                        t = core.log.term(idx)
                        if t != term:
                            self.fail(f"leader {i} (term {core.term}) lacks committed entry {idx}")
        # State Machine Safety on applied commands: every node applied a prefix of one history
        for i, n in c.nodes.items():
            for idx, data in n.applied[-20:]:
                if self.committed.get(idx, (None, data))[1] != data:
                    self.fail(f"node {i} applied {data!r} at {idx}, committed was {self.committed[idx]}")


def reconfigure(c: MemCluster, rng: random.Random, ids: list[int]) -> None:
    """One random membership step or leadership transfer; refusals are part of the protocol."""
    lid = c.leader()
    if lid is None:
        return
    core = c.core(lid)
    m = core.membership
    choice = rng.random()
    try:
        if choice < 0.3 and len(m.voters) > 3:
            core.change_membership(m.voters - {rng.choice(sorted(m.voters))})  # maybe the leader itself
        elif choice < 0.55:
            outside = [i for i in ids if i not in m.members]
            if outside:
                core.add_learner(rng.choice(outside))
        elif choice < 0.8 and m.learners:
            core.change_membership(m.voters | m.learners)  # 1 or more voters: direct or joint
        else:
            core.transfer_leadership(rng.choice(sorted(m.voters)))
    except (ProposalRejected, ValueError):
        return
    c.stabilize()


def random_run(seed: int, steps: int, n_nodes: int = 5, reconfig: bool = False) -> SafetyChecker:
    rng = random.Random(seed)
    ids = list(range(1, n_nodes + 1))
    c = MemCluster(ids, seed=seed, voters=ids, election_ticks=10)
    c.reorder = random.Random(seed + 1)
    loss = rng.choice([0.0, 0.02, 0.1])
    c.drop = lambda m: rng.random() < loss
    checker = SafetyChecker(c, seed)
    counter = 0
    for _ in range(steps):
        r = rng.random()
        if r < 0.5:
            c.tick()
        elif r < 0.8:
            lid = c.leader()
            if lid is not None:
                counter += 1
                with contextlib.suppress(ProposalRejected):  # e.g. a leadership transfer is running
                    c.core(lid).propose(b"cmd-%d" % counter)
            c.stabilize()
        elif r < 0.83 and reconfig:
            reconfigure(c, rng, ids)
        elif r < 0.84:
            shuffled = ids[:]
            rng.shuffle(shuffled)
            k = rng.randrange(1, n_nodes)
            c.partition(shuffled[:k], shuffled[k:])
        elif r < 0.9:
            c.heal()
        elif r < 0.94:
            down = [i for i in ids if not c.nodes[i].up]
            if down:
                c.restart(down[0])
            else:
                c.crash(rng.choice(ids))
        else:
            i = rng.choice(ids)
            node = c.nodes[i]
            if node.up and node.core.applied_index > node.core.log.snap_index:
                node.take_snapshot()
        checker.check()
    # liveness at the end: heal everything, restart the dead, and a leader commits a new entry
    c.heal()
    c.drop = None
    for i in ids:
        if not c.nodes[i].up:
            c.restart(i)
    c.elect(max_ticks=400)
    c.run_until(lambda: c.leader() is not None and c.core(c.leader()).lead_transferee is None, 100)
    members = sorted(c.core(c.leader()).membership.members)
    idx = c.propose(b"final")
    c.wait_applied(idx, ids=members, max_ticks=400)
    checker.check()
    datas = [c.nodes[i].applied_data for i in members]
    assert all(d == datas[0] for d in datas), f"replicas differ (seed={seed})"
    assert datas[0][-1] == b"final"
    return checker


@pytest.mark.parametrize("seed", range(12))
def test_paper_safety_properties_under_random_faults(seed):
    checker = random_run(seed, steps=400)
    assert checker.leader_of_term, f"no leader was ever elected (seed={seed})"
    assert len(checker.committed) > 5, f"too little progress to be meaningful (seed={seed})"


@pytest.mark.parametrize("seed", range(100, 108))
def test_paper_safety_properties_with_membership_changes_and_transfers(seed):
    checker = random_run(seed, steps=400, reconfig=True)
    assert len(checker.committed) > 5, f"too little progress to be meaningful (seed={seed})"
