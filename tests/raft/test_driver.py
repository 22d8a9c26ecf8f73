"""The Raft driver (node/driver.py) on real threads, storage and sockets, over a toy state machine:
forwarded proposals keep their definite/indefinite semantics, and a node whose Raft cannot be
trusted stops (fail-stop) instead of lingering."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kalamdb.node.proposals import ForwardRefused
from kalamdb.raft.core import RaftSafetyError
from kalamdb.raftio.storage import LogStorage
from kalamdb.testing.waiting import async_wait_for
from tests.raft.driver_harness import start_cluster, stop_all


@pytest.fixture(autouse=True)
def refuse_instead_of_exit(monkeypatch):
    """A failing driver would end the test process; in refuse mode it stays up, refusing."""
    monkeypatch.setenv("KALAMDB_ON_STORAGE_FAILURE", "refuse")


async def test_a_forwarded_write_is_answered_from_the_followers_own_apply(tmp_path):
    drivers = await start_cluster(tmp_path)
    try:
        leader, follower = drivers[0], drivers[1]
        index, outcome = await asyncio.wait_for(follower.forward(leader.node_id, b"hello"), 5)
        assert outcome[:2] == ("applied on", follower.node_id)  # the follower's own state machine
        assert follower.db.items[-1] == b"hello" and follower.applied_index >= index
        assert leader.proposer.from_peers == 1 and follower.proposer.forwarded == 1
    finally:
        await stop_all(drivers)


async def test_a_node_that_does_not_lead_refuses_definitely_and_names_the_leader(tmp_path):
    drivers = await start_cluster(tmp_path)
    try:
        with pytest.raises(ForwardRefused) as info:
            await asyncio.wait_for(drivers[1].forward(drivers[2].node_id, b"to a follower"), 5)
        assert info.value.code == "NOT_LEADER" and info.value.leader_id == 1
        assert info.value.details.startswith("definite:")
        await asyncio.sleep(0.1)  # nothing may show up late (a fixed pause: proving an absence)
        assert all(b"to a follower" not in d.db.items for d in drivers)
    finally:
        await stop_all(drivers)


async def test_a_raft_safety_violation_stops_the_node(tmp_path, caplog):
    drivers = await start_cluster(tmp_path)
    try:
        victim = drivers[2]
        real_step = victim.core.step

        def detects_violation(m):  # stands in for the core's own check (RaftCore._handle_append)
            raise RaftSafetyError(f"append from {m.frm} conflicts with committed index {victim.core.commit_index}")

        victim.core.step = detects_violation
        caplog.set_level(logging.CRITICAL, logger="kalamdb.raft.driver")
        await async_wait_for(lambda: victim.fatal is not None, 15, "the violation to stop the node")
        assert isinstance(victim.fatal, RaftSafetyError)
        # `_fail` marks the node failed first and logs right after, on the Raft thread: wait for both
        await async_wait_for(lambda: any("Raft safety violation" in r.getMessage() for r in caplog.records), 5,
                             "the violation to be logged CRITICAL")
        with pytest.raises(Exception, match="safety|failure|stopped"):
            await asyncio.wait_for(victim.forward(1, b"after"), 5)
        victim.core.step = real_step
        index, _ = await asyncio.wait_for(drivers[1].forward(1, b"the others go on"), 15)
        assert index > 0
    finally:
        await stop_all(drivers)


async def test_a_raft_loop_that_dies_stops_the_node(tmp_path):
    drivers = await start_cluster(tmp_path)
    try:
        victim = drivers[1]
        victim.failpoints.set("raft.ready", "1*eio")
        await asyncio.wait_for(drivers[0].propose(b"wake every loop"), 5)
        await async_wait_for(lambda: victim.fatal is not None, 15, "the dead loop to stop the node")
        assert "raft.ready" in str(victim.fatal)
        with pytest.raises(Exception, match="stopped serving"):
            victim.propose(b"refused")
    finally:
        await stop_all(drivers)


async def test_applied_batches_wake_the_callers_loop_only_when_someone_there_waits(tmp_path):
    drivers = await start_cluster(tmp_path)
    try:
        leader, follower = drivers[0], drivers[1]
        wakeups = {d.node_id: 0 for d in drivers}
        for d in drivers:
            real = d._after_apply

            def counted(applied, settled, d=d, real=real):
                wakeups[d.node_id] += 1
                real(applied, settled)

            d._after_apply = counted
        for i in range(20):
            index, _ = await asyncio.wait_for(leader.propose(b"w%d" % i), 5)
        # the leader's own proposals were waited for; nobody waited on the follower
        assert wakeups[leader.node_id] >= 1 and wakeups[follower.node_id] == 0, wakeups
        # a wait registered now still ends as soon as the index is applied there
        assert await follower.wait_applied(index, 5)
        _, _ = await asyncio.wait_for(follower.forward(leader.node_id, b"from the follower"), 5)
        assert wakeups[follower.node_id] >= 1  # its own forwarded write is settled on its loop
    finally:
        await stop_all(drivers)


class _AppliedBetweenReads:
    """An applier whose index moves on right after the driver's first look at it: the moment the
    apply thread may skip the wake-up because no waiter is queued yet."""

    def __init__(self, before: int, after: int):
        self.reads = 0
        self.before, self.after = before, after

    @property
    def applied_index(self) -> int:
        self.reads += 1
        return self.before if self.reads == 1 else self.after


async def test_a_wait_that_races_the_apply_thread_is_not_lost(tmp_path):
    drivers = await start_cluster(tmp_path)
    follower = drivers[1]
    real = follower.applier
    try:
        target = real.applied_index + 1000  # no entry reaches it: only the re-check can end the wait
        follower.applier = _AppliedBetweenReads(target - 1, target)
        started = asyncio.get_running_loop().time()
        assert await follower.wait_applied(target, 5)
        assert asyncio.get_running_loop().time() - started < 1.0, "the wait waited for a wake-up that never comes"
    finally:
        follower.applier = real
        await stop_all(drivers)


async def test_a_commit_alone_is_not_written_and_a_clean_stop_writes_it(tmp_path):
    """Commit is volatile: a Ready that only moves it writes nothing (the next entries carry it), and
    a clean stop records the last one, so a restart starts from where it was."""
    drivers = await start_cluster(tmp_path)
    stopped = False
    try:
        leader = drivers[0]
        for i in range(5):
            index, _ = await asyncio.wait_for(leader.propose(b"w%d" % i), 5)
        await async_wait_for(lambda: all(d.core.commit_index >= index and d.applied_index >= index for d in drivers),
                             5, "every node to commit and apply the last write")
        for d in drivers:
            # the last write's commit reached each node with no entry after it: known, not written
            assert d.storage.hard_state.commit < d.core.commit_index, d.node_id
        commits = {d.node_id: d.core.commit_index for d in drivers}
        await stop_all(drivers)
        stopped = True
        for d in drivers:
            with LogStorage.open(tmp_path / f"n{d.node_id}" / "log") as store:
                assert store.load().hard_state.commit == commits[d.node_id], d.node_id
    finally:
        if not stopped:
            await stop_all(drivers)


async def test_a_forwarded_proposals_answer_leaves_with_its_entry_before_the_leaders_fsync(tmp_path):
    """The leader's answer to a follower's proposal (prop_ok) and the AppendEntries that carry the
    entry go to that follower in one send, ahead of the entry, and before the leader's own fsync
    of it: the follower's disk write overlaps the leader's, as for a write proposed on the leader."""
    drivers = await start_cluster(tmp_path)
    try:
        leader, follower = drivers[0], drivers[1]
        await asyncio.wait_for(leader.propose(b"warm up"), 5)  # links up, nothing in flight
        events: list[tuple] = []  # on the leader's Raft thread, in order
        transport, storage = leader.transport, leader.storage
        real_send, real_send_many, real_sync = transport.send, transport.send_many, storage.begin_sync

        def send(dst, payload):
            events.append(("send", dst, payload))
            return real_send(dst, payload)

        def send_many(dst, payloads):
            events.append(("send_many", dst, list(payloads)))
            return real_send_many(dst, payloads)

        def begin_sync():  # the fsync is handed to the log's sync thread
            events.append(("sync",))
            return real_sync()

        transport.send, transport.send_many, storage.begin_sync = send, send_many, begin_sync
        try:
            index, _ = await asyncio.wait_for(follower.forward(leader.node_id, b"forwarded"), 5)
        finally:
            transport.send, transport.send_many, storage.begin_sync = real_send, real_send_many, real_sync
        carries = [i for i, e in enumerate(events) if e[0] == "send_many" and e[1] == follower.node_id
                   and any(type(p[0]) is int and any(ent[1] == index for ent in p[11]) for p in e[2])]
        assert carries, f"no AppendEntries carried entry {index} to node {follower.node_id}: {events}"
        first = events[carries[0]]
        answer = next((p for p in first[2] if type(p[0]) is str), None)
        assert answer is not None, f"the answer did not travel with the entry: {events}"
        assert answer[0] == "prop_ok" and answer[2] == index, first
        assert first[2].index(answer) < next(i for i, p in enumerate(first[2]) if type(p[0]) is int)
        assert ("sync",) in events[carries[0]:], "the entry left after the leader's fsync, not before it"
        assert not [e for e in events if e[0] == "send" and e[2][0] == "prop_ok"], "the answer went out on its own"
    finally:
        await stop_all(drivers)


async def test_a_leader_whose_fsync_stalls_keeps_its_followers_from_electing(tmp_path):
    """The log's fdatasync runs on the sync thread (raftio/log_sync.py): while a leader's disk takes
    longer than an election timeout (150-300 ms here), its Raft thread keeps ticking and sends its
    heartbeats (RaftCore.take_early_messages), so nobody campaigns; the write still commits on the
    followers' fsyncs and is answered once the leader's own is done. With the fsync on the Raft
    thread, the leader went silent for the whole stall and lost its leadership."""
    drivers = await start_cluster(tmp_path)
    try:
        leader = drivers[0]
        await asyncio.wait_for(leader.propose(b"warm up"), 5)
        terms = [d.core.term for d in drivers]
        sent_early = leader.loops.early_messages
        leader.failpoints.set("log.fsync", "2*delay(600)")  # two fsyncs of 0.6 s each
        index, _ = await asyncio.wait_for(leader.propose(b"through a slow disk"), 10)
        await asyncio.wait_for(leader.propose(b"and another"), 10)
        assert not leader.failpoints.armed("log.fsync"), "both slow fsyncs happened"
        assert [d.core.term for d in drivers] == terms, "an election happened during the slow fsyncs"
        assert leader.is_leader and all(d.leader_id == leader.node_id for d in drivers)
        assert leader.loops.early_messages - sent_early >= 2 * 2 * 2, "heartbeats left during the fsyncs"
        assert leader.loops.max_tick_lateness_s < 0.15, "the Raft thread froze with its disk"
        await async_wait_for(lambda: all(d.applied_index >= index for d in drivers), 5, "everyone to apply")
    finally:
        await stop_all(drivers)


async def test_forwarded_writes_during_a_slow_leader_fsync_learn_their_index_before_their_entry(tmp_path):
    """While the leader's fsync is in flight it sends appends early (take_early_messages); one may
    carry a follower's forwarded entry, so the answer naming its index goes ahead of it in the same
    send, as with a Ready's messages. Otherwise the follower commits the entry before it knows it is
    its own, and can only answer that the outcome is unknown."""
    drivers = await start_cluster(tmp_path)
    try:
        leader, follower = drivers[0], drivers[1]
        await asyncio.wait_for(follower.forward(leader.node_id, b"warm up"), 5)
        leader.failpoints.set("log.fsync", "4*delay(300)")

        async def later(i: int):  # spread over the slow fsyncs: most arrive while one is in flight
            await asyncio.sleep(i * 0.02)
            return await follower.forward(leader.node_id, b"w%d" % i)

        results = await asyncio.wait_for(asyncio.gather(*(later(i) for i in range(40)), return_exceptions=True), 20)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, failed[:3]
        assert leader.loops.early_messages > 0, "appends left while the leader's fsync was in flight"
    finally:
        await stop_all(drivers)


async def test_a_snapshot_recorded_during_the_leaders_fsync_does_not_stop_it(tmp_path):
    """The snapshotter records a snapshot and syncs the log on the Raft thread, which may come while
    the Ready loop's fsync is on the sync thread: that plain sync must go through, not refuse (it
    stopped nodes at their first snapshot under load before LogStorage.sync allowed it)."""
    drivers = await start_cluster(tmp_path)
    try:
        leader = drivers[0]
        await asyncio.wait_for(leader.propose(b"warm up"), 5)
        leader.failpoints.set("log.fsync", "1*delay(400)")
        write = asyncio.ensure_future(leader.propose(b"during a slow fsync"))
        await async_wait_for(lambda: not leader.failpoints.armed("log.fsync"), 5, "the slow fsync to begin")
        index = await asyncio.wait_for(leader.take_snapshot(), 5)
        await asyncio.wait_for(write, 5)
        assert leader.fatal is None, leader.fatal
        assert leader.last_snapshot_index == index and index >= 1
        await asyncio.wait_for(leader.propose(b"after"), 5)
    finally:
        await stop_all(drivers)
