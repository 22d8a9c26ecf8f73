"""node/hops.py: how the driver's parts cross between the Raft thread's loop and the caller's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kalamdb.errors import KalamError
from kalamdb.node.hops import ThreadHops


async def test_work_sent_to_the_callers_loop_from_another_thread_runs_on_that_loop():
    hops = ThreadHops()
    hops.bind_caller()
    ran_on: list[int] = []
    done = asyncio.Event()

    def note() -> None:
        ran_on.append(threading.get_ident())
        done.set()

    t = threading.Thread(target=hops.to_caller, args=(note,))
    t.start()
    t.join()
    await asyncio.wait_for(done.wait(), 5)
    assert ran_on == [threading.get_ident()]


async def test_work_sent_to_the_callers_loop_from_that_loop_waits_its_turn():
    hops = ThreadHops()
    hops.bind_caller()
    ran: list[str] = []
    hops.to_caller(ran.append, "later")
    ran.append("now")  # never run inline: the caller's current step finishes first
    await asyncio.sleep(0)  # one scheduling step: the callback queued above runs in it
    assert ran == ["now", "later"]


def test_a_hop_to_the_raft_thread_before_it_started_is_a_503_not_a_crash():
    hops = ThreadHops()
    with pytest.raises(KalamError) as e:
        hops.to_raft(print)
    assert e.value.status == 503 and "not started" in e.value.message


def test_a_hop_to_a_closed_raft_loop_says_the_node_is_shutting_down():
    hops = _bound_to_a_closed_loop(ThreadHops.bind_raft)
    with pytest.raises(KalamError) as e:
        hops.to_raft(print)
    assert e.value.status == 503 and "shutting down" in e.value.message


def test_work_for_a_closed_callers_loop_is_dropped_quietly():
    hops = _bound_to_a_closed_loop(ThreadHops.bind_caller)
    hops.to_caller(print, "nobody waits for this any more")  # must not raise


def _bound_to_a_closed_loop(bind) -> ThreadHops:
    """Hops with one of its loops bound (`bind`), that loop since closed (a node that stopped)."""
    hops = ThreadHops()

    async def run() -> None:
        bind(hops)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run())
    loop.close()
    return hops
