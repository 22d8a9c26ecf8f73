"""Properties of the checker over generated histories: it agrees with a brute-force search on
small ones, accepts every history a real sequential execution could produce, and catches a
corrupted read."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kalamdb.chaos.history import Operation
from kalamdb.chaos.linearizability import Verdict, check_operations
from kalamdb.chaos.models import FAIL, MODELS
from kalamdb.chaos.synth import sequential_register_history

REGISTER = MODELS["register"]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute_force(ops: list[Operation]) -> bool:
    """Try every order that respects real time; an indeterminate op may also never happen."""
    n = len(ops)
    must_precede = [
        [j for j in range(n) if ops[j].ret is not None and ops[j].ret < ops[i].call] for i in range(n)
    ]
    determinate = sum(1 for op in ops if op.ret is not None)
    steppers = [REGISTER.compile(op) for op in ops]
    seen: set = set()

    def search(placed: int, count: int, state) -> bool:
        if count == determinate:
            return True
        if (placed, state) in seen:
            return False
        seen.add((placed, state))
        for i in range(n):
            if placed >> i & 1 or any(not placed >> j & 1 for j in must_precede[i]):
                continue
            new = steppers[i](state)
            if new is not FAIL and search(placed | 1 << i, count + (ops[i].ret is not None), new):
                return True
        return False

    return search(0, 0, REGISTER.init_state())


@st.composite
def small_histories(draw) -> list[Operation]:
    n = draw(st.integers(1, 7))
    ops = []
    for i in range(n):
        call = draw(st.integers(0, 20))
        ret = None if draw(st.integers(0, 5)) == 0 else call + draw(st.integers(1, 8))
        f = draw(st.sampled_from(["read", "write", "cas"]))
        if f == "read":
            if ret is None:
                continue  # the pairing drops open reads
            ops.append(Operation(i, i, "read", None, None, draw(st.sampled_from([None, 0, 1, 2])), call, ret))
        elif f == "write":
            v = draw(st.integers(0, 2))
            ops.append(Operation(i, i, "write", None, v, v, call, ret))
        else:
            e, v = draw(st.sampled_from([None, 0, 1, 2])), draw(st.integers(0, 2))
            ops.append(Operation(i, i, "cas", None, [e, v], None, call, ret))
    ops.sort(key=lambda o: o.call)
    for j, op in enumerate(ops):
        op.id = j
    return ops


@FAST
@given(small_histories())
def test_agrees_with_brute_force_on_small_histories(ops):
    result = check_operations(ops, REGISTER, timeout=10)
    assert result.verdict is not Verdict.UNKNOWN
    assert result.linearizable == brute_force(ops), [op.describe() for op in ops]
    if not result.linearizable:
        cex = result.counterexample
        # the witness is a non-linearizable sub-history ...
        assert not brute_force(cex.ops)
        # ... and 1-minimal: removing any op together with its closure makes it linearizable
        if cex.minimal:
            for op in cex.ops:
                closure = REGISTER.removal_closure(op, cex.ops)
                if closure is not None:
                    rest = [o for o in cex.ops if o.id not in {c.id for c in closure}]
                    assert brute_force(rest), op.describe()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    width=st.integers(0, 6),
    p_indeterminate=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_histories_of_a_real_sequential_execution_are_linearizable(seed, n, width, p_indeterminate):
    ops = sequential_register_history(random.Random(seed), n, width=width, p_indeterminate=p_indeterminate)
    result = check_operations(ops, REGISTER, timeout=20)
    assert result.verdict is Verdict.LINEARIZABLE, f"seed {seed}: {result.summary()}"


def _corrupt_one_read(ops: list[Operation], rng: random.Random, value) -> Operation | None:
    reads = [op for op in ops if op.f == "read"]
    if not reads:
        return None
    victim = rng.choice(reads)
    victim.output = value(victim.output)
    return victim


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 150), width=st.integers(0, 4))
def test_a_read_of_a_value_nobody_wrote_is_always_caught(seed, n, width):
    # refuting is the expensive direction (every ordering of the prefix must fail), and it grows
    # with the number of timed-out writes still open, so sizes here stay moderate
    rng = random.Random(seed)
    ops = sequential_register_history(rng, n, width=width, p_indeterminate=0.05)
    if _corrupt_one_read(ops, rng, lambda _: 999) is None:
        return
    result = check_operations(ops, REGISTER, timeout=60, counterexample=False)
    assert result.verdict is Verdict.NOT_LINEARIZABLE, f"seed {seed}: {result.summary()}"


def test_a_read_changed_to_another_written_value_is_usually_caught():
    caught, trials = 0, 200
    for seed in range(trials):
        rng = random.Random(seed)
        ops = sequential_register_history(rng, 100, width=2, values=5)
        shift = 1 + rng.randrange(4)
        victim = _corrupt_one_read(ops, rng, lambda old, shift=shift: ((old or 0) + shift) % 5)
        if victim is None:
            continue
        result = check_operations(ops, REGISTER, timeout=20)
        assert result.verdict is not Verdict.UNKNOWN, f"seed {seed}"
        caught += result.verdict is Verdict.NOT_LINEARIZABLE
    # a changed read can still be explained by a concurrent write of that value, so not always
    assert caught >= 0.6 * trials, f"only {caught}/{trials} corrupted histories were caught"
