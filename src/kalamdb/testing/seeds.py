"""One seed rules a test run (ARCHITECTURE.md decision 11): `KALAMDB_SEED`.

Every random choice the kit makes (which node `execute_sql_on_random` picks, which nodes a
"minority" target means, the chaos nemesis schedule, fault parameters) derives from one seed that
failure reports print with the command that replays it."""

from __future__ import annotations

import os
import random
import warnings

SEED_ENV = "KALAMDB_SEED"
OLD_SEED_ENV = "KALAMDB_TEST_SEED"  # deprecated: read with a warning, never printed


def default_seed() -> int:
    """KALAMDB_SEED if set (to replay a failure), else a fresh random seed (31 bits, so it reads
    well in reports). KALAMDB_TEST_SEED, the fault suites' old name, is accepted with a warning."""
    for name in (SEED_ENV, OLD_SEED_ENV):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        if name == OLD_SEED_ENV:
            warnings.warn(f"{OLD_SEED_ENV} is deprecated: use {SEED_ENV}={text}", DeprecationWarning, stacklevel=2)
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None
    return random.SystemRandom().randrange(1 << 31)


def replay_hint(seed: int) -> str:
    return f"replay with {SEED_ENV}={seed}"
