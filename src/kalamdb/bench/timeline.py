"""Where one replicated write's time goes, hand-off by hand-off, on a real 3-node cluster.

    python -m kalamdb.bench.timeline [--target random|leader] [--duration 4] [--json FILE]

One client writes one row at a time (so exactly one write is in flight), to random members or to
the leader. Each node runs with `timeline_hook` (installed through a `sitecustomize` put first on
its PYTHONPATH, as `--profile-dir` does), which stamps the moments a write passes: the request
read, its hand-off to the Raft thread, the leader's appends, every fsync, each follower's append
and ack, the leader's commit, the commit notice, the apply and the answer. All stamps come from
one clock (CLOCK_MONOTONIC), so the three nodes' events merge into one timeline per write.

It prints, for writes the leader took and for writes a follower forwarded, the median and p90 of
each sequential stage of a write and of a few parallel ones (the fsyncs), and which of the two
conditions of the commit came last: the leader's own fsync or a follower's ack. The stamps cost a
few microseconds each, so a traced write is a little slower than an untraced one: the stages are
for comparing, not for quoting as the write's latency (the bench does that).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kalamdb.bench import cluster as kc
from kalamdb.bench.load import closed_loop, new_session
from kalamdb.bench.profile_hook import pythonpath_with_sitecustomize
from kalamdb.bench.timeline_hook import TIMELINE_ENV

_SITECUSTOMIZE = f'''\
import os
_dir = os.environ.get("{TIMELINE_ENV}")
if _dir:
    from kalamdb.bench import timeline_hook

    timeline_hook.install(_dir)
'''

# The sequential stages of a write: (name, from event, to event); `L.` = on the leader, `O.` = on
# the node the client sent the write to (for a leader write, the same node).
_REQUEST = ("HTTP request read, SQL prepared", "O.request", "O.submitted")
_APPLY_AND_ANSWER = [
    ("apply (SQLite transaction)", "O.apply-begin", "O.apply-end"),
    ("answer written", "O.apply-end", "O.response"),
]
LEADER_STAGES = [
    _REQUEST,
    ("hand-off to the Raft thread", "O.submitted", "L.proposed"),
    ("Raft step, appends written", "L.proposed", "L.appends-sent"),
    ("replication: fsyncs and an ack", "L.appends-sent", "L.commit-handed"),
    ("hand-off to the apply", "L.commit-handed", "O.apply-begin"),
    *_APPLY_AND_ANSWER,
]
FORWARDED_STAGES = [
    _REQUEST,
    ("hand-off to the Raft thread", "O.submitted", "O.forwarded"),
    ("proposal to the leader", "O.forwarded", "L.proposal-in"),
    ("Raft step, appends written", "L.proposal-in", "L.appends-sent"),
    ("replication: fsyncs and an ack", "L.appends-sent", "L.commit-handed"),
    ("commit notice to the origin", "L.commit-handed", "O.commit-handed"),
    ("hand-off to the apply", "O.commit-handed", "O.apply-begin"),
    *_APPLY_AND_ANSWER,
]
PARALLEL = [
    ("leader fsync", "L.fsync-begin", "L.fsync-end"),
    ("first follower: append in -> ack sent", "F1.append-in", "F1.ack-sent"),
    ("second follower: append in -> ack sent", "F2.append-in", "F2.ack-sent"),
]


@dataclass
class Write:
    origin: int
    start: int
    events: list[tuple[int, int, str]] = field(default_factory=list)  # (ns, node, event)

    def first(self, node: int, event: str, after: int = 0) -> int | None:
        for t, n, e in self.events:
            if n == node and e == event and t >= after:
                return t
        return None


def load_events(directory: Path) -> list[tuple[int, int, str]]:
    """Every node's stamps, merged in time order; a hook that could not install is an error."""
    events: list[tuple[int, int, str]] = []
    for path in sorted(directory.glob("node*.events")):
        node = int(path.stem.removeprefix("node"))
        for line in path.read_text().splitlines():
            t, _, event = line.partition(" ")
            if event.startswith("hook-error"):
                raise RuntimeError(f"node {node}: the timeline hook did not install: {event}")
            events.append((int(t), node, event))
    events.sort()
    return events


def split_writes(events: list[tuple[int, int, str]]) -> list[Write]:
    """One write per `request` (one client: nothing else is in flight), with the events until the next."""
    writes: list[Write] = []
    for t, node, event in events:
        if event == "request":
            writes.append(Write(node, t))
        if writes:
            writes[-1].events.append((t, node, event))
    return writes


