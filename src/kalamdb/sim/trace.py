"""The event trace: every simulated event as (time, node, kind, detail), formatted only on demand.

Recording is a tuple append into a bounded deque (cheap enough to be always on), so a failure can
show the last events before the violation; `--trace` additionally echoes every line as it happens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

DETAIL_CHARS = 240


def format_event(event: tuple[int, int, str, Any]) -> str:
    time, node, kind, detail = event
    text = detail if isinstance(detail, str) else repr(detail)
    if len(text) > DETAIL_CHARS:
        text = text[: DETAIL_CHARS - 3] + "..."
    who = f"n{node}" if node else "--"
    return f"{time / 1000:12.3f}ms {who:>3} {kind:<10} {text}"


class Trace:
    __slots__ = ("_echo", "_loop", "count", "recent")

    def __init__(self, loop: Any, keep: int = 40, echo: Callable[[str], None] | None = None) -> None:
        self._loop = loop
        self.recent: deque[tuple[int, int, str, Any]] = deque(maxlen=keep)
        self._echo = echo
        self.count = 0

    def add(self, node: int, kind: str, detail: Any = "") -> None:
        event = (self._loop.now, node, kind, detail)
        self.recent.append(event)
        self.count += 1
        if self._echo is not None:
            self._echo(format_event(event))

    def tail(self) -> list[str]:
        return [format_event(e) for e in self.recent]
