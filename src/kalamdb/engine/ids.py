"""Identifiers generated at apply time from the command's fixed inputs (time, node, seeded RNG) and
the replicated counter, so every replica generates the same values."""

from __future__ import annotations

import random

SNOWFLAKE_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def next_snowflake(last: int, now_ms: int, node_id: int) -> int:
    """41-bit ms since 2024-01-01, 10-bit node id, 12-bit sequence; strictly above `last`."""
    base = (max(now_ms - SNOWFLAKE_EPOCH_MS, 0) << 22) | ((node_id & 0x3FF) << 12)
    return base if base > last else last + 1


def uuid_v7(rng: random.Random, now_ms: int) -> str:
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rng.getrandbits(12) << 64
    value |= 0b10 << 62
    value |= rng.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def ulid(rng: random.Random, now_ms: int) -> str:
    value = ((now_ms & ((1 << 48) - 1)) << 80) | rng.getrandbits(80)
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))
