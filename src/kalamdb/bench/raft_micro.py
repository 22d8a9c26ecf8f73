"""Micro benchmark of the Raft core's CPU cost on the leader, no I/O at all.

One round = propose N commands, take the Ready (entries + one AppendEntries per follower), advance,
step the acknowledgements of 2 followers, take the Ready that carries the N committed entries,
advance. Also reported: the same round plus the msgpack encode/decode of every message, which is
what the driver pays on top.

    python -m kalamdb.bench.raft_micro [--batch 100] [--rounds 3000] [--json]
"""

from __future__ import annotations

import json
import random
import statistics
import time

import click
import msgpack

from kalamdb.raft.core import RaftConfig, RaftCore, Role
from kalamdb.raft.messages import Message, MsgType
from kalamdb.raft.types import Membership, PersistentState


def make_leader() -> RaftCore:
    """A 3-voter leader with both followers in REPLICATE state and the no-op committed."""
    core = RaftCore(RaftConfig(1, pre_vote=False), PersistentState(), random.Random(1))
    core.bootstrap(Membership(frozenset({1, 2, 3})))
    core.campaign()
    for v in (2, 3):
        core.step(Message(MsgType.VOTE_RESP, 1, v, core.term))
    assert core.role is Role.LEADER
    rd = core.ready()
    core.advance(rd)
    for v in (2, 3):
        core.step(Message(MsgType.APP_RESP, 1, v, core.term, index=core.last_index))
    core.advance(core.ready())
    return core


def one_round(core: RaftCore, payloads: list[bytes], wire: bool) -> None:
    for p in payloads:
        core.propose(p)
    rd = core.ready()
    if wire:
        for m in rd.messages:
            Message.from_wire(msgpack.unpackb(msgpack.packb(m.to_wire())))
    core.advance(rd)
    last = core.last_index
    term = core.term
    for v in (2, 3):
        ack = Message(MsgType.APP_RESP, 1, v, term, index=last)
        if wire:
            ack = Message.from_wire(msgpack.unpackb(msgpack.packb(ack.to_wire())))
        core.step(ack)
    rd = core.ready()
    assert len(rd.committed) == len(payloads) and core.commit_index == last
    core.advance(rd)


def measure(batch: int, rounds: int, wire: bool) -> dict:
    core = make_leader()
    payloads = [b"x" * 64 for _ in range(batch)]
    for _ in range(50):
        one_round(core, payloads, wire)  # warm up
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        one_round(core, payloads, wire)
        samples.append(time.perf_counter() - t0)
        if core.last_index > 200_000:  # keep memory flat, as a real node would via snapshots
            meta = core.snapshot_meta_at(core.applied_index)
            core.compact(meta)
    samples.sort()
    return {
        "batch": batch,
        "wire": wire,
        "rounds": rounds,
        "p50_us": round(statistics.median(samples) * 1e6, 1),
        "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        "per_entry_us": round(statistics.median(samples) * 1e6 / batch, 2),
        "entries_per_s": round(batch / statistics.median(samples)),
    }


@click.command()
@click.option("--batch", default=100, show_default=True, help="proposals per round")
@click.option("--rounds", default=3000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON lines")
def main(batch: int, rounds: int, as_json: bool) -> None:
    """Leader CPU cost per batch of proposals (target: < 1 ms for 100)."""
    for wire in (False, True):
        r = measure(batch, rounds, wire)
        if as_json:
            click.echo(json.dumps(r))
        else:
            label = "core + msgpack wire" if wire else "core only"
            click.echo(f"{label:22s} batch={batch}: p50 {r['p50_us']} us, p99 {r['p99_us']} us, "
                       f"{r['per_entry_us']} us/entry, {r['entries_per_s']:,} entries/s")


if __name__ == "__main__":
    main()
