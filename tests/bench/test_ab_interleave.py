"""`python -m kalamdb.bench.ab --interleave`: clusters started once, slices in alternating order,
paired ratios against the first variant. The clusters and the load are stand-ins here (what a slice
measures is the load generator's, tested with it); the order and the pairing are what is tested."""

import pytest

from kalamdb.bench import ab


def test_slices_alternate_and_are_reported_as_pairs_against_the_first_variant(monkeypatch, capsys):
    started, stopped, slices = [], [], []

    def start_side(name, env, *, target, rows):
        started.append((name, env, target))
        return ab.Side(name, target=name, pids={}, stop=lambda: stopped.append(name))

    speed = {"base": 1000.0, "fast": 1100.0}

    def run_level(target, clients, pids, **opts):
        slices.append((target, clients))
        drift = 1 - len(slices) / 100  # the machine slows down as the run goes on
        ops = speed[target] * drift
        return {"ops_per_s": ops, "p50_ms": 1000 / ops, "p99_ms": 2000 / ops, "errors": 0,
                "first_error": None}, 50.0

    monkeypatch.setattr(ab, "start_side", start_side)
    monkeypatch.setattr(ab, "run_level", run_level)
    ab.main(["--interleave", "--rounds", "4", "--clients", "1,8", "--duration", "0.1",
             "base:", "fast:KALAMDB_X=1"])
    assert started == [("base", {}, "random"), ("fast", {"KALAMDB_X": "1"}, "random")]
    assert sorted(stopped) == ["base", "fast"]
    assert slices[:4] == [("base", 1), ("fast", 1), ("base", 8), ("fast", 8)]
    assert slices[4:8] == [("fast", 1), ("base", 1), ("fast", 8), ("base", 8)]  # reversed every round
    out = capsys.readouterr().out
    fast_lines = [line for line in out.splitlines() if line.strip().startswith("fast")]
    assert len(fast_lines) == 2
    for line in fast_lines:
        # 10 % faster in every pair, despite a drift of several per cent over the run
        assert "vs base: throughput x1.1" in line and "*" in line


def test_a_side_that_fails_to_start_stops_the_ones_already_up(monkeypatch):
    stopped = []

    def start_side(name, env, *, target, rows):
        if name == "broken":
            raise RuntimeError("no cluster")
        return ab.Side(name, target=name, pids={}, stop=lambda: stopped.append(name))

    monkeypatch.setattr(ab, "start_side", start_side)
    with pytest.raises(RuntimeError):
        ab.main(["--interleave", "--rounds", "2", "base:", "broken:"])
    assert stopped == ["base"]
