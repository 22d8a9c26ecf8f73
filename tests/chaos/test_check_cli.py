"""`kalamdb check`: verdict line, counterexample, exit codes 0/1/3 and 2 with file and line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from kalamdb.chaos.check_cli import check_command

from .test_linearizability_vectors import DATA

LIN = DATA / "jepsen-etcd" / "etcd_002.log"
NOT = DATA / "jepsen-etcd" / "etcd_000.log"


def run(*args):
    return CliRunner().invoke(check_command, [str(a) for a in args])


def test_linearizable_history_exits_0():
    r = run(LIN)
    assert r.exit_code == 0 and "LINEARIZABLE" in r.output and "[model register]" in r.output


def test_not_linearizable_history_exits_1_with_a_counterexample():
    r = run(NOT)
    assert r.exit_code == 1
    assert r.output.splitlines()[0].startswith(f"{NOT}: NOT_LINEARIZABLE")
    assert "cannot linearize" in r.output and "longest linearizable prefix" in r.output


def test_kv_history_is_detected_and_checked_per_key():
    r = run(DATA / "kv" / "c10-bad.txt")
    assert r.exit_code == 1 and "[model kv]" in r.output and "key '" in r.output


def test_budget_exhausted_exits_3():
    r = run("--max-states", "10", LIN)
    assert r.exit_code == 3 and "UNKNOWN" in r.output


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"type":"invoke","process":0,"f":"write","value":1}\n{"type":"ok","process":1,"f":"write"}\n',
         [], ":2: ok for process 1 without a pending invoke"),
        ("INFO  jepsen.util - 0\t:invoke\t:read\tnil\nbroken line\n", [], ":2: not a Jepsen history line"),
        ('{"type":"invoke","process":0,"f":"incr","value":1}\n', [], "line 1: function :incr is not part"),
        ('{"type":"invoke","process":0,"f":"write","value":1}\n', ["--format", "edn"], ":1: cannot read EDN"),
    ],
)
def test_bad_input_exits_2_naming_file_and_line(tmp_path, content, args, message):
    path = tmp_path / "history.jsonl"
    path.write_text(content)
    r = run(*args, path)
    assert r.exit_code == 2
    assert str(path) in r.output and message in r.output


def test_missing_file_and_bad_option_exit_2(tmp_path):
    assert run(tmp_path / "nope.jsonl").exit_code == 2
    assert run("--model", "queue", LIN).exit_code == 2


def test_installed_command_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "kalamdb", "check", str(NOT)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and "NOT_LINEARIZABLE" in proc.stdout


def test_a_mixed_chaos_history_is_checked_on_the_models_operations(tmp_path):
    """A chaos run's history.jsonl holds several workloads; --model register checks its part."""
    lines = [
        '{"type":"invoke","process":0,"f":"write","key":1,"value":3,"time":1}',
        '{"type":"invoke","process":1,"f":"add","key":null,"value":7,"time":2}',
        '{"type":"ok","process":0,"f":"write","key":1,"value":3,"time":3}',
        '{"type":"ok","process":1,"f":"add","key":null,"value":7,"time":4}',
        '{"type":"invoke","process":0,"f":"read","key":1,"time":5}',
        '{"type":"ok","process":0,"f":"read","key":1,"value":4,"time":6}',
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(check_command, [str(path), "--model", "register"])
    assert r.exit_code == 1, r.output  # the read of 4 after a write of 3 is caught
    assert "skipped other workloads' operations (add)" in r.output
    only_sets = tmp_path / "sets.jsonl"
    only_sets.write_text("\n".join(lines[1:2] + lines[3:4]) + "\n")
    r = CliRunner().invoke(check_command, [str(only_sets), "--model", "register"])
    assert r.exit_code == 2 and "no operation the register model checks" in r.output
