"""A simulated network between node ids: per-message delay, loss, duplication, reordering,
symmetric and asymmetric partitions, and clogged links (messages held until the link unclogs).

Links are FIFO like the TCP transport (a message never overtakes an earlier one on its link) unless
the `reorder` fault strikes: then it is delayed past later ones, as after a reconnect.

Messages are handed over by reference (no copies): the core must treat received messages as
read-only, like bytes that came off a socket and were decoded once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kalamdb.sim.loop import EventLoop


@dataclass(slots=True)
class NetworkConfig:
    min_delay: int = 200  # microseconds
    max_delay: int = 2_000
    loss: float = 0.0  # probability a message is dropped
    duplicate: float = 0.0  # probability a message is delivered twice
    reorder: float = 0.0  # probability a message gets an extra delay (overtaken by later ones)
    reorder_delay: int = 20_000


class SimNetwork:
    __slots__ = (
        "blocked",
        "cfg",
        "clogged",
        "deliver",
        "dropped",
        "faulty",
        "held",
        "loop",
        "rng",
        "sent",
        "tail",
        "trace",
    )

    def __init__(self, loop: EventLoop, rng: random.Random, cfg: NetworkConfig,
                 deliver: Callable[[int, int, Any], None], trace: Any) -> None:
        self.loop = loop
        self.rng = rng
        self.cfg = cfg
        self.deliver = deliver
        self.trace = trace
        self.blocked: set[tuple[int, int]] = set()  # directed links that drop everything
        self.clogged: set[tuple[int, int]] = set()  # directed links that hold everything
        self.held: list[tuple[int, int, Any]] = []
        self.faulty = True  # False during the liveness phase: no loss, duplication or reordering
        self.sent = 0
        self.dropped = 0
        self.tail: dict[tuple[int, int], int] = {}  # link -> delivery time of its latest message

    def send(self, src: int, dst: int, msg: Any) -> None:
        self.sent += 1
        link = (src, dst)
        if self.blocked and link in self.blocked:
            self.dropped += 1
            return
        if self.clogged and link in self.clogged:
            self.held.append((src, dst, msg))
            return
        cfg = self.cfg
        rng = self.rng
        at = self.loop.now + rng.randint(cfg.min_delay, cfg.max_delay)
        if self.faulty:
            if cfg.loss and rng.random() < cfg.loss:
                self.dropped += 1
                return
            if cfg.reorder and rng.random() < cfg.reorder:
                at += rng.randint(0, cfg.reorder_delay)
                self.loop.at(at, self.deliver, src, dst, msg)  # may be overtaken: not the link's tail
                return
            if cfg.duplicate and rng.random() < cfg.duplicate:
                self.loop.at(at + rng.randint(0, cfg.max_delay), self.deliver, src, dst, msg)
        tail = self.tail.get(link, 0)
        at = max(at, tail)
        self.tail[link] = at
        self.loop.at(at, self.deliver, src, dst, msg)

    # --- faults -------------------------------------------------------------------------------
    def partition(self, *groups: list[int]) -> None:
        """Cut every link between different groups (both directions)."""
        self.blocked.clear()
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))

    def block(self, src: int, dst: int) -> None:
        """Asymmetric fault: src can no longer reach dst (dst still reaches src)."""
        self.blocked.add((src, dst))

    def clog(self, src: int, dst: int) -> None:
        self.clogged.add((src, dst))

    def unclog_all(self) -> None:
        self.clogged.clear()
        held, self.held = self.held, []
        for src, dst, msg in held:
            self.loop.after(self.rng.randint(self.cfg.min_delay, self.cfg.max_delay),
                            self.deliver, src, dst, msg)

    def heal(self) -> None:
        self.blocked.clear()
        self.unclog_all()
