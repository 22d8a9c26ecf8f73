"""What a write waits on, and how its wait ends: the proposal futures, the outcome errors, and the
registry of proposals waiting for their entry to be applied.

Split from the driver (node/driver.py) because these are shared by every part of it: the caller's
loop makes the futures, the Raft thread registers where a proposal was appended, the apply thread
settles it once that index is applied, and a snapshot, a leader change or a failure ends the wait
with a definite or an indefinite error (docs/cluster.md "Writes").
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from kalamdb.errors import KalamError, NotLeaderError
from kalamdb.raft.types import Entry


class WriteOutcomeUnknown(KalamError):
    """The write was proposed but its fate is unknown (it may still commit): indefinite."""

    def __init__(self, message: str):
        super().__init__("CLUSTER_UNAVAILABLE", message, status=503,
                         details="indefinite: the write may or may not have been applied")


def definite_not_leader(message: str, leader_api: str | None = None) -> NotLeaderError:
    return NotLeaderError(message, leader_api, details="definite: the write was not applied")


class ForwardRefused(KalamError):
    """The leader (or the link to it) refused a forwarded proposal: nothing was appended (definite).
    `leader_id` is who the refusing node believes leads (0: unknown)."""

    def __init__(self, code: str, message: str, leader_id: int = 0):
        super().__init__(code, message, status=503, details="definite: the write was not applied")
        self.leader_id = leader_id


def shutting_down() -> KalamError:
    return KalamError("CLUSTER_UNAVAILABLE", "node is shutting down", status=503,
                      details="indefinite: the write may or may not have been applied")


class ProposalFuture(asyncio.Future[Any]):
    """The answer to one proposal, (index, engine Outcome), plus what is known of it while it waits:
    where it was appended (so a timeout can name the write) and, when forwarded, its forward ctx."""

    raft_index: int | None = None
    forward_ctx: int | None = None


@dataclass(slots=True)
class Proposal:
    term: int
    future: ProposalFuture


@dataclass(slots=True)
class Forwarded:
    """A proposal sent to the leader that has not yet said where it appended it."""

    leader: int
    future: ProposalFuture


Settlement = tuple[asyncio.Future, Any, BaseException | None]  # (future, result, exception), for settle


def settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class ProposalTimedOut(TimeoutError):
    """The caller's wait for a proposal ran out (`await_within`); its fate is unknown."""


def _time_out(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(ProposalTimedOut())


async def await_within(fut: ProposalFuture, timeout: float) -> Any:
    """The proposal's answer, or ProposalTimedOut after `timeout` seconds. The timer ends the
    future itself (a later settle finds it done and does nothing): one timer handle per write,
    where `asyncio.wait_for(asyncio.shield(fut))` made a task, a shield future and three callbacks
    (9.5 against 3.5 µs per write on uvloop, docs/PERFORMANCE.md)."""
    timer = asyncio.get_running_loop().call_later(timeout, _time_out, fut)
    try:
        return await fut
    finally:
        timer.cancel()


class WaitingProposals:
    """index -> proposals waiting for the entry at that index to be applied here. Shared by the
    Raft thread (which adds them) and the apply thread (which settles them), hence the lock.
    Usually one per index; more when this node proposed at an index as a deposed leader and a
    later leader placed a forwarded write there."""

    def __init__(self) -> None:
        self._by_index: dict[int, list[Proposal]] = {}
        self._lock = threading.Lock()

    def track(self, index: int, term: int, fut: ProposalFuture) -> None:
        """(Raft thread) `fut` waits for the entry appended at (index, term)."""
        fut.raft_index = index
        with self._lock:
            waiting = self._by_index.get(index)
            if waiting is None:
                self._by_index[index] = [Proposal(term, fut)]
            else:
                waiting.append(Proposal(term, fut))

    def applied(self, batch: list[Entry], outcomes: list[Any]) -> list[Settlement]:
        """(apply thread) The answers for the proposals this batch of applied entries decides: the
        entry's outcome when its term is the proposal's, else definitely not applied."""
        settled: list[Settlement] = []
        with self._lock:
            if self._by_index:
                for e, outcome in zip(batch, outcomes, strict=True):
                    waiting = self._by_index.pop(e.index, None)
                    if waiting is None:
                        continue
                    for p in waiting:
                        if p.term == e.term:
                            settled.append((p.future, (e.index, outcome), None))
                        else:
                            settled.append((p.future, None, definite_not_leader(
                                f"leadership changed before write {e.index} committed; it was not applied")))
        return settled

    def pop_through(self, index: int) -> list[tuple[int, list[Proposal]]]:
        """Remove and return the proposals waiting at `index` or below, with their indexes."""
        with self._lock:
            return [(i, self._by_index.pop(i)) for i in [i for i in self._by_index if i <= index]]

    def pop_all(self) -> list[ProposalFuture]:
        """Remove and return every waiting proposal's future."""
        with self._lock:
            waiting = [p.future for ps in self._by_index.values() for p in ps]
            self._by_index.clear()
        return waiting
