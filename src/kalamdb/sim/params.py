"""Everything a run depends on, drawn from its seed (swarm testing: each seed also picks the cluster
size, fault rates and timeouts, so a batch of seeds covers many differently-shaped runs)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kalamdb.sim.loop import MS, SECOND
from kalamdb.sim.network import NetworkConfig

FAULT_KINDS = ("crash_one", "crash_point", "crash_leader", "crash_minority", "crash_all", "partition", "isolate_leader",
               "asymmetric", "clog", "slow_disk", "add_learner", "promote", "remove", "transfer")


def child_rng(parent: random.Random) -> random.Random:
    """A new independent branch of the seed's random tree."""
    return random.Random(parent.getrandbits(64))


@dataclass(slots=True)
class SimParams:
    seed: int
    nodes: int = 3  # initial voters
    spares: int = 0  # extra node ids that membership changes may add
    fault_time: int = 10 * SECOND  # simulated time with faults and client load
    liveness_bound: int = 10 * SECOND  # after healing, everything must settle within this
    tick: int = 10 * MS
    tick_phase: int = 10 * MS  # a node's first tick comes within this: small = clocks in lockstep
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    net: NetworkConfig = field(default_factory=NetworkConfig)
    fsync_min: int = 50  # microseconds
    fsync_max: int = 500
    slow_fsync: int = 30 * MS  # a slow disk's fsync time
    fault_interval: int = 400 * MS  # mean time between faults
    fault_weights: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in FAULT_KINDS})
    crash_on_promise: float = 0.0  # chance a node crashes right after sending a vote grant or append ack
    down_time_min: int = 200  # a supervised process can be back almost at once
    down_time_max: int = 1 * SECOND  # how long a crashed node stays down
    fault_duration_max: int = 1 * SECOND  # how long a partition/clog/slow disk lasts
    propose_interval: int = 20 * MS  # mean time between client writes
    read_interval: int = 50 * MS  # mean time between ReadIndex reads
    keys: int = 8
    max_pending: int = 8  # client writes in flight
    retry_after: int = 300 * MS  # a write not acknowledged by then is re-proposed
    snapshot_every: int = 64  # applied entries between state-machine snapshots (0 = never)
    check_every: int = 500 * MS  # period of the (heavier) log-matching check
    max_inflight: int = 256
    max_entries_per_msg: int = 1024
    snapshot_chunk_bytes: int = 1 << 20
    wire: bool = False  # pass every message through msgpack + Message.from_wire (validation included)
    leader_early_send: bool = False  # a leader with durable term/vote sends before its own fsync (as the real driver)
    send_while_syncing: bool = False  # what may leave during an fsync does (core.take_early_messages, as the real driver)
    grow: bool = False  # form the cluster OpenRaft-style: n1 alone, the rest added as learners, promoted

    @classmethod
    def draw(cls, seed: int, nodes: int | None = None, seconds: float | None = None,
             rng: random.Random | None = None) -> SimParams:
        """Swarm: draw a run's shape from its seed. Fixed `nodes`/`seconds` override the draw."""
        r = rng if rng is not None else random.Random(seed)
        n = nodes if nodes is not None else r.choice((3, 3, 3, 4, 5, 5, 6, 7))
        election = r.choice((5, 8, 10, 15))
        heartbeat = r.choice((1, 1, 2, 3)) if election >= 8 else 1
        tick = r.choice((10, 10, 20, 50)) * MS
        calm = r.random() < 0.15  # some runs without network misbehaviour at all
        net = NetworkConfig(
            min_delay=r.choice((50, 100, 200)),
            max_delay=r.choice((500, 1_000, 3_000, 8_000)),
            loss=0.0 if calm else r.choice((0.0, 0.01, 0.05, 0.15)),
            duplicate=0.0 if calm else r.choice((0.0, 0.01, 0.05)),
            reorder=0.0 if calm else r.choice((0.0, 0.02, 0.1)),
            reorder_delay=r.choice((5, 20, 60)) * MS,
        )
        weights = {k: r.choice((0.0, 0.5, 1.0, 2.0)) for k in FAULT_KINDS}
        timeout = tick * election
        inflight = r.choice((1, 4, 256))
        return cls(
            seed=seed,
            nodes=n,
            spares=r.choice((0, 1, 2)),
            fault_time=int((seconds if seconds is not None else 10.0) * SECOND),
            liveness_bound=max(5 * SECOND, 40 * timeout),
            tick=tick,
            tick_phase=tick if r.random() < 0.7 else r.choice((100, 1_000)),
            election_ticks=election,
            heartbeat_ticks=heartbeat,
            net=net,
            fsync_min=r.choice((10, 50, 200)),
            fsync_max=r.choice((300, 1_000, 3_000)),
            slow_fsync=r.choice((10, 30, 100)) * MS,
            fault_interval=r.choice((100, 300, 800, 2_000)) * MS,
            fault_weights=weights,
            crash_on_promise=r.choice((0.0, 0.0, 0.0, 0.01, 0.05)),
            down_time_min=r.choice((200, tick)),
            down_time_max=r.choice((2, 5, 20)) * timeout,
            fault_duration_max=r.choice((2, 5, 20)) * timeout,
            propose_interval=r.choice((5, 10, 20, 50)) * MS,
            read_interval=r.choice((10, 30, 100)) * MS,
            keys=r.choice((1, 4, 16)),
            max_pending=r.choice((1, 4, 16)),
            retry_after=r.choice((3, 10)) * timeout,
            snapshot_every=r.choice((0, 16, 64, 256)),
            max_inflight=inflight,
            max_entries_per_msg=r.choice((16, 1024)) if inflight == 1 else r.choice((1, 4, 64, 1024)),
            snapshot_chunk_bytes=r.choice((64, 512, 1 << 20)),
            grow=r.random() < 0.3,
            pre_vote=r.random() < 0.8,
            check_quorum=r.random() < 0.8,
            wire=r.random() < 0.25,  # drawn after the rest: adding it re-mapped no earlier seed
            leader_early_send=r.random() < 0.5,  # likewise
            send_while_syncing=r.random() < 0.5,  # likewise
        )


