"""Shared helpers for the simulator tests: the regression list and known-open-bug signatures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REGRESSIONS = Path(__file__).with_name("regressions.txt")


@dataclass(frozen=True)
class Regression:
    seed: int
    nodes: int | None
    seconds: float
    profile: str
    status: str  # open | fixed
    signature: str
    mutation: str  # a tests/sim/mutations.py entry that re-introduces the bug ("-": none)
    what: str

    @property
    def replay(self) -> str:
        nodes = f" --nodes {self.nodes}" if self.nodes else ""
        profile = f" --profile {self.profile}" if self.profile != "swarm" else ""
        return f"kalamdb sim --seed {self.seed}{nodes}{profile} --time {self.seconds:g} --trace"


def load_regressions() -> list[Regression]:
    out = []
    for raw in REGRESSIONS.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        seed, nodes, seconds, profile, status, signature, mutation, what = (
            f.strip() for f in line.split("|", 7))
        if status not in ("open", "fixed"):
            raise ValueError(f"regressions.txt: bad status {status!r} in {raw!r}")
        out.append(Regression(int(seed), None if nodes == "-" else int(nodes), float(seconds), profile,
                              status, signature, mutation, what))
    return out


def open_bug_signatures() -> list[re.Pattern]:
    return [re.compile(r.signature) for r in load_regressions() if r.status == "open"]


def known_open_bug(failure: str) -> bool:
    return any(p.search(failure) for p in open_bug_signatures())
