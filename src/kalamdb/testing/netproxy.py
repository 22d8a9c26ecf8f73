"""A userspace network between cluster nodes that tests can break on purpose, without root.

Every directed link ``a -> b`` (node ``a`` dialling node ``b``'s peer port) goes through a TCP proxy
of its own, so faults can be switched per direction at run time: cut, partitions (as grudges),
delay with jitter, frame loss, bandwidth limits, clogging and connection resets. Faults are keyed by
the direction the *bytes* travel, not by who dialled: ``cut(a, b)`` silences a's bytes towards b on
the link a->b (requests) AND on the link b->a (replies), like a dropped physical path.

Semantics (see docs/faults.md):

* Cut: data is silently discarded (never a RST); connections still open, carry nothing, and the
  peer only sees timeouts. On framed links whole frames are dropped, so after a heal the stream is
  intact and the receiver just sees missing messages. On raw (unframed) links a dropped chunk would
  corrupt the stream, so the connection stays a black hole until someone closes it. Closes and
  resets coming from a cut side are held and delivered when the path heals.
* Loss: on framed links, whole frames are dropped with probability p (never the first
  ``protect_first_frames`` of each connection and direction: the handshake). On raw links loss
  resets the connection with probability p per chunk read.
* Delay preserves order within a connection (a delayed frame holds the later ones, as in TCP).
* Clog holds traffic (with TCP-like backpressure past a buffer) and releases it in order.

Randomness: one ``random.Random`` per connection direction, derived from the controller seed.
The controller runs its own asyncio loop in a daemon thread; every method is thread-safe and may be
called from sync test code or from another event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, Self, TypeVar

from kalamdb.testing.netproxy_links import CLIENT, Endpoint, Faults, LinkStats, Pair, _Link
from kalamdb.testing.partitions import Partitions

T = TypeVar("T")

__all__ = ["CLIENT", "Faults", "LinkStats", "NetworkController", "Partitions"]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class NetworkController(Partitions):
    """Owns every link proxy and the fault state; the one object a test uses to break the network.

    ``seed`` derives every random decision (loss, jitter); print it on failure to replay.
    ``protect_first_frames`` frames of each connection and direction are never lost (handshake).
    """

    def __init__(self, seed: int = 0, protect_first_frames: int = 2, max_frame_bytes: int = 64 * 1024 * 1024):
        self.seed = seed
        self.protect_first_frames = protect_first_frames
        self.max_frame_bytes = max_frame_bytes
        self._lock = threading.Lock()
        self._links: dict[Pair, _Link] = {}
        self._nodes: set[int] = set()
        self._grudge: dict[Endpoint, set[Endpoint]] = {}  # partitions: receiver -> senders it drops
        self._cuts: set[Pair] = set()  # explicit one-way cuts (src, dst), client cuts included
        self._clogged: set[Pair] = set()
        self._default_faults = Faults()
        self._pair_faults: dict[Pair, Faults] = {}  # delay/loss/bandwidth overrides per direction
        self._stats: dict[Pair, LinkStats] = collections.defaultdict(LinkStats)
        self._conn_counter = itertools.count()
        self._closed = False
        self._loop = _new_loop()
        self._change = asyncio.Event()
        self._thread = threading.Thread(target=self._run_loop, name="kalamdb-netproxy", daemon=True)
        self._thread.start()

    # -- lifecycle -----------------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("NetworkController is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        """Stop every proxy, close every connection, stop the loop thread. Idempotent."""
        if self._closed:
            return
        self._call(self._shutdown(), timeout=15.0)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()

    async def _shutdown(self) -> None:
        for link in list(self._links.values()):
            await link.stop()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_default_executor()  # getaddrinfo threads

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- links ---------------------------------------------------------------------------------
    def add_link(self, src: int, dst: int, target_addr: tuple[str, int], framed: bool = True) -> tuple[str, int]:
        """Proxy for node ``src`` dialling node ``dst`` at ``target_addr``; give src the returned address."""
        if src == dst:
            raise ValueError(f"a link needs two different nodes, got {src}->{dst}")
        for n in (src, dst):
            if not isinstance(n, int):
                raise TypeError(f"node ids are ints, got {n!r}")
        return self._add(src, dst, target_addr, framed)

    def add_client_link(self, node: int, target_addr: tuple[str, int], framed: bool = False) -> tuple[str, int]:
        """Proxy for clients reaching ``node`` (HTTP by default, so unframed)."""
        return self._add(CLIENT, node, target_addr, framed)

    def _add(self, src: Endpoint, dst: Endpoint, target_addr: tuple[str, int], framed: bool) -> tuple[str, int]:
        key = (src, dst)
        with self._lock:
            if key in self._links:
                raise ValueError(f"link {src}->{dst} already exists")
        link = _Link(self, src, dst, (str(target_addr[0]), int(target_addr[1])), framed)
        self._call(link.start())
        with self._lock:
            self._links[key] = link
            for n in (src, dst):
                if isinstance(n, int):
                    self._nodes.add(n)
        return link.addr

    def retarget(self, src: Endpoint, dst: Endpoint, target_addr: tuple[str, int]) -> None:
        """New connections on link src->dst go to ``target_addr`` (a restarted node on a new port)."""
        with self._lock:
            self._links[(src, dst)].target = (str(target_addr[0]), int(target_addr[1]))

    def proxy_addr(self, src: Endpoint, dst: Endpoint) -> tuple[str, int]:
        return self._links[(src, dst)].addr

    @property
    def nodes(self) -> list[int]:
        with self._lock:
            return sorted(self._nodes)

    # -- fault state (read from the loop thread on every frame) ----------------------------------
    def faults(self, src: Endpoint, dst: Endpoint) -> Faults:
        """Faults now applied to bytes travelling ``src -> dst``."""
        with self._lock:
            base = self._pair_faults.get((src, dst), self._default_faults)
            cut = (src, dst) in self._cuts or src in self._grudge.get(dst, ())
            clogged = (src, dst) in self._clogged
        if cut or clogged:
            return dataclasses.replace(base, cut=cut, clogged=clogged)
        return base

    def _changed(self) -> None:
        """Wake everyone waiting on the fault state (runs on the loop thread)."""
        self._change.set()
        self._change = asyncio.Event()

    def _notify(self) -> None:
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody to wake
                self._loop.call_soon_threadsafe(self._changed)

    async def _wait_change(self) -> None:
        await self._change.wait()

    def _count(self, src: Endpoint, dst: Endpoint, **deltas: int) -> None:
        with self._lock:
            s = self._stats[(src, dst)]
            for k, v in deltas.items():
                setattr(s, k, getattr(s, k) + v)

    def stats(self) -> dict[Pair, LinkStats]:
        """A snapshot of the counters, keyed by the direction bytes travel."""
        with self._lock:
            for src, dst in list(self._links):  # every direction a link can carry, even if idle
                self._stats[(src, dst)]
                self._stats[(dst, src)]
            return {k: dataclasses.replace(v) for k, v in self._stats.items()}

    # -- cuts and partitions -------------------------------------------------------------------
    def cut(self, a: Endpoint, b: Endpoint) -> None:
        """Drop everything a sends to b (one direction; call cut(b, a) too for both)."""
        with self._lock:
            self._cuts.add((a, b))
        self._notify()

    def uncut(self, a: Endpoint, b: Endpoint) -> None:
        with self._lock:
            self._cuts.discard((a, b))
        self._notify()

    def partition_grudge(self, grudge: dict[Endpoint, Iterable[Endpoint]]) -> None:
        """Replace the current partition by ``grudge``: receiver -> senders whose bytes it drops.
        Explicit ``cut``s and client cuts are kept."""
        new = {dst: set(srcs) for dst, srcs in grudge.items()}
        with self._lock:
            self._grudge = new
        self._notify()

    def isolate_client(self, i: int) -> None:
        """Clients can no longer reach node i (and its replies are lost)."""
        self.cut(CLIENT, i)
        self.cut(i, CLIENT)

    def unisolate_client(self, i: int) -> None:
        self.uncut(CLIENT, i)
        self.uncut(i, CLIENT)

    def heal(self) -> None:
        """Remove every cut, partition and clog (held traffic is released in order).
        Delay, loss and bandwidth stay: use ``clear_all`` for a perfect network."""
        with self._lock:
            self._grudge = {}
            self._cuts = set()
            self._clogged = set()
        self._notify()

    def clear_all(self) -> None:
        """A perfect network again: no partition, clog, delay, loss or bandwidth limit."""
        with self._lock:
            self._grudge = {}
            self._cuts = set()
            self._clogged = set()
            self._pair_faults = {}
            self._default_faults = Faults()
        self._notify()

    def reachability(self) -> dict[Pair, bool]:
        """(a, b) -> whether bytes from node a now reach node b (peer nodes only)."""
        nodes = self.nodes
        with self._lock:
            return {(a, b): (a, b) not in self._cuts and a not in self._grudge.get(b, ())
                    for a in nodes for b in nodes if a != b}

    # -- packet-level faults --------------------------------------------------------------------
    def _set(self, links: Iterable[Pair] | None, **changes: Any) -> None:
        with self._lock:
            if links is None:
                self._default_faults = dataclasses.replace(self._default_faults, **changes)
                self._pair_faults = {k: dataclasses.replace(v, **changes) for k, v in self._pair_faults.items()}
            else:
                for src, dst in links:
                    pair = (src, dst)  # a list from JSON works too
                    cur = self._pair_faults.get(pair, self._default_faults)
                    self._pair_faults[pair] = dataclasses.replace(cur, **changes)
        self._notify()

    def delay(self, ms: float, jitter_ms: float = 0.0, links: Iterable[Pair] | None = None) -> None:
        """Delay each frame by ms +/- uniform jitter (order kept per connection). ``links`` lists
        directions (src, dst); None means every direction, now and later."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        self._set(links, delay_ms=float(ms), jitter_ms=float(jitter_ms))

    def loss(self, p: float, links: Iterable[Pair] | None = None) -> None:
        """Drop each (unprotected) frame with probability p."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"loss probability must be in [0, 1], got {p}")
        self._set(links, loss=float(p))

    def bandwidth(self, kbps: float | None, links: Iterable[Pair] | None = None) -> None:
        """Limit each connection direction to ``kbps`` kilobits/s (None: unlimited)."""
        if kbps is not None and kbps <= 0:
            raise ValueError("bandwidth must be > 0 kbps (or None for unlimited)")
        self._set(links, kbps=kbps)

    def clog(self, a: Endpoint, b: Endpoint) -> None:
        """Hold everything a sends to b until unclog/heal, then deliver it in order."""
        with self._lock:
            self._clogged.add((a, b))
        self._notify()

    def unclog(self, a: Endpoint, b: Endpoint) -> None:
        with self._lock:
            self._clogged.discard((a, b))
        self._notify()

    def reset(self, a: Endpoint, b: Endpoint) -> int:
        """Abort (RST) every open connection on the links a->b and b->a; returns how many."""
        return self._call(self._reset(a, b))

    async def _reset(self, a: Endpoint, b: Endpoint) -> int:
        n = 0
        for key in ((a, b), (b, a)):
            link = self._links.get(key)
            if link is None:
                continue
            conns = list(link.connections)
            for conn in conns:
                conn.abort()
            n += len(conns)
            self._count(*key, resets=len(conns))
        return n
