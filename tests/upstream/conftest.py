"""Fixtures and the report of the upstream replay: one fresh server for the scenarios that can share
it (each scenario uses names of its own), a private server for those that change global state, and a
summary of scenarios and steps passed at the end of the run (also written as JSON when
`--upstream-report PATH` is given)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from kalamdb.testing.single import start_server

sys.path.insert(0, os.path.dirname(__file__))

from replay import OUTCOMES, ROOT_PASSWORD, SERVER_CONFIG


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--upstream-report", default=None, metavar="PATH",
                     help="write the upstream replay's per-scenario results as JSON to PATH")


@pytest.fixture(scope="session")
def upstream_server(tmp_path_factory):
    """A fresh kalamdb node with root's password set (as upstream's test server has)."""
    proc = start_server(tmp_path_factory.mktemp("upstream") / "data", root_password=ROOT_PASSWORD,
                        log_level="warn", config=SERVER_CONFIG)
    try:
        yield proc
    finally:
        proc.kill()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not OUTCOMES:
        return
    scenarios = len(OUTCOMES)
    passed = sum(1 for o in OUTCOMES if o.ok)
    steps = sum(o.steps for o in OUTCOMES)
    steps_ok = sum(o.passed for o in OUTCOMES)
    tr = terminalreporter
    tr.section("upstream KalamDB replay")
    tr.write_line(f"scenarios: {passed} of {scenarios} pass; steps: {steps_ok} of {steps} pass")
    for o in sorted(OUTCOMES, key=lambda o: o.scenario):
        if not o.ok:
            tr.write_line(f"  FAIL {o.scenario} ({o.passed}/{o.steps} steps) [{o.source}]")
            tr.write_line(f"       {o.failures[0][:300]}")
    path = config.getoption("--upstream-report")
    if path:
        Path(path).write_text(json.dumps({
            "scenarios": scenarios, "scenarios_passed": passed, "steps": steps, "steps_passed": steps_ok,
            "results": [{"scenario": o.scenario, "source": o.source, "steps": o.steps, "passed": o.passed,
                         "failures": o.failures} for o in OUTCOMES]}, indent=1))
