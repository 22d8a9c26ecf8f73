"""node/proposals.py: how a caller's wait for a proposal ends."""

import asyncio

import pytest

from kalamdb.node.proposals import ProposalFuture, ProposalTimedOut, await_within, settle


def test_the_answer_comes_back_when_the_proposal_is_settled_in_time():
    async def go():
        loop = asyncio.get_running_loop()
        fut = ProposalFuture(loop=loop)
        loop.call_later(0.01, settle, fut, (7, "outcome"), None)
        assert await await_within(fut, 5) == (7, "outcome")
        assert not loop._scheduled or all(h.cancelled() for h in loop._scheduled)  # the timer is gone

    asyncio.run(go())


def test_a_settled_error_is_raised_as_it_is():
    async def go():
        loop = asyncio.get_running_loop()
        fut = ProposalFuture(loop=loop)
        loop.call_soon(settle, fut, None, ValueError("definite"))
        with pytest.raises(ValueError, match="definite"):
            await await_within(fut, 5)

    asyncio.run(go())


def test_a_timeout_ends_the_future_so_a_late_settle_changes_nothing():
    async def go():
        loop = asyncio.get_running_loop()
        fut = ProposalFuture(loop=loop)
        fut.raft_index = 42
        with pytest.raises(ProposalTimedOut):
            await await_within(fut, 0.01)
        assert isinstance(fut.exception(), ProposalTimedOut) and fut.raft_index == 42
        settle(fut, (42, "late"), None)  # the apply reaching it afterwards
        assert isinstance(fut.exception(), ProposalTimedOut)
        assert isinstance(ProposalTimedOut(), TimeoutError)

    asyncio.run(go())


def test_a_cancelled_caller_leaves_a_future_the_apply_can_still_settle_harmlessly():
    async def go():
        loop = asyncio.get_running_loop()
        fut = ProposalFuture(loop=loop)
        task = loop.create_task(await_within(fut, 5))
        await asyncio.sleep(0)  # let the task start waiting (a scheduling step, not a wait for state)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        settle(fut, (1, "applied"), None)  # must not raise InvalidStateError
        assert fut.cancelled()

    asyncio.run(go())
