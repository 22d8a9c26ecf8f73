"""Root-only network backend: each node in its own network namespace with its own IP, faults done
by the kernel instead of a userspace proxy (the more physical mode of the fault kit).

Topology: a private "hub" namespace holds a bridge; every node namespace gets a veth pair whose one
end (``eth0``, address ``<subnet>.<node>``) lives in the node's namespace and the other end is
plugged into the hub's bridge. Nothing is created in the host's namespace, unless ``host_access``
asks for one veth so that the test process itself can reach the nodes.

Drops: this machine's kernel has no tc actions and no iptables binary, so a cut is a policy-routing
``blackhole`` rule in the *receiver's* namespace (``ip rule add from <sender> blackhole``, placed
before the ``local`` table): packets from the sender vanish on arrival, the sender's stack sees no
error, connects and retransmissions time out. That is a silent one-way DROP like an iptables
``INPUT -s <sender> -j DROP``. Partitions use the same grudges as the proxy (``Partitions``).

Cleanup: ``close()`` (also from ``with``, atexit, and ``cleanup_stale()`` for namespaces whose
creator died) deletes the namespaces, which deletes their veths and rules.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterable
from typing import Self

from kalamdb.testing.partitions import Partitions

_PREFIX = "kdb"
_live: set[NetnsNetwork] = set()
_live_lock = threading.Lock()
_counter = itertools.count()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why this backend cannot run here (None when it can): needs root and working ``ip netns``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{_PREFIX}probe{os.getpid()}x{next(_counter)}"
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` does not work here: {made.stderr.strip()}"
        rule = _run("ip", "-n", probe, "rule", "add", "pref", "100", "from", "10.0.0.1", "blackhole",
                    check=False)
        if rule.returncode != 0:
            return f"policy routing rules do not work here: {rule.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def _netns_list() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Delete namespaces left by a crashed run (named ``kdb<pid>x...`` with a dead pid)."""
    removed = []
    for name in _netns_list():
        m = re.fullmatch(rf"{_PREFIX}(\d+)x\w+", name)
        if m and not _pid_alive(int(m.group(1))):
            _run("ip", "netns", "del", name, check=False)
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


class NetnsNetwork(Partitions):
    """Namespaces + veths + blackhole rules for ``nodes``; same fault methods as the proxy.

    ``subnet`` is private to the namespaces (it never appears on the host) unless ``host_access``
    adds one host veth at the subnet's last usable address, refused if the host already routes it.
    """

    def __init__(self, nodes: Iterable[int], subnet: str = "10.213.0.0/24", host_access: bool = False):
        self._node_ids = sorted(set(nodes))
        net = ipaddress.ip_network(subnet)
        if not self._node_ids or min(self._node_ids) < 1 or max(self._node_ids) >= net.num_addresses - 2:
            raise ValueError(f"node ids must be in [1, {net.num_addresses - 3}] for subnet {subnet}")
        self.subnet = net
        self.host_access = host_access
        self.tag = f"{_PREFIX}{os.getpid()}x{next(_counter)}{uuid.uuid4().hex[:4]}"
        self.hub = f"{self.tag}hub"
        self.host_veth = f"{_PREFIX}h{uuid.uuid4().hex[:8]}" if host_access else None  # <= 15 chars
        self._grudge: dict[int, set[int]] = {}
        self._cuts: set[tuple[int, int]] = set()
        self._installed: set[tuple[int, int]] = set()  # (src, dst) with a blackhole rule in dst
        self._lock = threading.Lock()
        self._closed = False
        self._created: list[str] = []
        with _live_lock:
            _live.add(self)
        try:
            self._create()
        except BaseException:
            self.close()
            raise

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

    def _create(self) -> None:
        prefix = self.subnet.prefixlen
        _run("ip", "netns", "add", self.hub)
        self._created.append(self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i in self._node_ids:
            ns = self.ns(i)
            _run("ip", "netns", "add", ns)
            self._created.append(ns)
            _run("ip", "-n", self.hub, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
            _run("ip", "-n", self.hub, "link", "set", f"h{i}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/{prefix}", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # Let our rules (pref < 1000) act before local delivery is decided.
            _run("ip", "-n", ns, "rule", "add", "pref", "1000", "lookup", "local")
            _run("ip", "-n", ns, "rule", "del", "pref", "0")
        if self.host_access:
            self._check_host_route_free()
            _run("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "host", "netns",
                 self.hub)
            self._created.append(f"link:{self.host_veth}")
            _run("ip", "-n", self.hub, "link", "set", "host", "master", "br0", "up")
            _run("ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_veth)
            _run("ip", "link", "set", self.host_veth, "up")

    def _check_host_route_free(self) -> None:
        for line in _run("ip", "-4", "route", "show").stdout.splitlines():
            dest = line.split()[0]
            if dest == "default":
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dest, strict=False).overlaps(self.subnet):
                    raise RuntimeError(f"the host already routes {dest}; pick another subnet than "
                                       f"{self.subnet} for host_access")

    def popen(self, i: int, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process inside node i's namespace (the caller owns and must reap it)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(i), *argv], **kwargs)

    def run(self, i: int, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 30)
        return subprocess.run(["ip", "netns", "exec", self.ns(i), *argv], check=kwargs.pop("check", False), **kwargs)

    # -- faults --------------------------------------------------------------------------------
    def _apply(self) -> None:
        """Make the kernel's blackhole rules match cuts + grudge (only the difference changes)."""
        want = set(self._cuts)
        for dst, srcs in self._grudge.items():
            want |= {(src, dst) for src in srcs}
        for src, dst in sorted(self._installed - want):
            _run("ip", "-n", self.ns(dst), "rule", "del", "pref", str(100 + src))
            self._installed.discard((src, dst))
        for src, dst in sorted(want - self._installed):
            _run("ip", "-n", self.ns(dst), "rule", "add", "pref", str(100 + src), "from", self.ip(src),
                 "blackhole")
            self._installed.add((src, dst))

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

    def heal(self) -> None:
        with self._lock:
            self._grudge = {}
            self._cuts = set()
            self._apply()

    def reachability(self) -> dict[tuple[int, int], bool]:
        """(a, b) -> whether packets from a now reach b, read back from the kernel's rules."""
        blocked = set()
        for b in self._node_ids:
            for line in _run("ip", "-n", self.ns(b), "rule", "show").stdout.splitlines():
                m = re.match(r"(\d+):\s+from (\S+) blackhole", line)
                if m:
                    blocked.add((int(m.group(1)) - 100, b))
        return {(a, b): (a, b) not in blocked for a in self._node_ids for b in self._node_ids if a != b}

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Delete everything we created (namespaces take their veths and rules with them)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for name in reversed(self._created):
            if name.startswith("link:"):
                _run("ip", "link", "del", name[5:], check=False)
            else:
                _run("ip", "netns", "del", name, check=False)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    with _live_lock:
        nets = list(_live)
    for n in nets:
        with contextlib.suppress(Exception):
            n.close()
