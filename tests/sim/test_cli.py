"""`kalamdb sim` as a user runs it: pass, fail (seed, replay command, last events, exit 1), bad input."""

from __future__ import annotations

from click.testing import CliRunner

from kalamdb.sim.cli import sim_command

from .mutations import MUTATIONS


def test_cli_passing_seeds_report_rate():
    result = CliRunner().invoke(sim_command, ["--seeds", "3", "--start", "100", "--time", "1"])
    assert result.exit_code == 0, result.output
    assert "all seeds passed" in result.output
    assert "seeds/min" in result.output


def test_cli_failure_prints_seed_replay_and_events():
    ctx, _, _ = MUTATIONS["vote-up-to-date-ignored"]
    with ctx():
        result = CliRunner().invoke(sim_command, ["--seeds", "60", "--nodes", "3", "--time", "3"])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "FAILED seed" in out
    assert "replay: kalamdb sim --seed" in out and "--nodes 3 --time 3 --trace" in out
    events = [line for line in out.splitlines() if line.startswith("  ") and "ms " in line]
    assert 10 <= len(events) <= 41


def test_cli_rejects_bad_input():
    runner = CliRunner()
    both = runner.invoke(sim_command, ["--seed", "1", "--seeds", "2"])
    assert both.exit_code == 2 and "either --seed" in both.output
    assert runner.invoke(sim_command, ["--seed", "1", "--nodes", "9"]).exit_code == 2
    assert runner.invoke(sim_command, ["--seeds", "0"]).exit_code == 2


def test_trace_of_one_seed_is_byte_identical_and_timing_goes_to_stderr():
    runs = [CliRunner().invoke(sim_command, ["--seed", "7", "--time", "1", "--trace"]) for _ in range(2)]
    for run in runs:
        assert run.exit_code == 0, run.output
        assert "seeds/min" not in run.stdout and "seeds/min" in run.stderr
        assert run.stdout.endswith("all seeds passed\n")
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.count("\n") > 100  # the trace itself is there
