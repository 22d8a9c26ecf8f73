"""Readers for the three history formats we check: Jepsen logs, Jepsen's EDN-like maps, and our
own JSON lines. Each gives events with their line numbers, so an error names file and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from kalamdb.chaos.history import EVENT_TYPES, Event, HistoryError, Operation, pair_events

FORMATS = ("jepsen", "edn", "jsonl")

_JEPSEN = re.compile(r"^INFO\s+jepsen\.util\s+-\s+(\S+)\s+:(\w+)\s+:([\w-]+)\s+(.*)$")
_EDN_TOKEN = re.compile(r'\s*(?:(:[\w\-?!.*/]+)|"((?:[^"\\]|\\.)*)"|(-?\d+)|(nil|true|false)|(\[)|(\])|(,))')


def _jepsen_value(text: str, source: str, line: int) -> Any:
    text = text.strip()
    if text == "nil":
        return None
    if text.startswith(":"):
        return text  # e.g. :timed-out (an error keyword, not a value)
    if text.startswith("[") and text.endswith("]"):
        return [_jepsen_value(part, source, line) for part in text[1:-1].split()]
    try:
        return int(text)
    except ValueError:
        raise HistoryError(f"cannot read value {text!r}", source=source, line=line) from None


def _process(text: str) -> Any:
    return int(text) if text.lstrip("-").isdigit() else text


def parse_jepsen(text: str, source: str = "<jepsen>") -> list[Event]:
    """`INFO  jepsen.util - <process>\\t:<type>\\t:<f>\\t<value>`; nemesis lines are skipped."""
    events = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        m = _JEPSEN.match(raw)
        if m is None:
            raise HistoryError(f"not a Jepsen history line: {raw[:80]!r}", source=source, line=lineno)
        process, type_, f, value = m.groups()
        if process == ":nemesis" or process == "nemesis":
            continue
        if type_ not in EVENT_TYPES:
            raise HistoryError(f"unknown event type :{type_}", source=source, line=lineno)
        val = _jepsen_value(value, source, lineno)
        if type_ in ("fail", "info") and isinstance(val, str) and val.startswith(":"):
            val = None
        events.append(Event(type_, _process(process), f, None, val, None, None, lineno))
    return events


def _edn_map(raw: str, source: str, line: int) -> dict[str, Any]:
    s = raw.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise HistoryError(f"not an EDN map: {raw[:80]!r}", source=source, line=line)
    body = s[1:-1]
    tokens: list[Any] = []
    i = 0
    while i < len(body):
        m = _EDN_TOKEN.match(body, i)
        if m is None:
            if body[i:].strip() == "":
                break
            raise HistoryError(f"cannot read EDN near {body[i:i + 30]!r}", source=source, line=line)
        i = m.end()
        kw, string, number, const, lb, rb, comma = m.groups()
        if comma is not None:
            continue
        if kw is not None:
            tokens.append(("kw", kw[1:]))
        elif string is not None:
            tokens.append(("val", bytes(string, "utf-8").decode("unicode_escape") if "\\" in string else string))
        elif number is not None:
            tokens.append(("val", int(number)))
        elif const is not None:
            tokens.append(("val", {"nil": None, "true": True, "false": False}[const]))
        elif lb is not None:
            tokens.append(("[", None))
        elif rb is not None:
            tokens.append(("]", None))
    # fold [ ... ] into lists
    folded: list[Any] = []
    stack: list[list[Any]] = []
    for kind, val in tokens:
        if kind == "[":
            stack.append([])
        elif kind == "]":
            if not stack:
                raise HistoryError("unbalanced ]", source=source, line=line)
            done = stack.pop()
            (stack[-1] if stack else folded).append(("val", done))
        else:
            if stack:
                stack[-1].append(val if kind == "val" else ":" + val)
            else:
                folded.append((kind, val))
    if stack or len(folded) % 2:
        raise HistoryError("map needs key/value pairs", source=source, line=line)
    out: dict[str, Any] = {}
    for (kkind, key), (_, val) in zip(folded[::2], folded[1::2]):
        if kkind != "kw":
            raise HistoryError(f"map key must be a keyword, got {key!r}", source=source, line=line)
        out[key] = val  # a keyword value is its bare name: :invoke -> "invoke"
    return out


def parse_edn(text: str, source: str = "<edn>") -> list[Event]:
    """`{:process P, :type :invoke, :f :get, :key "K", :value "V"}`, one map a line."""
    events = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        m = _edn_map(raw, source, lineno)
        for required in ("process", "type", "f"):
            if required not in m:
                raise HistoryError(f"missing :{required}", source=source, line=lineno)
        if m["process"] == "nemesis":
            continue
        if m["type"] not in EVENT_TYPES:
            raise HistoryError(f"unknown event type :{m['type']}", source=source, line=lineno)
        events.append(Event(m["type"], m["process"], m["f"], m.get("key"), m.get("value"), None, None, lineno))
    return events


def parse_jsonl(text: str, source: str = "<jsonl>") -> list[Event]:
    """Our format, see docs/checkers.md: one JSON object per event, in real-time order."""
    events = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HistoryError(f"invalid JSON: {exc}", source=source, line=lineno) from None
        if not isinstance(obj, dict):
            raise HistoryError("each line must be a JSON object", source=source, line=lineno)
        for required in ("type", "process", "f"):
            if required not in obj:
                raise HistoryError(f"missing field {required!r}", source=source, line=lineno)
        if obj["type"] not in EVENT_TYPES:
            raise HistoryError(
                f"type must be one of {', '.join(EVENT_TYPES)}, got {obj['type']!r}", source=source, line=lineno
            )
        t = obj.get("time")
        if t is not None and not isinstance(t, int):
            raise HistoryError(f"time must be an integer (ns), got {t!r}", source=source, line=lineno)
        events.append(
            Event(obj["type"], obj["process"], str(obj["f"]), obj.get("key"), obj.get("value"), t,
                  obj.get("node"), lineno)
        )
    return events


def detect_format(text: str) -> str:
    for raw in text.splitlines():
        s = raw.strip()
        if not s:
            continue
        if s.startswith("{:"):
            return "edn"
        if s.startswith("{"):
            return "jsonl"
        if "jepsen.util" in s:
            return "jepsen"
        break
    raise HistoryError("cannot tell the history format (jepsen, edn or jsonl) from its first line")


_PARSERS = {"jepsen": parse_jepsen, "edn": parse_edn, "jsonl": parse_jsonl}


def parse_events(text: str, fmt: str = "auto", source: str = "<history>") -> list[Event]:
    if fmt == "auto":
        try:
            fmt = detect_format(text)
        except HistoryError as exc:
            raise HistoryError(str(exc), source=source, line=1) from None
    if fmt not in _PARSERS:
        raise HistoryError(f"unknown format {fmt!r}; choose auto, {', '.join(FORMATS)}", source=source)
    return _PARSERS[fmt](text, source)


def load_history(path: str | Path, fmt: str = "auto") -> list[Operation]:
    """Read a history file and pair it into operations; HistoryError names file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"cannot read: {exc}", source=str(p)) from None
    return pair_events(parse_events(text, fmt, str(p)), source=str(p))
