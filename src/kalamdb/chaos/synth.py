"""Synthetic histories with a known answer, for tests and benchmarks of the checkers.

A register is driven through a real sequential execution; each operation then gets a random
interval around its linearization point. Such a history is linearizable by construction (the
points are a witness), however much the intervals overlap."""

from __future__ import annotations

import random

from kalamdb.chaos.history import Operation


def sequential_register_history(
    rng: random.Random,
    n_ops: int,
    *,
    width: int = 3,
    values: int = 5,
    p_indeterminate: float = 0.0,
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2),
) -> list[Operation]:
    """Exactly `n_ops` read/write/cas operations; `width` is how many neighbouring linearization points an
    interval may stretch over on each side (concurrency); a write or cas is indeterminate with
    probability `p_indeterminate` and then took effect or not, by a coin flip."""
    state = None
    ops: list[Operation] = []
    p_read, p_write, _ = mix
    i = -1
    while len(ops) < n_ops:
        i += 1
        point = 10 * (i + 1)
        call = max(0, point - rng.randint(0, 10 * width))
        ret: int | None = point + 1 + rng.randint(0, 10 * width)
        roll = rng.random()
        if roll < p_read:
            ops.append(Operation(i, i, "read", None, None, state, call, ret))
            continue
        indeterminate = rng.random() < p_indeterminate
        happened = not indeterminate or rng.random() < 0.5
        if roll < p_read + p_write:
            value = rng.randrange(values)
            if happened:
                state = value
            ops.append(Operation(i, i, "write", None, value, value, call, None if indeterminate else ret))
            continue
        expected = state if rng.random() < 0.5 else rng.randrange(values)
        new = rng.randrange(values)
        if expected != state and not indeterminate:
            continue  # a cas that failed did not happen: Jepsen records it as :fail and it is dropped
        if happened and expected == state:
            state = new
        ops.append(Operation(i, i, "cas", None, [expected, new], None, call, None if indeterminate else ret))
    ops.sort(key=lambda o: o.call)
    for j, op in enumerate(ops):
        op.id = j
    return ops
