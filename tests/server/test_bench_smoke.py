"""The single-node benchmark runs end to end against a real server and reports no errors."""

from __future__ import annotations

from kalamdb.bench import single_node


def test_benchmark_runs_and_every_insert_is_acknowledged(server, capsys):
    code = single_node.main(["--url", server.url, "--clients", "4", "--duration", "0.5", "--warmup", "0.1",
                             "--baseline"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0] == "4"]
    assert [r[0] for r in rows] == ["4", "4"]  # kalamdb, then the bare HTTP baseline
    assert all(float(r[1]) > 0 for r in rows), out  # inserts/s
    assert out.count("of bare HTTP throughput") == 1, out
