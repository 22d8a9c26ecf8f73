"""Hand-made histories, one rule each, plus budgets and speed."""

from __future__ import annotations

import random
import time

import pytest

from kalamdb.chaos.linearizability import Verdict, check_operations
from kalamdb.chaos.models import MODELS
from kalamdb.chaos.synth import sequential_register_history

REGISTER = MODELS["register"]
KV = MODELS["kv"]


def verdict(ops, model=REGISTER, **kw):
    return check_operations(ops, model, **kw).verdict


LIN, NOT = Verdict.LINEARIZABLE, Verdict.NOT_LINEARIZABLE


def test_empty_history_is_linearizable():
    assert verdict([]) is LIN


def test_stale_read_after_a_newer_write_completed(reg):
    assert verdict(reg("""
        0 :invoke :write 1
        0 :ok :write 1
        0 :invoke :write 2
        0 :ok :write 2
        1 :invoke :read nil
        1 :ok :read 1
    """)) is NOT


def test_lost_write_acknowledged_then_never_seen(reg):
    assert verdict(reg("""
        0 :invoke :write 1
        0 :ok :write 1
        1 :invoke :read nil
        1 :ok :read nil
    """)) is NOT


@pytest.mark.parametrize("seen", ["nil", "1"])
def test_read_concurrent_with_a_write_may_see_either_value(reg, seen):
    assert verdict(reg(f"""
        0 :invoke :write 1
        1 :invoke :read nil
        1 :ok :read {seen}
        0 :ok :write 1
    """)) is LIN


def test_reads_may_not_flip_back_during_a_concurrent_write(reg):
    assert verdict(reg("""
        0 :invoke :write 1
        1 :invoke :read nil
        1 :ok :read 1
        2 :invoke :read nil
        2 :ok :read nil
        0 :ok :write 1
    """)) is NOT


def test_cas_that_succeeded_although_the_register_held_another_value(reg):
    assert verdict(reg("""
        0 :invoke :write 1
        0 :ok :write 1
        1 :invoke :cas [2 3]
        1 :ok :cas [2 3]
    """)) is NOT


def test_two_sequential_cas_from_the_same_expected_value_cannot_both_win(reg):
    assert verdict(reg("""
        0 :invoke :write 0
        0 :ok :write 0
        1 :invoke :cas [0 1]
        1 :ok :cas [0 1]
        2 :invoke :cas [0 2]
        2 :ok :cas [0 2]
    """)) is NOT


def test_concurrent_cas_chain_is_linearizable_in_the_order_that_works(reg):
    assert verdict(reg("""
        0 :invoke :write 0
        0 :ok :write 0
        1 :invoke :cas [1 2]
        2 :invoke :cas [0 1]
        2 :ok :cas [0 1]
        1 :ok :cas [1 2]
        3 :invoke :read nil
        3 :ok :read 2
    """)) is LIN


def test_failed_cas_is_dropped_so_it_constrains_nothing(reg):
    assert verdict(reg("""
        0 :invoke :write 1
        0 :ok :write 1
        1 :invoke :cas [1 5]
        1 :fail :cas [1 5]
        2 :invoke :read nil
        2 :ok :read 1
    """)) is LIN


@pytest.mark.parametrize("seen", ["1", "2"])
def test_indeterminate_write_may_or_may_not_have_happened(reg, seen):
    assert verdict(reg(f"""
        0 :invoke :write 1
        0 :ok :write 1
        1 :invoke :write 2
        1 :info :write :timed-out
        2 :invoke :read nil
        2 :ok :read {seen}
    """)) is LIN


def test_indeterminate_write_may_take_effect_long_after_later_writes(reg):
    assert verdict(reg("""
        1 :invoke :write 2
        1 :info :write :timed-out
        0 :invoke :write 3
        0 :ok :write 3
        2 :invoke :read nil
        2 :ok :read 3
        2 :invoke :read nil
        2 :ok :read 2
    """)) is LIN


