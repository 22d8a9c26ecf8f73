"""Root-only network backend: each node in its own network namespace with its own IP, faults done
by the kernel instead of a userspace proxy (the more physical mode of the fault kit).

Topology: a private "hub" namespace holds a bridge; every node namespace gets a veth pair whose one
end (``eth0``, address ``<subnet>.<node>``) lives in the node's namespace and the other end is
plugged into the hub's bridge. Node namespaces have no default route: nothing they send can leave
the bridge. Nothing is created in the host's namespace, unless ``host_access`` asks for one veth
(at the subnet's last usable address) so that the test process itself can reach the nodes.

Faults are nftables rules in the *receiver's* namespace (table ``inet kalamdb``, chain ``input``):
``ip saddr <sender> drop`` is a silent one-way DROP -- the sender's stack sees no error, its SYNs
and retransmissions vanish, connects and retransmissions time out -- the same as Jepsen's
``iptables -A INPUT -s <sender> -j DROP``. Loss is ``numgen random mod 1000 < p*1000 drop`` per
packet (TCP retransmits: a lost packet costs time, never a hole in the stream); a bandwidth limit
is ``limit rate over <rate> drop``. A node's whole table is replaced in one nft transaction, so a
change is atomic per node. Every rule has a counter (`stats`). There is no delay: this machine's
kernel has no netem qdisc (see docs/faults.md).

Cleanup: ``close()`` (also from ``with``, atexit, a failed constructor) deletes the namespaces,
which deletes their veths and rules, and the host veth. Each namespace and host link is also named
in the owning run's record (`kalamdb.testing.runs`), so the next kit run removes what a killed run
left; ``cleanup_stale()`` does the same by the pid in the names.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import ipaddress
import itertools
import os
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

from kalamdb.testing.partitions import Partitions
from kalamdb.testing.runs import register_cleanup

if TYPE_CHECKING:
    from kalamdb.testing.runs import RunRecord

T = TypeVar("T")
_PREFIX = "kdb"
TABLE = "kalamdb"
_live: set[NetnsNetwork] = set()
_live_lock = threading.Lock()
_counter = itertools.count()


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _in_namespace(ns_name: str, fn: Callable[[], T]) -> T:
    """Run `fn` with the calling thread in namespace `ns_name` (a fresh thread does it, so no other
    thread of this process ever changes namespace). A socket keeps the namespace it was made in."""
    result: list = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{ns_name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns_name} failed")
            try:
                result.append(fn())
            finally:
                _libc.setns(own, CLONE_NEWNET)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result.append(exc)
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=work, name=f"netns-{ns_name}")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _run(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=30, input=stdin)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why this backend cannot run here (None when it can): needs root, iproute2 and nftables."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is not installed (apt-get install {package})"
    probe = f"{_PREFIX}probe{os.getpid()}x{next(_counter)}"
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` does not work here: {made.stderr.strip()}"
        rules = _run("ip", "netns", "exec", probe, "nft", "-f", "-", check=False,
                     stdin=_ruleset(["ip saddr 10.0.0.1 numgen random mod 1000 < 100 counter drop"], []))
        if rules.returncode != 0:
            return f"nftables rules do not work in a namespace here: {rules.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def _ruleset(input_rules: list[str], output_rules: list[str]) -> str:
    """One nft transaction that replaces the kalamdb table (created first so delete never fails)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             "  chain input {", "    type filter hook input priority 0; policy accept;"]
    lines += [f"    {r}" for r in input_rules]
    lines += ["  }", "  chain output {", "    type filter hook output priority 0; policy accept;"]
    lines += [f"    {r}" for r in output_rules]
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _netns_list() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_netns(name: str) -> None:
    _run("ip", "netns", "del", name, check=False)


def _delete_link(name: str) -> None:
    _run("ip", "link", "del", name, check=False)


register_cleanup("netns", _delete_netns)
register_cleanup("netns-link", _delete_link)


