"""Consecutive free ports for tools that bind fixed ports themselves (`kalamdb cluster up`).

The kit's own clusters never need this (they hand bound sockets to the nodes); a block found here
can still be taken by another process before the tool binds it, so callers retry on failure."""

from __future__ import annotations

import socket


def free_port_block(count: int, attempts: int = 50) -> int:
    """A base port such that base .. base+count-1 were all free a moment ago."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65000:
            continue
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
