"""The shape every non-linearizability checker answers in: valid or not, and the anomalies by
kind, so a chaos report can print any checker the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckerResult:
    name: str
    valid: bool
    anomalies: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "valid" if self.valid else "INVALID"
        kinds = ", ".join(f"{k}={_count(v)}" for k, v in self.anomalies.items() if v)
        extra = ", ".join(f"{k}={v}" for k, v in self.stats.items())
        parts = [p for p in (kinds, extra) if p]
        return f"{self.name}: {verdict}" + (f" ({'; '.join(parts)})" if parts else "")


def _count(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1
