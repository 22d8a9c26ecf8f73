"""Paired ratios between two variants measured in alternating slices.

On a shared host the machine's speed drifts by tens of per cent within minutes, so two variants
measured minutes apart differ by more than most changes do. Measured in short alternating slices,
each pair of neighbouring slices (one per variant) sees nearly the same machine: the ratio within a
pair cancels the drift, and the spread of those ratios says how much to trust their mean. This
module turns the pairs into a geometric-mean ratio with a 95 % confidence interval (Student's t on
the log ratios), which `python -m kalamdb.bench.ab --interleave` prints for every variant against
the first one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom; the normal 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two pairs")
    return _T95[df - 1] if df <= len(_T95) else 1.96


@dataclass(frozen=True)
class PairedRatio:
    """b/a over paired measurements: the geometric mean and its 95 % confidence interval."""

    ratio: float
    low: float
    high: float
    pairs: int

    @property
    def significant(self) -> bool:
        """The interval excludes 1: the pairs disagree with "no difference" at the 5 % level."""
        return self.low > 1.0 or self.high < 1.0

    def __str__(self) -> str:
        mark = " *" if self.significant else ""
        return f"x{self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}]{mark}"


def paired_ratio(a: list[float], b: list[float]) -> PairedRatio:
    """The ratio b/a of two series measured in pairs (a[i] next to b[i]); every value > 0."""
    if len(a) != len(b):
        raise ValueError(f"paired series differ in length: {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a confidence interval needs at least two pairs")
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("ratios need positive measurements")
    logs = [math.log(y / x) for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(logs)
    half = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return PairedRatio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))
