"""The netns network mode of a kit cluster (`start_cluster_server(n, faults=True, network="netns")`,
`kalamdb chaos --network netns`): every node runs in its own network namespace with its own IP on a
bridge (`kalamdb.testing.netns`), and network faults are nftables rules in the kernel.

Each node listens on its own IP at fixed ports (8080 HTTP, 9188 Raft, upstream's defaults: nobody
else can hold a port on an IP that exists only in its namespace) on sockets the kit binds inside the
namespace and hands over (so peers that dial early wait in the backlog), and is told its peers' real
addresses. The test process reaches every node at its IP through one host veth; the bridge has no
way out, so no packet of a test ever leaves the machine. Each cluster takes a /24 of 10.213.0.0/16
that no route of the host uses yet (chosen under a file lock, so parallel runs get different ones).

What the kernel can and cannot do here (docs/faults.md): partitions of every shape, one-way cuts,
client isolation, per-packet loss and bandwidth limits, yes; delay and jitter, no (no netem qdisc
on this kernel); clog and connection resets are proxy-only.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kalamdb.testing import netns
from kalamdb.testing.launchers import HandedSockets, Placement, peer_entry
from kalamdb.testing.network import FaultNotSupported, Link
from kalamdb.testing.runs import runs_dir

if TYPE_CHECKING:
    from kalamdb.testing.process import NodeProcess
    from kalamdb.testing.runs import RunRecord

API_PORT = 8080
RPC_PORT = 9188
SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")

_reason: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why the netns mode cannot run here (None when it can); probed once per process."""
    if not _reason:
        _reason.append(netns.unavailable_reason())
    return _reason[0]


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    with open(runs_dir() / "netns.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _routed() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show"], check=False, capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        dest = line.split()[0] if line.strip() else "default"
        if dest != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dest, strict=False))
    return nets


def free_subnet(seed: int) -> str:
    """A /24 of 10.213.0.0/16 that no host route overlaps (call under the allocation lock)."""
    taken = _routed()
    subnets = list(SUBNETS.subnets(new_prefix=24))[1:]
    start = (seed ^ os.getpid()) % len(subnets)
    for k in range(len(subnets)):
        candidate = subnets[(start + k) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise RuntimeError(f"every /24 of {SUBNETS} is routed already: too many netns clusters at once?")


class NetnsFaults:
    """`NetworkFaults` by kernel rules (see `kalamdb.testing.netns.NetnsNetwork`)."""

    mode = "netns"
    _SUPPORTED = ("partition", "loss", "bandwidth", "clients")

    def __init__(self, net: netns.NetnsNetwork):
        self.net = net

    def supports(self, feature: str) -> bool:
        return feature in self._SUPPORTED

    def _not(self, what: str) -> FaultNotSupported:
        return FaultNotSupported(f"{what} is not possible in netns mode: this kernel has no netem qdisc "
                                 "(delay) and the kit does not hold or reset kernel connections (clog, reset); "
                                 "use network='proxy' (docs/faults.md, 'Which network mode')")

    def partition_grudge(self, grudge: dict[int, set[int]]) -> None:
        self.net.partition_grudge(grudge)

    def cut(self, a: int, b: int) -> None:
        self.net.cut(a, b)

    def uncut(self, a: int, b: int) -> None:
        self.net.uncut(a, b)

    def heal(self) -> None:
        self.net.heal()

    def clear(self) -> None:
        self.net.clear_all()

    def delay(self, ms: float, jitter_ms: float, links: list[Link] | None) -> None:
        if ms or jitter_ms:
            raise self._not("delay")

    def loss(self, p: float, links: list[Link] | None) -> None:
        self.net.loss(p, links)

    def bandwidth(self, kbps: float | None, links: list[Link] | None) -> None:
        self.net.bandwidth(kbps, links)

    def clog(self, a: int, b: int) -> None:
        raise self._not("clog")

    def unclog(self, a: int, b: int) -> None:
        raise self._not("clog")

    def reset(self, a: int, b: int) -> int:
        raise self._not("reset")

    def isolate_client(self, node_id: int) -> None:
        self.net.isolate_client(node_id)

    def unisolate_client(self, node_id: int) -> None:
        self.net.unisolate_client(node_id)

    def reachability(self, node_ids: list[int]) -> dict[Link, bool]:
        known = self.net.reachability()
        return {(a, b): known.get((a, b), True) for a in node_ids for b in node_ids if a != b}

    def stats(self) -> dict[str, dict[Link, netns.RuleStats]]:
        return {"kernel": self.net.stats()}

    def close(self) -> None:
        self.net.close()


class NetnsLauncher:
    """Places each node in a namespace of its own and starts it there (`ip netns exec`, same pid)."""

    mode = "netns"

    def __init__(self, record: RunRecord, seed: int, size: int):
        with _allocation_lock():
            subnet = free_subnet(seed)
            self.net = netns.NetnsNetwork(range(1, size + 1), subnet=subnet, host_access=True, record=record)
        self.faults = NetnsFaults(self.net)
        self.network = self.faults
        # sockets bound inside each node's namespace and handed over, as in the loopback mode
        self._sockets = HandedSockets(lambda node_id, host, port: self.net.bind_listener(node_id, host, port))

    def place(self, node_id: int) -> Placement:
        self.net.add_node(node_id)  # a node joining at run time gets its namespace here
        self._sockets.bind(node_id, self.net.ip(node_id), API_PORT, RPC_PORT)
        return Placement(self.net.ip(node_id), API_PORT, RPC_PORT)

    def command(self, node: NodeProcess, serve_argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        argv, fds = self._sockets.command(node, serve_argv)
        return self.net.command(node.node_id, argv), fds

    def started(self, node: NodeProcess) -> None:
        self._sockets.release(node.node_id)

    def peers_for(self, node: NodeProcess, members: list[NodeProcess]) -> str:
        return ";".join(peer_entry(m.node_id, m.rpc_addr, m.listen_url) for m in members)

    def client_url(self, node: NodeProcess) -> str:
        return node.placement.api_url

    def forget(self, node: NodeProcess) -> None:
        self._sockets.release(node.node_id)
        self.net.remove_node(node.node_id)

    def close(self) -> None:
        self._sockets.close()
        self.net.close()