def cleanup_stale() -> list[str]:
    """Delete namespaces left by a crashed run (named ``kdb<pid>x...`` with a dead pid)."""
    removed = []
    for name in _netns_list():
        m = re.fullmatch(rf"{_PREFIX}(\d+)x\w+", name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_netns(name)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RuleStats:
    """What the kernel dropped on one direction (packets and bytes, from the rules' counters)."""

    packets_dropped: int = 0
    bytes_dropped: int = 0


class NetnsNetwork(Partitions):
    """Namespaces + veths + nftables rules for ``nodes``; same fault methods as the proxy.

    ``subnet`` is private to the namespaces (it never appears on the host) unless ``host_access``
    adds one host veth at the subnet's last usable address, refused if the host already routes it.
    With ``record`` every namespace and link is named in that run record for the stale sweep.
    """

    def __init__(self, nodes: Iterable[int], subnet: str = "10.213.0.0/24", host_access: bool = False,
                 record: RunRecord | None = None):
        node_ids = sorted(set(nodes))
        net = ipaddress.ip_network(subnet)
        self.subnet = net
        for i in node_ids:
            self._check_id(i)
        self.host_access = host_access
        self.record = record
        self.tag = f"{_PREFIX}{os.getpid()}x{next(_counter)}{uuid.uuid4().hex[:4]}"
        self.hub = f"{self.tag}hub"
        self.host_veth = f"{_PREFIX}h{uuid.uuid4().hex[:8]}" if host_access else None  # <= 15 chars
        self._node_ids: list[int] = []
        self._grudge: dict[int, set[int]] = {}
        self._cuts: set[tuple[int, int]] = set()
        self._loss: dict[tuple[int, int], float] = {}
        self._rate: dict[tuple[int, int], float] = {}  # kbit/s
        self._client_cut: set[int] = set()
        self._installed: dict[int, str] = {}  # node -> ruleset text in force
        self._lock = threading.Lock()
        self._closed = False
        self._created: list[tuple[str, str]] = []
        with _live_lock:
            _live.add(self)
        try:
            self._create_hub()
            for i in node_ids:
                self.add_node(i)
        except BaseException:
            self.close()
            raise

    def _check_id(self, i: int) -> None:
        if not isinstance(i, int) or i < 1 or i >= self.subnet.num_addresses - 2:
            raise ValueError(f"node ids must be in [1, {self.subnet.num_addresses - 3}] for subnet {self.subnet}")

    # -- topology ------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[int]:
        return list(self._node_ids)

    def ns(self, i: int) -> str:
        """The namespace name of node i (run its process with ``ip netns exec <ns> ...``)."""
        return f"{self.tag}n{i}"

    def ip(self, i: int) -> str:
        return str(self.subnet.network_address + i)

    @property
    def host_ip(self) -> str:
        return str(self.subnet.broadcast_address - 1)

    def _made(self, kind: str, name: str) -> None:
        self._created.append((kind, name))
        if self.record is not None:
            self.record.add_resource(kind, name)

    def _create_hub(self) -> None:
        _run("ip", "netns", "add", self.hub)
        self._made("netns", self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        if self.host_veth is not None:  # made when host_access is asked
            self._check_host_route_free()
            _run("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "host", "netns", self.hub)
            self._made("netns-link", self.host_veth)
            _run("ip", "-n", self.hub, "link", "set", "host", "master", "br0", "up")
            _run("ip", "addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.host_veth)
            _run("ip", "link", "set", self.host_veth, "up")

    def add_node(self, i: int) -> None:
        """A namespace for node i, plugged into the bridge (for nodes that join at run time too)."""
        self._check_id(i)
        if i in self._node_ids:
            return
        ns = self.ns(i)
        _run("ip", "netns", "add", ns)
        self._made("netns", ns)
        _run("ip", "-n", self.hub, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", self.hub, "link", "set", f"h{i}", "master", "br0", "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/{self.subnet.prefixlen}", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        with self._lock:
            self._node_ids = sorted({*self._node_ids, i})
            self._apply()

    def remove_node(self, i: int) -> None:
        """Delete node i's namespace (its process must have ended) and every rule about it."""
        with self._lock:
            if i not in self._node_ids:
                return
            self._node_ids.remove(i)
            self._grudge = {d: {s for s in srcs if s != i} for d, srcs in self._grudge.items() if d != i}
            self._cuts = {c for c in self._cuts if i not in c}
            self._loss = {k: v for k, v in self._loss.items() if i not in k}
            self._rate = {k: v for k, v in self._rate.items() if i not in k}
            self._client_cut.discard(i)
            self._installed.pop(i, None)
            self._apply()
        _delete_netns(self.ns(i))
        if self.record is not None:
            self.record.forget_resource("netns", self.ns(i))

    def _check_host_route_free(self) -> None:
        for line in _run("ip", "-4", "route", "show").stdout.splitlines():
            dest = line.split()[0]
            if dest == "default":
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dest, strict=False).overlaps(self.subnet):
                    raise RuntimeError(f"the host already routes {dest}; pick another subnet than "
                                       f"{self.subnet} for host_access")

    def popen(self, i: int, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start a process inside node i's namespace (the caller owns and must reap it)."""
        return subprocess.Popen(self.command(i, argv), **kwargs)

    def command(self, i: int, argv: list[str]) -> list[str]:
        """`argv` run inside node i's namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def bind_listener(self, i: int, host: str, port: int) -> socket.socket:
        """A listening TCP socket at host:port inside node i's namespace (inheritable, to hand to
        the node's process)."""
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(2048)
            s.set_inheritable(True)
            return s

        return _in_namespace(self.ns(i), make)

    def run(self, i: int, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self.command(i, argv), check=kwargs.pop("check", False), **kwargs)

    # -- rules ---------------------------------------------------------------------------------
    def _rules_for(self, dst: int) -> str:
        drop = set(self._grudge.get(dst, ())) | {s for (s, d) in self._cuts if d == dst}
        rules = []
        for src in sorted(drop):
            if src in self._node_ids:
                rules.append(f"ip saddr {self.ip(src)} counter drop comment \"cut {src}\"")
        for (src, d), p in sorted(self._loss.items()):
            if d == dst and p > 0 and src not in drop:
                rules.append(f"ip saddr {self.ip(src)} numgen random mod 1000 < {round(p * 1000)} counter drop "
                             f"comment \"loss {src}\"")
        for (src, d), kbps in sorted(self._rate.items()):
            if d == dst and src not in drop:
                rules.append(f"ip saddr {self.ip(src)} limit rate over {max(1, round(kbps * 1000 / 8))} "
                             f"bytes/second counter drop comment \"rate {src}\"")
        out = []
        if dst in self._client_cut and self.host_access:
            rules.append(f"ip saddr {self.host_ip} counter drop comment \"client\"")
            out.append(f"ip daddr {self.host_ip} counter drop comment \"client\"")
        return _ruleset(rules, out)

    def _apply(self) -> None:
        """Make each node's table match the fault state (only nodes whose rules changed)."""
        for dst in self._node_ids:
            text = self._rules_for(dst)
            if self._installed.get(dst) == text:
                continue
            _run("ip", "netns", "exec", self.ns(dst), "nft", "-f", "-", stdin=text)
            self._installed[dst] = text

    # -- faults --------------------------------------------------------------------------------
    def _known(self, *ids: int) -> None:
        for i in ids:
            if i not in self._node_ids:
                raise ValueError(f"unknown node {i}; nodes are {self._node_ids}")

    def cut(self, a: int, b: int) -> None:
        """Drop every packet a sends to b (one direction)."""
        self._known(a, b)
        with self._lock:
            self._cuts.add((a, b))
            self._apply()

    def uncut(self, a: int, b: int) -> None:
        self._known(a, b)
        with self._lock:
            self._cuts.discard((a, b))
            self._apply()

    def partition_grudge(self, grudge: dict) -> None:
        new = {int(dst): {int(s) for s in srcs} for dst, srcs in grudge.items()}
        self._known(*new, *(s for srcs in new.values() for s in srcs))
        with self._lock:
            self._grudge = new
            self._apply()

    def _links(self, links: Iterable[tuple[int, int]] | None) -> list[tuple[int, int]]:
        if links is None:
            return [(a, b) for a in self._node_ids for b in self._node_ids if a != b]
        out = [(int(a), int(b)) for a, b in links]
        self._known(*(x for link in out for x in link))
        return out

    def loss(self, p: float, links: Iterable[tuple[int, int]] | None = None) -> None:
        """Drop each packet on those directions with probability p (0 removes the loss)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss probability must be in [0, 1], got {p}")
        with self._lock:
            for link in self._links(links):
                if p > 0:
                    self._loss[link] = p
                else:
                    self._loss.pop(link, None)
            self._apply()

    def bandwidth(self, kbps: float | None, links: Iterable[tuple[int, int]] | None = None) -> None:
        """Drop what exceeds kbps kilobits/s on those directions (None: unlimited)."""
        if kbps is not None and kbps <= 0:
            raise ValueError("bandwidth must be > 0 kbps (or None for unlimited)")
        with self._lock:
            for link in self._links(links):
                if kbps is None:
                    self._rate.pop(link, None)
                else:
                    self._rate[link] = kbps
            self._apply()

    def isolate_client(self, i: int) -> None:
        """The host (the test process and its clients) can no longer reach node i, nor it them."""
        self._known(i)
        if not self.host_access:
            raise ValueError("client faults need host_access=True")
        with self._lock:
            self._client_cut.add(i)
            self._apply()

    def unisolate_client(self, i: int) -> None:
        with self._lock:
            self._client_cut.discard(i)
            self._apply()

    def heal(self) -> None:
        """Remove every partition, cut and client cut (loss and bandwidth stay: ``clear_all``)."""
        with self._lock:
            self._grudge = {}
            self._cuts = set()
            self._client_cut = set()
            self._apply()

    def clear_all(self) -> None:
        """A perfect network again."""
        with self._lock:
            self._grudge, self._cuts, self._client_cut = {}, set(), set()
            self._loss, self._rate = {}, {}
            self._apply()

    def reachability(self) -> dict[tuple[int, int], bool]:
        """(a, b) -> whether packets from a now reach b, read back from the kernel's rules."""
        blocked = set()
        by_ip = {self.ip(i): i for i in self._node_ids}
        for b in self._node_ids:
            listing = _run("ip", "netns", "exec", self.ns(b), "nft", "list", "table", "inet", TABLE,
                           check=False).stdout
            for m in re.finditer(r"ip saddr (\S+) counter packets \d+ bytes \d+ drop comment \"cut", listing):
                if m.group(1) in by_ip:
                    blocked.add((by_ip[m.group(1)], b))
        return {(a, b): (a, b) not in blocked for a in self._node_ids for b in self._node_ids if a != b}

    def stats(self) -> dict[tuple[int, int], RuleStats]:
        """(src, dst) -> packets and bytes the kernel dropped on that direction (all rules)."""
        out: dict[tuple[int, int], RuleStats] = {}
        by_ip = {self.ip(i): i for i in self._node_ids}
        for b in self._node_ids:
            listing = _run("ip", "netns", "exec", self.ns(b), "nft", "list", "table", "inet", TABLE,
                           check=False).stdout
            for m in re.finditer(r"ip saddr (\S+) .*?counter packets (\d+) bytes (\d+) drop", listing):
                a = by_ip.get(m.group(1))
                if a is None:
                    continue
                s = out.setdefault((a, b), RuleStats())
                s.packets_dropped += int(m.group(2))
                s.bytes_dropped += int(m.group(3))
        for a in self._node_ids:
            for b in self._node_ids:
                if a != b:
                    out.setdefault((a, b), RuleStats())
        return out

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Delete everything we created (namespaces take their veths and rules with them)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for kind, name in reversed(self._created):
            if kind == "netns-link":
                _delete_link(name)
            else:
                _delete_netns(name)
            if self.record is not None:
                self.record.forget_resource(kind, name)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    with _live_lock:
        nets = list(_live)
    for n in nets:
        with contextlib.suppress(Exception):
            n.close()