def aggressive(params: SimParams) -> None:
    """Fault-heavy shape for hunting durability and election bugs: frequent crashes (often of the
    leader or of everyone, often right after a vote grant or append ack, back almost at once),
    clocks in lockstep and no pre-vote (split votes), one entry per append, slowish disks."""
    timeout = params.tick * params.election_ticks
    params.fault_interval = 2 * timeout
    params.fault_weights = {"crash_point": 3.0, "crash_one": 2.0, "crash_leader": 2.0, "crash_minority": 1.0,
                            "crash_all": 1.0, "partition": 1.0, "isolate_leader": 1.0, "asymmetric": 0.5,
                            "clog": 0.5, "slow_disk": 1.0, "transfer": 0.5}
    params.down_time_max = max(params.tick, timeout // 2)
    params.fault_duration_max = 4 * timeout
    params.fsync_min, params.fsync_max = 500, 5 * MS
    params.max_entries_per_msg = 1
    params.max_inflight = 1
    params.crash_on_promise = 0.2
    params.down_time_min = 100
    params.tick_phase = min(params.tick_phase, 1_000)
    params.propose_interval = min(params.propose_interval, 10 * MS)
    params.max_pending = max(params.max_pending, 4)
    params.net.loss = max(params.net.loss, 0.05)
    params.net.duplicate = 0.1
    params.net.reorder = 0.2
    params.net.reorder_delay = 3 * MS
    params.pre_vote = False
    params.grow = False  # one entry per round trip cannot catch up whole learners within the bound


def membership(params: SimParams) -> None:
    """Membership churn under whole-cluster crashes: n1 starts alone, the rest join as learners and
    are promoted, voters get removed (the leader too), spares are added."""
    params.grow = True
    params.spares = max(params.spares, 2)
    params.fault_weights = {"add_learner": 2.0, "promote": 2.0, "remove": 2.0, "crash_all": 1.0,
                            "crash_leader": 1.0, "crash_one": 1.0, "partition": 0.5, "transfer": 0.5}
    params.fault_interval = 2 * params.tick * params.election_ticks


PROFILES = {"swarm": None, "aggressive": aggressive, "membership": membership}