def test_indeterminate_write_once_seen_cannot_unhappen(reg):
    assert verdict(reg("""
        0 :invoke :write 1
        0 :ok :write 1
        1 :invoke :write 2
        1 :info :write :timed-out
        2 :invoke :read nil
        2 :ok :read 2
        2 :invoke :read nil
        2 :ok :read 1
    """)) is NOT


def test_indeterminate_write_cannot_take_effect_before_it_was_called(reg):
    assert verdict(reg("""
        2 :invoke :read nil
        2 :ok :read 2
        1 :invoke :write 2
        1 :info :write :timed-out
    """)) is NOT


def test_kv_appends_are_seen_in_real_time_order(kv):
    assert verdict(kv("""
        0 :invoke :append k a
        0 :ok :append k a
        0 :invoke :append k b
        0 :ok :append k b
        1 :invoke :get k nil
        1 :ok :get k ba
    """), KV) is NOT


def test_kv_keys_are_checked_independently(kv):
    ops = kv("""
        0 :invoke :put a 1
        1 :invoke :put b 2
        0 :ok :put a 1
        1 :ok :put b 2
        2 :invoke :get a nil
        2 :ok :get a 1
        3 :invoke :get b nil
        3 :ok :get b ''
    """)
    result = check_operations(ops, KV)
    assert result.verdict is NOT and result.partitions == 2
    assert result.counterexample.partition == "b"


def test_counterexample_is_the_stale_read_and_the_two_writes_not_the_noise(reg):
    noise = "\n".join(
        f"{p} :invoke :write {v}\n{p} :ok :write {v}\n{p} :invoke :read nil\n{p} :ok :read {v}"
        for p, v in zip(range(10, 30), range(100, 120))
    )
    ops = reg(noise + """
        0 :invoke :write 1
        0 :ok :write 1
        0 :invoke :write 2
        0 :ok :write 2
        1 :invoke :read nil
        1 :ok :read 1
        5 :invoke :write 7
        5 :ok :write 7
    """)
    result = check_operations(ops, REGISTER)
    cex = result.counterexample
    assert result.verdict is NOT and cex.minimal
    assert [(o.f, o.value, o.output) for o in sorted(cex.ops, key=lambda o: o.call)] == [
        ("write", 1, 1), ("write", 2, 2), ("read", None, 1)
    ]
    assert (cex.failed_op.f, cex.failed_op.output) == ("read", 1)
    # the longest linearizable prefix is all the noise plus the two writes
    assert len(cex.linearized) == 42 and cex.state == 2
    text = cex.format()
    assert "cannot linearize" in text and "read -> 1" in text


def test_tiny_state_budget_gives_unknown_not_a_wrong_answer():
    ops = sequential_register_history(random.Random(3), 2000, width=5)  # needs ~10k states
    result = check_operations(ops, REGISTER, max_states=1000)
    assert result.verdict is Verdict.UNKNOWN and "state budget" in result.reason


def test_time_budget_gives_unknown_quickly(reg):
    # 40 mutually concurrent writes, then a read of a value none of them wrote: refuting it means
    # trying every subset of the writes in every order, far more than half a second of search
    invokes = "\n".join(f"{p} :invoke :write {p}" for p in range(40))
    oks = "\n".join(f"{p} :ok :write {p}" for p in range(40))
    ops = reg(f"{invokes}\n{oks}\n99 :invoke :read nil\n99 :ok :read 999")
    started = time.monotonic()
    result = check_operations(ops, REGISTER, timeout=0.5)
    elapsed = time.monotonic() - started
    assert result.verdict is Verdict.UNKNOWN and "time budget" in result.reason
    assert elapsed < 2.0


def test_ten_thousand_operations_are_checked_within_ten_seconds():
    seed = 20240611
    ops = sequential_register_history(random.Random(seed), 10_000, width=5, p_indeterminate=0.05)
    started = time.monotonic()
    result = check_operations(ops, REGISTER, timeout=30)
    elapsed = time.monotonic() - started
    print(f"10k-op register history: {result.summary()}")
    assert result.verdict is LIN, f"seed {seed}: {result.summary()}"
    assert elapsed <= 10.0, f"seed {seed}: took {elapsed:.2f}s"
