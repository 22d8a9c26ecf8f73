"""`python -m kalamdb.bench.timeline`: one write's stages from the nodes' stamps.

The vectors check the arithmetic on hand-made timelines; the real run checks that every hooked
method still exists and is passed by a write (a renamed method shows up as a missing stage or a
`hook-error`), not how fast anything is."""

from __future__ import annotations

import pytest

from kalamdb.bench import timeline as tl

US = 1000  # stamps are in ns


def leader_write(t0: int) -> list[tuple[int, int, str]]:
    """A write sent to the leader (node 1); node 2 acks first, node 3 later."""
    return [
        (t0, 1, "request"), (t0 + 100 * US, 1, "submitted"), (t0 + 150 * US, 1, "proposed"),
        (t0 + 300 * US, 1, "appends-sent"), (t0 + 310 * US, 1, "fsync-begin"),
        (t0 + 350 * US, 2, "append-in"), (t0 + 400 * US, 3, "append-in"),
        (t0 + 900 * US, 2, "ack-sent"), (t0 + 950 * US, 1, "ack-in"), (t0 + 1000 * US, 1, "fsync-end"),
        (t0 + 1100 * US, 3, "ack-sent"), (t0 + 1050 * US, 1, "commit-handed"),
        (t0 + 1200 * US, 1, "apply-begin"), (t0 + 1500 * US, 1, "apply-end"), (t0 + 1600 * US, 1, "response"),
    ]


def forwarded_write(t0: int) -> list[tuple[int, int, str]]:
    """A write sent to node 3 and forwarded to the leader (node 1); node 3 acks first."""
    return [
        (t0, 3, "request"), (t0 + 100 * US, 3, "submitted"), (t0 + 180 * US, 3, "forwarded"),
        (t0 + 300 * US, 1, "proposal-in"), (t0 + 400 * US, 1, "appends-sent"),
        (t0 + 410 * US, 1, "fsync-begin"), (t0 + 450 * US, 3, "append-in"), (t0 + 480 * US, 2, "append-in"),
        (t0 + 900 * US, 1, "fsync-end"), (t0 + 1000 * US, 3, "ack-sent"), (t0 + 1050 * US, 1, "ack-in"),
        (t0 + 1100 * US, 1, "commit-handed"), (t0 + 1150 * US, 2, "ack-sent"),
        (t0 + 1300 * US, 3, "commit-handed"),
        (t0 + 1400 * US, 3, "apply-begin"), (t0 + 1700 * US, 3, "apply-end"), (t0 + 1800 * US, 3, "response"),
    ]


def stages(doc: dict) -> dict[str, float]:
    return {row["stage"]: row["p50_us"] for row in doc["stages"]}


def test_a_leader_writes_stages_follow_its_stamps():
    events = sorted(leader_write(10**9) + leader_write(2 * 10**9))
    summary = tl.summarize(tl.split_writes(events), leader=1)
    assert set(summary) == {"leader"}
    doc = summary["leader"]
    assert doc["writes"] == 2 and doc["total"]["p50_us"] == 1600
    assert stages(doc) == {
        "HTTP request read, SQL prepared": 100, "hand-off to the Raft thread": 50,
        "Raft step, appends written": 150, "replication: fsyncs and an ack": 750,
        "hand-off to the apply": 150, "apply (SQLite transaction)": 300, "answer written": 100,
        "leader fsync": 690, "first follower: append in -> ack sent": 550,
        "second follower: append in -> ack sent": 700,
    }
    assert doc["commit_waited_for_leader_fsync"] == 1.0  # its fsync ended after the ack came


def test_a_forwarded_writes_stages_include_the_trip_to_the_leader_and_back():
    summary = tl.summarize(tl.split_writes(sorted(forwarded_write(10**9))), leader=1)
    doc = summary["forwarded"]
    got = stages(doc)
    assert got["proposal to the leader"] == 120
    assert got["commit notice to the origin"] == 200
    assert got["first follower: append in -> ack sent"] == 550  # node 3, whose ack came first
    assert doc["commit_waited_for_leader_fsync"] == 0.0
    assert sum(v for row in doc["stages"] if not row["parallel"] for v in [row["p50_us"]]) == 1800


def test_an_incomplete_write_is_left_out_not_misread():
    cut = [e for e in leader_write(10**9) if e[2] != "commit-handed"]  # e.g. the run ended mid-write
    summary = tl.summarize(tl.split_writes(sorted(cut + leader_write(2 * 10**9))), leader=1)
    assert summary["leader"]["writes"] == 1


def test_a_hook_that_did_not_install_is_an_error_that_names_it(tmp_path):
    (tmp_path / "node2.events").write_text("5 hook-error AttributeError: type object 'X' has no attribute 'y'\n")
    with pytest.raises(RuntimeError, match="node 2: the timeline hook did not install.*'y'"):
        tl.load_events(tmp_path)


def test_a_real_traced_cluster_shows_every_stage(tmp_path):
    summary, load = tl.run(target="random", duration=1.5, warmup=0.3, events_dir=tmp_path)
    assert load["requests"] > 20
    for kind, stage_table in (("leader", tl.LEADER_STAGES), ("forwarded", tl.FORWARDED_STAGES)):
        doc = summary[kind]  # 3 members at random: both kinds, many times over
        got = {row["stage"]: row for row in doc["stages"]}
        for name, _, _ in stage_table + tl.PARALLEL:
            assert got[name]["n"] >= 1 and got[name]["p50_us"] > 0, (kind, name, got.get(name))
        sequential = sum(row["p50_us"] for row in doc["stages"] if not row["parallel"])
        assert 0.5 * doc["total"]["p50_us"] < sequential < 2 * doc["total"]["p50_us"], doc
    assert "hand-off to the Raft thread" in tl.render(summary)
