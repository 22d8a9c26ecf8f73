"""`\\subscribe <sql>` in the `kalamdb sql` shell: print a live query's initial rows and then every
change as one line each, until Ctrl-C (or `max_events` changes, for scripts and tests).

    + {"id": "3", "body": "hi", ...}                  insert (and initial rows)
    ~ {"id": "3", "body": "hello"}  was {"body": "hi"}  update (new values, then the old ones)
    - {"id": "3", ...}                                delete
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from kalamdb.live.client import LiveQueryError, LiveSubscription


def _json(row: dict) -> str:
    return orjson.dumps({k: v for k, v in row.items() if k not in ("_seq", "_deleted")}).decode()


def describe(event: dict) -> list[str]:
    kind = event.get("type")
    if kind == "initial_data_batch":
        return [f"+ {_json(r)}" for r in event.get("rows") or []]
    if kind == "change":
        change = event.get("change_type")
        if change == "insert":
            return [f"+ {_json(r)}" for r in event.get("rows") or []]
        if change == "update":
            return [f"~ {_json(n)}  was {_json(o)}" for n, o in zip(event.get("rows") or [],
                                                                    event.get("old_values") or [], strict=False)]
        return [f"- {_json(r)}" for r in event.get("old_values") or []]
    if kind == "reconnected":
        return [f"(reconnected to {event.get('url')}, resuming after _seq {event.get('from')})"]
    if kind == "reload":
        return [f"(reloading: {event.get('reason')})"]
    return []


async def watch(url: str, sql: str, *, user: str | None, password: str | None, token: str | None,
                out: Callable[[str], None], max_events: int | None = None) -> int:
    """Print the subscription's events; returns the number of changes printed."""
    changes = 0
    async with LiveSubscription(url, sql, token=token, user=user, password=password) as sub:
        async for event in sub:
            if event.get("type") == "subscription_ack":
                names = [f["name"] for f in event.get("schema") or [] if not f["name"].startswith("_")]
                out(f"subscribed ({', '.join(names)}); Ctrl-C stops")
            for line in describe(event):
                out(line)
            if event.get("type") == "change":
                changes += 1
                if max_events is not None and changes >= max_events:
                    break
    return changes


def run_watch(url: str, sql: str, *, user: str | None, password: str | None, token: str | None,
              out: Callable[[str], None], max_events: int | None = None) -> None:
    """Blocking `watch` for the shell: Ctrl-C ends the subscription and returns to the prompt."""
    try:
        asyncio.run(watch(url, sql, user=user, password=password, token=token, out=out, max_events=max_events))
    except KeyboardInterrupt:
        out("(subscription stopped)")
    except LiveQueryError as err:
        out(f"error: {err.code}: {err.message}")
