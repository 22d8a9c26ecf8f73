"""The nemesis schedule is a pure function of the seed: replaying a seed replays the faults."""

from __future__ import annotations

import time

import pytest

from kalamdb.chaos.nemesis import FAULT_KINDS, FaultStep, Nemesis, make_schedule, resolve_targets
from kalamdb.chaos.runner import ChaosConfig, schedule_for


def test_same_seed_same_schedule_and_another_seed_differs():
    cfg = ChaosConfig(time=60, seed=1234)
    first = [s.to_json() for s in schedule_for(cfg)]
    again = [s.to_json() for s in schedule_for(ChaosConfig(time=60, seed=1234))]
    other = [s.to_json() for s in schedule_for(ChaosConfig(time=60, seed=1235))]
    assert first, "a 60 s run with every fault kind must schedule faults"
    assert first == again
    assert first != other


def test_schedule_stays_inside_the_run_and_uses_only_requested_faults():
    for seed in range(50):
        steps = make_schedule(seed, 20.0, ["partition", "pause"], [1, 2, 3])
        for s in steps:
            assert s.kind in ("partition", "pause")
            assert 0 < s.start and s.start + s.duration <= 20.0 - 1.0 + 1e-6, s
            assert sorted(s.ranking) == [1, 2, 3]


def test_every_fault_kind_is_eventually_chosen_and_combined():
    kinds, combined = set(), False
    for seed in range(40):
        steps = make_schedule(seed, 60.0, FAULT_KINDS, [1, 2, 3])
        kinds |= {s.kind for s in steps}
        starts = [s.start for s in steps]
        combined |= len(starts) != len(set(starts))
    assert kinds == set(FAULT_KINDS)
    assert combined, "some windows must combine two faults"


def test_unknown_fault_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fault"):
        make_schedule(1, 10, ["partition", "meteor"], [1, 2, 3])
    with pytest.raises(ValueError, match="unknown workload"):
        ChaosConfig(workloads=["register", "queue"]).validate()


@pytest.mark.parametrize(("target", "n", "size"), [("one", 3, 1), ("minority", 3, 1), ("majority", 3, 2),
                                                    ("all", 3, 3), ("minority", 5, 2), ("majority", 5, 3)])
def test_targets_resolve_to_the_promised_sizes(target, n, size):
    step = FaultStep(1.0, 1.0, "kill", target, tuple(range(n, 0, -1)))
    got = resolve_targets(step, leader=None)
    assert len(got) == size and len(set(got)) == size


def test_leader_target_follows_the_leader_and_falls_back_to_the_ranking():
    step = FaultStep(1.0, 1.0, "pause", "leader", (3, 1, 2))
    assert resolve_targets(step, leader=2) == [2]
    assert resolve_targets(step, leader=None) == [3]


def test_cli_prints_the_same_schedule_for_the_same_seed_and_refuses_bad_options():
    from click.testing import CliRunner

    from kalamdb.chaos.cli import chaos_command

    runner = CliRunner()
    args = ["--seed", "99", "--time", "40", "--print-schedule"]
    first, again = runner.invoke(chaos_command, args), runner.invoke(chaos_command, args)
    other = runner.invoke(chaos_command, ["--seed", "100", "--time", "40", "--print-schedule"])
    assert first.exit_code == 0 and first.output.strip()
    assert first.output == again.output != other.output
    bad = runner.invoke(chaos_command, ["--faults", "partition,meteor", "--print-schedule"])
    assert bad.exit_code == 2 and "unknown fault meteor" in bad.output
    bad = runner.invoke(chaos_command, ["--workload", "", "--print-schedule"])
    assert bad.exit_code == 2 and "at least one workload" in bad.output


def test_targets_follow_the_members_after_membership_changes():
    step = FaultStep(1.0, 1.0, "kill", "minority", (3, 1, 2, 5, 4))
    assert resolve_targets(step, leader=None) == [3, 1]
    # nodes 1 and 2 were replaced by 6 and 7: the same ranking positions pick the current members
    assert resolve_targets(step, leader=None, current=[3, 4, 5, 6, 7]) == [5, 3]
    assert resolve_targets(step, leader=None, current=[1, 2, 3]) == [3]  # a minority of 3 is one node
    one = FaultStep(1.0, 1.0, "membership", "leader", (2, 1, 3), (("op", "remove"),))
    assert resolve_targets(one, leader=7, current=[1, 3, 7]) == [7]


def test_membership_and_transfer_are_opt_in_and_scheduled_with_their_params():
    from kalamdb.chaos.nemesis import DEFAULT_FAULTS

    assert "membership" not in DEFAULT_FAULTS and "transfer" not in DEFAULT_FAULTS
    steps = [s for seed in range(10) for s in make_schedule(seed, 60.0, ["membership", "transfer"], [1, 2, 3])]
    ops = {s.param("op") for s in steps if s.kind == "membership"}
    assert ops == {"add", "remove", "replace"}
    assert {s.target for s in steps if s.kind == "transfer"} == {"one"}


class _RecordingBackend:
    """A FaultBackend that records what the nemesis asks of it, in order (no cluster: this checks
    the nemesis's own ordering of a window's combined faults)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[int, ...]]] = []

    def node_ids(self) -> list[int]:
        return [1, 2, 3]

    def leader_id(self) -> int | None:
        return 1

    def supports(self, kind: str) -> bool:
        return True

    def inject(self, kind: str, nodes: list[int], params: dict) -> None:
        self.calls.append(("inject", kind, tuple(nodes)))

    def undo(self, kind: str, nodes: list[int], token) -> None:
        self.calls.append(("undo", kind, tuple(nodes)))

    def heal_all(self) -> None:
        pass

    def recovery_barrier(self, timeout: float) -> int:
        return 0


def test_combined_faults_set_a_failpoint_before_pausing_the_node_and_change_membership_last():
    """Seed 403 (2026-12-03) paused node 3 and then failed to set its disk failpoint: a paused node
    cannot answer the failpoint API. Within a window, faults that need the node to answer go first."""
    steps = [FaultStep(0.01, 0.05, kind, "minority", (3, 2, 1)) for kind in ("membership", "pause", "disk", "kill", "cpu")]
    backend = _RecordingBackend()
    nemesis = Nemesis(backend, steps, time.monotonic_ns())
    nemesis.start()
    assert nemesis.join(10), "the schedule did not play out"
    injected = [kind for what, kind, _ in backend.calls if what == "inject"]
    assert injected == ["disk", "cpu", "pause", "kill", "membership"], backend.calls
    undone = [kind for what, kind, _ in backend.calls if what == "undo"]
    assert undone == injected[::-1], backend.calls
