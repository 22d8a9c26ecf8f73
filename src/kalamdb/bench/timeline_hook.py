"""The node side of `python -m kalamdb.bench.timeline`: stamps of one write's hand-offs.

Installed at interpreter start-up by a `sitecustomize` module that the timeline tool puts first on
the nodes' PYTHONPATH (as `profile_hook` does for cProfile), and only when KALAMDB_TIMELINE names a
directory. It wraps the methods a write passes through, on whichever thread runs them, and appends
`(perf_counter_ns, event)` to a deque that a daemon thread writes out every half second and at
exit. `perf_counter_ns` is CLOCK_MONOTONIC on Linux, one clock for every process of the machine, so
the three nodes' stamps can be merged into one timeline.

Nothing here is imported by a node that was not started by the tool: the wrapped methods stay as
they are, at no cost. The wrapped names are private to their modules; a rename makes `install`
record `hook-error` instead of stamps, and the tool then says which name went missing
(tests/bench/test_timeline.py runs it).
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMELINE_ENV = "KALAMDB_TIMELINE"
FLUSH_EVERY_S = 0.5


class _Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.events: collections.deque[tuple[int, str]] = collections.deque()  # append/popleft: thread-safe
        self.stamp = time.perf_counter_ns
        self._writing = threading.Lock()  # the flusher thread and the exit's last flush: whole lines each

    def __call__(self, event: str) -> None:
        self.events.append((self.stamp(), event))

    def flush(self) -> None:
        with self._writing:
            lines = []
            events = self.events
            while events:
                t, e = events.popleft()
                lines.append(f"{t} {e}\n")
            if lines:
                with self.path.open("a") as f:
                    f.write("".join(lines))

    def flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            self.flush()


def _wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    setattr(owner, name, make(getattr(owner, name)))


def install(out_dir: str) -> None:
    """Wrap the write path's methods so that they stamp into `out_dir/node<ID>.events`."""
    node = os.environ.get("KALAMDB_NODE_ID", f"pid{os.getpid()}")
    rec = _Recorder(Path(out_dir) / f"node{node}.events")
    atexit.register(rec.flush)
    threading.Thread(target=rec.flush_forever, name="timeline-flush", daemon=True).start()
    try:
        _patch(rec)
    except (AttributeError, ImportError) as exc:
        rec(f"hook-error {type(exc).__name__}: {exc}".replace("\n", " "))


def _patch(ev: Callable[[str], None]) -> None:
    from kalamdb.node import apply_router, cluster_node, proposing, raft_loops
    from kalamdb.raft.messages import MsgType
    from kalamdb.raftio import log_sync
    from kalamdb.server import sql_endpoint

    def handler(orig: Any) -> Any:
        async def __call__(self: Any, request: Any) -> Any:
            ev("request")
            response = await orig(self, request)
            ev("response")
            return response
        return __call__

    def submit(orig: Any) -> Any:
        async def submit(self: Any, command: bytes) -> Any:
            ev("submitted")
            return await orig(self, command)
        return submit

    def stamped(event: str) -> Callable[[Any], Any]:
        def make(orig: Any) -> Any:
            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                ev(event)
                return orig(self, *args, **kwargs)
            return method
        return make

    def on_message(orig: Any) -> Any:
        def on_message(self: Any, src: int, payload: Any) -> Any:
            if isinstance(payload, list) and len(payload) == 16:  # a Raft message (Message.to_wire)
                kind = payload[0]
                if kind == MsgType.APP and payload[11]:
                    ev("append-in")
                elif kind == MsgType.APP_RESP and not payload[7]:
                    ev("ack-in")
            return orig(self, src, payload)
        return on_message

    def send_messages(orig: Any) -> Any:
        def _send_messages(self: Any, messages: list, by_dst: dict) -> Any:
            result = orig(self, messages, by_dst)
            if any(m.type is MsgType.APP and m.entries for m in messages):
                ev("appends-sent")
            elif any(m.type is MsgType.APP_RESP for m in messages):
                ev("ack-sent")
            return result
        return _send_messages

    def sync(orig: Any) -> Any:
        async def sync(self: Any, storage: Any, ticket: Any) -> None:
            ev("fsync-begin")
            await orig(self, storage, ticket)
            ev("fsync-end")
        return sync

    def drain(orig: Any) -> Any:
        def _drain(self: Any) -> None:
            ev("apply-begin")
            orig(self)
            ev("apply-end")
        return _drain

    _wrap(sql_endpoint.SqlHandler, "__call__", handler)
    _wrap(cluster_node.ClusterNode, "submit", submit)
    _wrap(proposing.Proposer, "_propose_here", stamped("proposed"))
    _wrap(proposing.Proposer, "_forward_here", stamped("forwarded"))
    _wrap(proposing.Proposer, "_on_propose", stamped("proposal-in"))
    _wrap(raft_loops.RaftLoops, "on_message", on_message)
    _wrap(raft_loops.RaftLoops, "_send_messages", send_messages)
    _wrap(log_sync.LogSyncer, "sync", sync)
    _wrap(apply_router.ApplyRouter, "submit", stamped("commit-handed"))
    _wrap(apply_router.ApplyRouter, "_drain", drain)
