"""Histories: what clients asked for and what they heard back, and the pairing of those events
into operations, because every checker reasons about operations (call, return) and not lines.

Event types follow Jepsen: `invoke` (the call), `ok` (it happened and this is its result),
`fail` (it definitely did not happen), `info` (indeterminate: it may have happened, at any time
after the call). An operation whose return never arrives is indeterminate too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

EVENT_TYPES = ("invoke", "ok", "fail", "info")

# functions that only observe state: when they fail or time out they had no effect and tell us
# nothing, so the pairing drops them instead of keeping an unconstrained open operation
READ_FUNCTIONS = frozenset({"read", "get"})


class HistoryError(ValueError):
    """A history that cannot be understood; names the source and the line so it can be fixed."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        where = ""
        if source is not None:
            where = f"{source}"
            if line is not None:
                where += f":{line}"
            where += ": "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
        self.source = source
        self.line = line


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history: a call or an answer as a client saw it."""

    type: str
    process: Any
    f: str
    key: Any = None
    value: Any = None
    time: int | None = None  # monotonic nanoseconds, if the recorder knew them
    node: str | None = None
    line: int | None = None  # where it came from, for error messages

    def to_json(self) -> dict:
        out: dict[str, Any] = {"type": self.type, "process": self.process, "f": self.f}
        if self.key is not None:
            out["key"] = self.key
        if self.value is not None:
            out["value"] = self.value
        if self.time is not None:
            out["time"] = self.time
        if self.node is not None:
            out["node"] = self.node
        return out


@dataclass(slots=True)
class Operation:
    """A paired call and return. `ret is None` means indeterminate: it may or may not have taken
    effect, at any moment after `call`. `value` is the input (what was written, cas [old, new]),
    `output` the observed result (what a read returned)."""

    id: int
    process: Any
    f: str
    key: Any
    value: Any
    output: Any
    call: int
    ret: int | None
    node: str | None = None
    call_line: int | None = None
    ret_line: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def indeterminate(self) -> bool:
        return self.ret is None

    @property
    def returned(self) -> int:
        """When it returned: asked only of an operation known to be determinate."""
        if self.ret is None:
            raise ValueError(f"operation {self.id} is indeterminate: it never returned")
        return self.ret

    def describe(self) -> str:
        key = f" {self.key!r}" if self.key is not None else ""
        if self.f in READ_FUNCTIONS:
            body = f"{self.f}{key} -> {_show(self.output)}"
        else:
            body = f"{self.f}{key} {_show(self.value)}"
        end = "?" if self.ret is None else str(self.ret)
        status = " (indeterminate)" if self.ret is None else ""
        where = f" line {self.call_line}" if self.call_line is not None else ""
        node = f" node {self.node}" if self.node is not None else ""
        return f"[{self.call}..{end}] process {self.process}{node}: {body}{status}{where}"


def _show(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def pair_events(events: Iterable[Event], *, source: str | None = None) -> list[Operation]:
    """Pair invokes with their returns, per process, in history order.

    The position of an event in the history is its logical time (events carrying `time` are first
    sorted by it, stably), so call/return order is exactly the real-time order that was recorded.
    `fail` drops the operation; `info` or a missing return leaves it open to the end; a read that
    failed or timed out is dropped because it had no effect and observed nothing.
    """
    evs = list(events)
    if evs and all(e.time is not None for e in evs):
        evs.sort(key=lambda e: e.time or 0)  # stable: ties keep file order (`or 0`: never None here)
    pending: dict[Any, tuple[int, Event]] = {}
    ops: list[Operation] = []
    done: list[tuple[int, Event, Event | None, int | None]] = []
    for t, ev in enumerate(evs):
        if ev.type not in EVENT_TYPES:
            raise HistoryError(f"unknown event type {ev.type!r}", source=source, line=ev.line)
        if ev.type == "invoke":
            if ev.process in pending:
                # the previous call never answered before this client moved on: indeterminate
                ct, cev = pending.pop(ev.process)
                done.append((ct, cev, None, None))
            pending[ev.process] = (t, ev)
            continue
        started = pending.pop(ev.process, None)
        if started is None:
            raise HistoryError(
                f"{ev.type} for process {ev.process!r} without a pending invoke", source=source, line=ev.line
            )
        ct, cev = started
        if cev.f != ev.f:
            raise HistoryError(
                f"{ev.type} :{ev.f} answers an invoke of :{cev.f} (process {ev.process!r})",
                source=source,
                line=ev.line,
            )
        if ev.type == "fail":
            continue
        if ev.type == "info":
            done.append((ct, cev, None, None))
        else:
            done.append((ct, cev, ev, t))
    for ct, cev in pending.values():
        done.append((ct, cev, None, None))
    done.sort(key=lambda d: d[0])
    for ct, cev, rev, rt in done:
        if rev is None and cev.f in READ_FUNCTIONS:
            continue
        if rev is not None and cev.f in READ_FUNCTIONS:
            value, output = cev.value, rev.value
        else:
            value, output = cev.value, (rev.value if rev is not None else None)
        ops.append(
            Operation(
                id=len(ops),
                process=cev.process,
                f=cev.f,
                key=cev.key,
                value=value,
                output=output,
                call=ct,
                ret=rt,
                node=cev.node if cev.node is not None else (rev.node if rev is not None else None),
                call_line=cev.line,
                ret_line=rev.line if rev is not None else None,
            )
        )
    return ops


def renumber(ops: Iterable[Operation]) -> list[Operation]:
    """Copies with ids 0..n-1 in call order (the checker indexes bitsets by id)."""
    out = []
    for i, op in enumerate(sorted(ops, key=lambda o: o.call)):
        out.append(
            Operation(i, op.process, op.f, op.key, op.value, op.output, op.call, op.ret, op.node,
                      op.call_line, op.ret_line, dict(op.extra, original_id=op.extra.get("original_id", op.id)))
        )
    return out


class HistoryRecorder:
    """Thread-safe recorder of a live history in the project's JSON lines format.

    Events get a monotonic timestamp and their position under one lock, so file order is
    real-time order even with many client tasks or threads; each line is flushed as written so a
    crash of the runner keeps everything recorded so far."""

    def __init__(self, out: TextIO | None = None):
        self._lock = threading.Lock()
        self._out = out
        self.events: list[Event] = []

    def _record(self, type_: str, process: Any, f: str, key: Any, value: Any, node: str | None) -> Event:
        with self._lock:
            ev = Event(type_, process, f, key, value, time.monotonic_ns(), node, len(self.events) + 1)
            self.events.append(ev)
            if self._out is not None:
                self._out.write(orjson.dumps(ev.to_json()).decode() + "\n")
                self._out.flush()
            return ev

    def invoke(self, process: Any, f: str, key: Any = None, value: Any = None, node: str | None = None) -> Event:
        return self._record("invoke", process, f, key, value, node)

    def ok(self, process: Any, f: str, key: Any = None, value: Any = None, node: str | None = None) -> Event:
        return self._record("ok", process, f, key, value, node)

    def fail(self, process: Any, f: str, key: Any = None, value: Any = None, node: str | None = None) -> Event:
        return self._record("fail", process, f, key, value, node)

    def info(self, process: Any, f: str, key: Any = None, value: Any = None, node: str | None = None) -> Event:
        return self._record("info", process, f, key, value, node)

    def operations(self) -> list[Operation]:
        with self._lock:
            return pair_events(list(self.events))
