"""Replay upstream KalamDB's test scenarios (tests/upstream/scenarios_*.py) against a real server.
A scenario listed in known_failures.py is expected to fail (xfail, with its reason)."""

from __future__ import annotations

import pytest
from known_failures import KNOWN_FAILURES
from replay import OUTCOMES, ROOT_PASSWORD, SERVER_CONFIG, run_scenario
from scenarios import ALL_SCENARIOS

from kalamdb.testing.single import start_server


def _params():
    for s in ALL_SCENARIOS:
        marks = []
        if s.name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[s.name], strict=False))
        yield pytest.param(s, id=s.name, marks=marks)


def test_scenario_names_are_unique():
    names = [s.name for s in ALL_SCENARIOS]
    assert len(names) == len(set(names))
    assert not set(KNOWN_FAILURES) - set(names), "known_failures.py names scenarios that do not exist"


@pytest.mark.parametrize("scenario", list(_params()))
def test_upstream_scenario(scenario, upstream_server, tmp_path):
    if scenario.fresh:
        options = {"root_password": ROOT_PASSWORD, "log_level": "warn", "config": SERVER_CONFIG,
                   **scenario.server_options}
        options = {k: v for k, v in options.items() if v is not None}
        server = start_server(tmp_path / "data", **options)
        try:
            outcome = run_scenario(scenario, server.url, options.get("root_password") or "")
        finally:
            server.kill()
    else:
        outcome = run_scenario(scenario, upstream_server.url, ROOT_PASSWORD)
    OUTCOMES.append(outcome)
    assert outcome.ok, (f"{scenario.name} ({scenario.source}): {outcome.passed}/{outcome.steps} steps pass\n"
                        + "\n".join(outcome.failures))
