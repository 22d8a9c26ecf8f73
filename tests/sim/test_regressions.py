"""Every seed that ever failed is replayed forever. `fixed` entries must pass (and, with their bug
re-introduced, fail again); `open` entries must still fail with their signature, reported as xfail
(so a fix is noticed: the test then fails and asks to flip the line to `fixed`)."""

from __future__ import annotations

import re

import pytest

from kalamdb.sim.simulation import run_seed

from .conftest import load_regressions
from .mutations import MUTATIONS

REGRESSIONS = load_regressions()


FIXED = [r for r in REGRESSIONS if r.status == "fixed"]


@pytest.mark.parametrize("reg", FIXED, ids=[f"seed{r.seed}" for r in FIXED])
def test_fixed_seed_passes(reg):
    result = run_seed(reg.seed, nodes=reg.nodes, seconds=reg.seconds, profile=reg.profile)
    assert result.ok, f"{reg.replay}: {result.failure}"


@pytest.mark.parametrize("reg", [r for r in REGRESSIONS if r.status == "open"],
                         ids=lambda r: f"seed{r.seed}")
def test_open_bug_still_fails_with_its_signature(reg):
    """An open entry whose seed now fails differently (or passes) needs a human look."""
    result = run_seed(reg.seed, nodes=reg.nodes, seconds=reg.seconds, profile=reg.profile)
    if result.ok:
        pytest.fail(f"seed {reg.seed} passes now: mark it `fixed` in regressions.txt")
    assert re.search(reg.signature, result.failure), result.failure
    pytest.xfail(f"open bug, still failing as recorded: {reg.what}")


@pytest.mark.parametrize("reg", [r for r in REGRESSIONS if r.status == "fixed" and r.mutation != "-"],
                         ids=lambda r: f"seed{r.seed}-{r.mutation}")
def test_fixed_seed_still_reaches_its_scenario(reg):
    """With the old bug put back, the seed fails again with the same signature: the seed still
    drives the cluster into the scenario, so its passing means the fix holds."""
    ctx, node_factory, _ = MUTATIONS[reg.mutation]
    with ctx():
        result = run_seed(reg.seed, nodes=reg.nodes, seconds=reg.seconds, profile=reg.profile,
                          node_factory=node_factory)
    assert not result.ok, f"{reg.replay} no longer reaches the scenario of: {reg.what}"
    assert re.search(reg.signature, result.failure), result.failure


def test_regression_file_parses():
    assert REGRESSIONS, "regressions.txt lists at least one seed"
    assert all(r.mutation == "-" or r.mutation in MUTATIONS for r in REGRESSIONS)
    assert len({(r.seed, r.nodes, r.seconds, r.profile) for r in REGRESSIONS}) == len(REGRESSIONS)