def milestones(w: Write, leader: int) -> dict[str, int] | None:
    """The write's moments by name (see the stage tables), or None for an incomplete write."""
    o, t0 = w.origin, w.start
    m: dict[str, int | None] = {"O.request": t0, "O.submitted": w.first(o, "submitted", t0)}
    if o == leader:
        m["L.proposed"] = proposed = w.first(leader, "proposed", t0)
    else:
        m["O.forwarded"] = w.first(o, "forwarded", t0)
        m["L.proposal-in"] = proposed = w.first(leader, "proposal-in", t0)
    if proposed is None:
        return None
    m["L.appends-sent"] = sent = w.first(leader, "appends-sent", proposed)
    if sent is None:
        return None
    m["L.fsync-begin"] = w.first(leader, "fsync-begin", proposed)
    m["L.fsync-end"] = w.first(leader, "fsync-end", proposed)
    m["L.ack-in"] = w.first(leader, "ack-in", sent)
    m["L.commit-handed"] = handed = w.first(leader, "commit-handed", sent)
    if handed is None:
        return None
    if o != leader:
        m["O.commit-handed"] = handed = w.first(o, "commit-handed", handed)
        if handed is None:
            return None
    m["O.apply-begin"] = w.first(o, "apply-begin", handed)
    m["O.apply-end"] = w.first(o, "apply-end", handed)
    m["O.response"] = w.first(o, "response", handed)
    followers = []
    for node in sorted({n for _, n, _ in w.events} - {leader}):
        appended = w.first(node, "append-in", t0)
        if appended is None:
            continue
        acked = w.first(node, "ack-sent", appended)
        followers.append((acked or 2**62, appended, acked))
    for i, (_, appended, acked) in enumerate(sorted(followers)[:2], 1):
        m[f"F{i}.append-in"], m[f"F{i}.ack-sent"] = appended, acked
    if any(v is None for k, v in m.items() if k.startswith("O.")):
        return None
    return {k: v for k, v in m.items() if v is not None}


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"n": len(values), "p50_us": round(statistics.median(values), 1),
            "p90_us": round(values[min(len(values) - 1, int(0.9 * len(values)))], 1)}


def summarize(writes: list[Write], leader: int) -> dict[str, Any]:
    """Per kind of write (`leader`, `forwarded`): each stage's p50/p90 in µs, and what the commit waited for."""
    out: dict[str, Any] = {}
    for kind, stages in (("leader", LEADER_STAGES), ("forwarded", FORWARDED_STAGES)):
        ms = [m for w in writes if (w.origin == leader) == (kind == "leader")
              and (m := milestones(w, leader)) is not None]
        if not ms:
            continue
        rows = []
        for name, a, b in stages + PARALLEL:
            gaps = [(m[b] - m[a]) / 1000 for m in ms if a in m and b in m]
            if gaps:
                rows.append({"stage": name, "parallel": (name, a, b) in PARALLEL, **_stats(gaps)})
        total = [(m["O.response"] - m["O.request"]) / 1000 for m in ms]
        own = sum(1 for m in ms if "L.fsync-end" in m and "L.ack-in" in m and m["L.fsync-end"] > m["L.ack-in"])
        out[kind] = {"writes": len(ms), "total": _stats(total), "stages": rows,
                     "commit_waited_for_leader_fsync": round(own / len(ms), 3)}
    return out


def render(summary: dict[str, Any]) -> str:
    lines = []
    for kind, doc in summary.items():
        total = doc["total"]
        lines.append(f"--- {kind} writes: {doc['writes']}, request to answer p50 {total['p50_us']:.0f} µs, "
                     f"p90 {total['p90_us']:.0f} µs")
        for row in doc["stages"]:
            mark = "  (in parallel)" if row["parallel"] else ""
            lines.append(f"  {row['stage']:42} p50 {row['p50_us']:7.0f} µs   p90 {row['p90_us']:7.0f} µs{mark}")
        share = doc["commit_waited_for_leader_fsync"]
        lines.append(f"  the commit waited for the leader's own fsync in {share:.0%} of the writes, "
                     f"for a follower's ack in {1 - share:.0%}")
    return "\n".join(lines)


def hook_env(events_dir: Path) -> dict[str, str]:
    """Environment for node processes that makes each stamp its write path into `events_dir`."""
    return {"PYTHONPATH": pythonpath_with_sitecustomize(_SITECUSTOMIZE, "kalamdb-timeline-hook-"),
            TIMELINE_ENV: str(events_dir.resolve())}


def run(*, target: str, duration: float, warmup: float, events_dir: Path) -> tuple[dict[str, Any], dict]:
    """Start a traced cluster, write with one client, stop it; (summary, the load's own figures)."""
    events_dir.mkdir(parents=True, exist_ok=True)
    cluster = kc.start_kalamdb(extra_env=hook_env(events_dir))
    try:
        kc.create_table(cluster)
        leader = cluster.leader().node_id
        load = kc.insert_target(kc.node_urls(cluster, target), kc.basic_auth(cluster.root_password))

        async def go() -> Any:
            async with new_session(1) as session:
                return await closed_loop(session, load, clients=1, duration=duration, warmup=warmup,
                                         seed=1, op_counter=itertools.count(1))

        result = kc.run_async(go())
        if cluster.leader().node_id != leader:
            raise RuntimeError("the leader changed during the run: stages would mix two leaders")
    finally:
        cluster.shutdown()  # the nodes write their last stamps as they exit
    writes = split_writes(load_events(events_dir))
    cut = sum(1 for w in writes if w.start < writes[0].start + int(warmup * 1e9)) if writes else 0
    return summarize(writes[cut:], leader), result.summary()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("random", "leader"), default="random")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--events-dir", type=Path, help="keep the raw stamps here (default: a temporary directory)")
    a = ap.parse_args(argv)
    if a.duration <= 0 or a.warmup < 0:
        ap.error("--duration must be > 0 and --warmup >= 0")
    events_dir = a.events_dir or Path(tempfile.mkdtemp(prefix="kalamdb-timeline-"))
    try:
        summary, load = run(target=a.target, duration=a.duration, warmup=a.warmup, events_dir=events_dir)
    finally:
        if a.events_dir is None:
            shutil.rmtree(events_dir, ignore_errors=True)
    print(f"1 client, writes to {a.target} members: {load['ops_per_s']}/s, p50 {load['p50_ms']} ms "
          f"(traced), load average {os.getloadavg()[0]:.2f}")
    print(render(summary))
    if a.json:
        a.json.write_text(json.dumps({"target": a.target, "load": load, "timeline": summary}, indent=1))


if __name__ == "__main__":
    main()
