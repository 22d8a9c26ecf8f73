"""Small builders so a test can write a history the way Jepsen logs it, one event a line."""

from __future__ import annotations

import pytest

from kalamdb.chaos.history import Operation, pair_events
from kalamdb.chaos.parsers import parse_edn, parse_jepsen


def register_history(text: str) -> list[Operation]:
    """Lines like `0 :invoke :write 1` / `0 :ok :cas [1 2]` -> operations (register)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return pair_events(parse_jepsen("\n".join("INFO  jepsen.util - " + ln for ln in lines)))


def kv_history(text: str) -> list[Operation]:
    """Lines like `0 :invoke :append k x` / `0 :ok :get k xy` -> operations (kv)."""
    maps = []
    for ln in text.strip().splitlines():
        parts = ln.split()
        if not parts:
            continue
        process, type_, f, key = parts[:4]
        value = parts[4] if len(parts) > 4 else None
        shown = "nil" if value in (None, "nil") else '"' + ("" if value == "''" else value) + '"'
        maps.append(f'{{:process {process}, :type {type_}, :f {f}, :key "{key}", :value {shown}}}')
    return pair_events(parse_edn("\n".join(maps)))


@pytest.fixture
def reg():
    return register_history


@pytest.fixture
def kv():
    return kv_history
