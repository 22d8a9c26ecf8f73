"""Consecutive free ports for tools that bind fixed ports themselves (`kalamdb cluster up`).

The kit's own clusters never need this (they hand bound sockets to the nodes); a block found here
can still be taken by another process before the tool binds it, so callers retry on failure."""

from __future__ import annotations

import random
import socket


def free_port_block(count: int, attempts: int = 50) -> int:
    """A base port such that base .. base+count-1 were all free a moment ago. Drawn below Linux's
    ephemeral range (32768+), where outgoing connections would otherwise take ports meanwhile."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20000, 32000 - count)
        held = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                held.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no block of {count} free ports found in {attempts} attempts")
