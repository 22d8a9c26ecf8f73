"""The proxy in front of the real Raft peer transport (HMAC handshake, msgpack frames): partitions
block exactly the directions the matrix says, loss never breaks a connection's handshake."""

from __future__ import annotations

import asyncio

import pytest
from faults_frames import until

from kalamdb.raftio.transport import PeerTransport

pytestmark = pytest.mark.timeout(60)

NODES = (1, 2, 3)


@pytest.fixture
async def cluster(net):
    """Three transports whose every peer address is a proxy of ``net``; inbox[b] = [(src, payload)]."""
    inbox = {n: [] for n in NODES}
    nodes = {n: PeerTransport(n, ("127.0.0.1", 0), b"s3cret", on_message=lambda s, p, n=n: inbox[n].append((s, p)))
             for n in NODES}
    try:
        for t in nodes.values():
            await t.start()
        for a in NODES:
            for b in NODES:
                if a != b:
                    nodes[a].set_peer(b, net.add_link(a, b, ("127.0.0.1", nodes[b].bound_port)))
        yield nodes, inbox
    finally:
        for t in nodes.values():
            await t.stop()


async def test_partition_blocks_exactly_the_unreachable_directions(net, cluster):
    nodes, inbox = cluster
    for a in NODES:  # connect and authenticate every link first
        for b in NODES:
            if a != b:
                assert nodes[a].send(b, ["hello", a])
    await until(lambda: all(len(inbox[b]) == 2 for b in NODES), what="all hellos")
    net.partition_majorities_ring()
    expected = net.reachability()
    assert sorted(expected.values()).count(False) == 3  # one-way grudges
    for (a, b) in expected:
        assert nodes[a].send(b, ["probe", a])

    def judged():  # per direction: AUTH + hello + probe one way, HELLO + WELCOME on the reverse link
        st = net.stats()
        return all(st[k].frames_passed + st[k].frames_dropped == 5 for k in expected)

    await until(judged, what="the proxy to judge every probe")
    net.heal()
    for (a, b) in expected:
        assert nodes[a].send(b, ["marker", a])
    await until(lambda: all(sum(p[0] == "marker" for _, p in inbox[b]) == 2 for b in NODES),
                what="all markers")
    for (a, b), reachable in expected.items():
        assert (["probe", a] in [p for _, p in inbox[b]]) == reachable, (a, b)
    assert all(t.stats["reconnects"] == 0 for t in nodes.values())  # a stream, not a broken one


async def test_loss_loses_messages_but_never_a_handshake_or_a_connection(net, cluster, seed):
    nodes, inbox = cluster
    net.loss(0.3)
    n = 500
    for i in range(n):
        assert nodes[1].send(2, ["m", i])
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the writer flush: several batches, not one
    await until(lambda: net.stats()[(1, 2)].frames_passed + net.stats()[(1, 2)].frames_dropped == n + 1,
                what="the proxy to judge every message")
    net.loss(0)
    assert nodes[1].send(2, ["m", n])
    await until(lambda: inbox[2] and inbox[2][-1][1] == ["m", n], what="the final message")
    got = [p[1] for _, p in inbox[2]]
    assert got == sorted(got)
    # Binomial(500, 0.7): mean 350, sd 10.2; +/- 5 sd.
    assert 299 <= len(got) - 1 <= 401, f"{len(got) - 1} of {n} delivered (seed {seed})"
    assert nodes[2].stats["refused_total"] == 0
    assert nodes[1].stats["reconnects"] == 0
