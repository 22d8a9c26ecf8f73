"""How a kit cluster places and starts its nodes, one seam (`Launcher`) with three implementations:

  * `LoopbackLauncher` ("loopback"): every node on 127.0.0.1. Ports are chosen without races: the
    kit binds each node's API and Raft sockets itself (port 0, so the kernel picks), hands the
    listening sockets to the child by file descriptor, and only then closes its own copies. A
    restarted node binds the same ports again, as a real server does with its configured ports.
  * `ProxyLauncher` ("proxy"): the same sockets, but every node is told to reach each peer through
    a proxy of its own link and clients reach it through a client proxy (`network.ProxyNetwork`).
  * `kalamdb.testing.netns_cluster.NetnsLauncher` ("netns"): each node in its own namespace.

A launcher decides addresses (`place`), what each node is told about its peers (`peers_for`), how
the serve command is run (`command`) and where clients go (`client_url`); the cluster builds the
rest of a node's environment itself, fresh for every start.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kalamdb.testing.network import NetworkFaults, ProxyNetwork

if TYPE_CHECKING:
    from kalamdb.testing.process import NodeProcess


@dataclass
class Placement:
    """Where a node listens."""

    host: str
    api_port: int
    rpc_port: int

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def rpc_addr(self) -> str:
        return f"{self.host}:{self.rpc_port}"


class Launcher(Protocol):
    @property
    def mode(self) -> str: ...
    @property
    def network(self) -> NetworkFaults | None: ...

    def place(self, node_id: int) -> Placement: ...
    def command(self, node: NodeProcess, serve_argv: list[str]) -> tuple[list[str], tuple[int, ...]]: ...
    def started(self, node: NodeProcess) -> None: ...
    def peers_for(self, node: NodeProcess, members: list[NodeProcess]) -> str: ...
    def client_url(self, node: NodeProcess) -> str: ...
    def forget(self, node: NodeProcess) -> None: ...
    def close(self) -> None: ...


def bind_listener(host: str, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(2048)
    s.set_inheritable(True)
    return s


def peer_entry(node_id: int, rpc_addr: str, api_url: str) -> str:
    """One entry of KALAMDB_CLUSTER_PEERS: `id@host:rpc@http://host:api`."""
    return f"{node_id}@{rpc_addr}@{api_url}"


class HandedSockets:
    """Listening sockets the kit binds for a node and hands to its process by file descriptor: the
    ports are the node's before it runs (no race with other processes), and peers that dial early
    wait in the listen backlog instead of being refused. `binder(host, port)` makes one socket
    (in the node's network namespace, for the netns mode)."""

    def __init__(self, binder: Callable[[int, str, int], socket.socket]):
        self._binder = binder
        self._socks: dict[int, tuple[socket.socket, socket.socket]] = {}

    def bind(self, node_id: int, host: str, api_port: int = 0, rpc_port: int = 0) -> tuple[int, int]:
        api, rpc = self._binder(node_id, host, api_port), self._binder(node_id, host, rpc_port)
        self._socks[node_id] = (api, rpc)
        return api.getsockname()[1], rpc.getsockname()[1]

    def command(self, node: NodeProcess, serve_argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        if node.node_id not in self._socks:  # a restart: the same ports again
            self.bind(node.node_id, node.placement.host, node.placement.api_port, node.placement.rpc_port)
        api, rpc = self._socks[node.node_id]
        argv = [*serve_argv, "--listen-fd", str(api.fileno()), "--rpc-fd", str(rpc.fileno())]
        return argv, (api.fileno(), rpc.fileno())

    def release(self, node_id: int) -> None:
        """The child owns the listening sockets now: close the kit's copies."""
        for s in self._socks.pop(node_id, ()):
            s.close()

    def close(self) -> None:
        for node_id in list(self._socks):
            self.release(node_id)


class LoopbackLauncher:
    """Nodes on 127.0.0.1 with sockets the kit binds and hands over."""

    mode = "loopback"
    network: NetworkFaults | None = None
    host = "127.0.0.1"

    def __init__(self) -> None:
        self._sockets = HandedSockets(lambda _node_id, host, port: bind_listener(host, port))

    def place(self, node_id: int) -> Placement:
        api_port, rpc_port = self._sockets.bind(node_id, self.host)
        return Placement(self.host, api_port, rpc_port)

    def command(self, node: NodeProcess, serve_argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        return self._sockets.command(node, serve_argv)

    def started(self, node: NodeProcess) -> None:
        self._sockets.release(node.node_id)

    def peers_for(self, node: NodeProcess, members: list[NodeProcess]) -> str:
        return ";".join(peer_entry(m.node_id, m.rpc_addr, m.listen_url) for m in members)

    def client_url(self, node: NodeProcess) -> str:
        return node.placement.api_url

    def forget(self, node: NodeProcess) -> None:
        self._sockets.release(node.node_id)

    def close(self) -> None:
        self._sockets.close()


class ProxyLauncher:
    """Loopback sockets, with every peer link and each node's client link through a proxy."""

    mode = "proxy"

    def __init__(self, seed: int, proxy_clients: bool = True):
        self._local = LoopbackLauncher()
        self.proxies = ProxyNetwork(seed, proxy_clients)
        self.network: NetworkFaults | None = self.proxies
        self.proxy_clients = proxy_clients

    def place(self, node_id: int) -> Placement:
        return self._local.place(node_id)

    def command(self, node: NodeProcess, serve_argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        return self._local.command(node, serve_argv)

    def started(self, node: NodeProcess) -> None:
        self._local.started(node)

    def peers_for(self, node: NodeProcess, members: list[NodeProcess]) -> str:
        """Itself as it listens, every other member through the proxy of the link node -> member.
        A node's configured addresses win over replicated ones, so it keeps using the proxies."""
        parts = [peer_entry(node.node_id, node.rpc_addr, node.listen_url)]
        for other in members:
            if other is node:
                continue
            (rh, rp), (hh, hp) = self._link(node, other)
            parts.append(peer_entry(other.node_id, f"{rh}:{rp}", f"http://{hh}:{hp}"))
            self._link(other, node)  # the way back exists before anyone dials it
        return ";".join(parts)

    def _link(self, src: NodeProcess, dst: NodeProcess) -> tuple[tuple[str, int], tuple[str, int]]:
        p = dst.placement
        return self.proxies.link(src.node_id, dst.node_id, (p.host, p.rpc_port), (p.host, p.api_port))

    def client_url(self, node: NodeProcess) -> str:
        if not self.proxy_clients:
            return node.placement.api_url
        host, port = self.proxies.client_link(node.node_id, (node.placement.host, node.placement.api_port))
        return f"http://{host}:{port}"

    def forget(self, node: NodeProcess) -> None:
        self._local.forget(node)

    def close(self) -> None:
        self._local.close()
        self.proxies.close()
