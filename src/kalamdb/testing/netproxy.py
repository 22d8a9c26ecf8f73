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
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Self

log = logging.getLogger("kalamdb.netproxy")

CLIENT = "client"
"""Source id of client -> node links (``add_client_link``)."""

Endpoint = int | str
Pair = tuple[Endpoint, Endpoint]

_HIGH_WATER = 4 * 1024 * 1024  # bytes queued per pipe before we stop reading (TCP backpressure)
_LOW_WATER = 1 * 1024 * 1024
_CONNECT_TIMEOUT = 5.0
_now = time.monotonic  # release times use the precise clock (uvloop's loop.time() has ms ticks)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclasses.dataclass(frozen=True)
class Faults:
    """Faults currently applied to bytes flowing in one direction."""

    cut: bool = False
    clogged: bool = False
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    kbps: float | None = None


@dataclasses.dataclass
class LinkStats:
    """Counters for bytes flowing ``src -> dst`` (over every connection that carries them)."""

    frames_passed: int = 0
    bytes_passed: int = 0
    frames_dropped: int = 0
    bytes_dropped: int = 0
    frames_delayed: int = 0
    frames_held: int = 0
    connections: int = 0
    resets: int = 0


class _Item:
    """One unit in a pipe's queue: a frame/chunk of data or a control event (EOF or RESET)."""

    __slots__ = ("data", "held", "kind", "release_at")

    def __init__(self, kind: str, data: bytes = b"", release_at: float = 0.0):
        self.kind = kind  # "data" | "eof" | "reset"
        self.data = data
        self.release_at = release_at
        self.held = False


class _Pipe:
    """One direction of one proxied connection: a reader that frames and judges, a writer that
    delays, holds, paces and delivers in order."""

    def __init__(self, conn: _Connection, src: Endpoint, dst: Endpoint, reader: asyncio.StreamReader,
                 writer_fut: asyncio.Future, rng: random.Random):
        self.conn = conn
        self.ctl = conn.ctl
        self.src, self.dst = src, dst
        self.reader = reader
        self.writer_fut = writer_fut  # resolves to the StreamWriter of the receiving side
        self.rng = rng
        self.queue: collections.deque[_Item] = collections.deque()
        self.queued_bytes = 0
        self.has_items = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()
        self.blackholed = False
        self.next_free_at = 0.0  # bandwidth pacing
        self.last_release_at = 0.0

    # -- reader side ---------------------------------------------------------------------------
    async def read_loop(self) -> None:
        buf = bytearray()
        framed = self.conn.link.framed
        seen = 0
        try:
            while True:
                await self.has_room.wait()
                chunk = await self.reader.read(65536)
                if not chunk:
                    if buf:
                        self._push_data(bytes(buf), droppable=False)
                    self._push(_Item("eof"))
                    return
                if not framed:
                    if self._raw_loss():
                        return
                    self._push_data(chunk, droppable=False)
                    continue
                buf += chunk
                f = self.ctl.faults(self.src, self.dst)  # one look per chunk read
                pos, end = 0, len(buf)
                while end - pos >= 4:
                    (length,) = struct.unpack_from(">I", buf, pos)
                    if length > self.ctl.max_frame_bytes:
                        log.warning("link %s->%s: frame of %d bytes exceeds %d; passing the rest of this "
                                    "connection through unframed", self.src, self.dst, length,
                                    self.ctl.max_frame_bytes)
                        framed = False
                        self._push_data(bytes(buf[pos:]), droppable=False)
                        pos = end
                        break
                    if end - pos < 4 + length:
                        break
                    seen += 1
                    self._push_data(bytes(buf[pos: pos + 4 + length]), seen > self.ctl.protect_first_frames, f)
                    pos += 4 + length
                del buf[:pos]  # one shift per chunk, not one per frame
        except (ConnectionError, OSError):
            self._push(_Item("reset"))

    def _raw_loss(self) -> bool:
        f = self.ctl.faults(self.src, self.dst)
        if f.loss > 0 and self.rng.random() < f.loss:
            self.ctl._count(self.src, self.dst, resets=1)
            self.conn.abort()
            return True
        return False

    def _push_data(self, data: bytes, droppable: bool, f: Faults | None = None) -> None:
        if f is None:
            f = self.ctl.faults(self.src, self.dst)
        if droppable and f.loss > 0 and self.rng.random() < f.loss:
            self.ctl._count(self.src, self.dst, frames_dropped=1, bytes_dropped=len(data))
            return
        now = _now()
        release = now
        if f.delay_ms > 0 or f.jitter_ms > 0:
            d = f.delay_ms
            if f.jitter_ms > 0:
                d += self.rng.uniform(-f.jitter_ms, f.jitter_ms)
            release = now + max(0.0, d) / 1000.0
            self.ctl._count(self.src, self.dst, frames_delayed=1)
        release = max(release, self.last_release_at)  # order: later frames wait for earlier ones
        self.last_release_at = release
        self._push(_Item("data", data, release))

    def _push(self, item: _Item) -> None:
        self.queue.append(item)
        self.queued_bytes += len(item.data)
        if self.queued_bytes > _HIGH_WATER:
            self.has_room.clear()
        self.has_items.set()

    # -- writer side ---------------------------------------------------------------------------
    async def write_loop(self) -> None:
        try:
            await self._write_loop()
        except (ConnectionError, OSError):
            self.conn.abort()

    async def _write_loop(self) -> None:
        while True:
            if not self.queue:
                self.has_items.clear()
                await self.has_items.wait()
                continue
            item = self.queue[0]
            while (wait := item.release_at - _now()) > 0:  # loop timers may fire a hair early
                await asyncio.sleep(wait)
            # Hold while clogged (data) or while cut (control events travel when the path heals).
            while True:
                f = self.ctl.faults(self.src, self.dst)
                if f.clogged or (item.kind != "data" and f.cut):
                    if not item.held and item.kind == "data":
                        item.held = True
                        self.ctl._count(self.src, self.dst, frames_held=1)
                    await self.ctl._wait_change()
                    continue
                break
            self.queue.popleft()
            self.queued_bytes -= len(item.data)
            if self.queued_bytes < _LOW_WATER:
                self.has_room.set()
            if item.kind == "data":
                if f.cut or self.blackholed:
                    if not self.conn.link.framed:
                        self.blackholed = True
                    self.ctl._count(self.src, self.dst, frames_dropped=1, bytes_dropped=len(item.data))
                    continue
                writer = await self.writer_fut
                if f.kbps:
                    now = _now()
                    self.next_free_at = max(now, self.next_free_at) + len(item.data) * 8 / (f.kbps * 1000)
                    if self.next_free_at > now:
                        await asyncio.sleep(self.next_free_at - now)
                data, frames = item.data, 1
                if not f.kbps:  # coalesce every frame already due into one write
                    now = _now()
                    parts = [data]
                    q = self.queue
                    while q and q[0].kind == "data" and q[0].release_at <= now:
                        parts.append(q.popleft().data)
                        self.queued_bytes -= len(parts[-1])
                    if len(parts) > 1:
                        data, frames = b"".join(parts), len(parts)
                        if self.queued_bytes < _LOW_WATER:
                            self.has_room.set()
                self.ctl._count(self.src, self.dst, frames_passed=frames, bytes_passed=len(data))
                writer.write(data)
                if writer.transport.get_write_buffer_size() > 256 * 1024:
                    await writer.drain()
            elif item.kind == "eof":
                writer = await self.writer_fut
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                self.conn.half_closed()
                return
            else:  # reset
                self.ctl._count(self.src, self.dst, resets=1)
                self.conn.abort()
                return


class _Connection:
    """A proxied TCP connection: the dialler's socket, the upstream socket, and two pipes."""

    def __init__(self, link: _Link, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter):
        self.link = link
        self.ctl = link.ctl
        self.c_reader, self.c_writer = c_reader, c_writer
        self.u_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        self.eofs = 0
        self.done = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.link
        n = next(self.ctl._conn_counter)
        up_fut: asyncio.Future = loop.create_future()
        c_fut: asyncio.Future = loop.create_future()
        c_fut.set_result(self.c_writer)
        seed = f"{self.ctl.seed}:{link.src}->{link.dst}:{n}"
        fwd = _Pipe(self, link.src, link.dst, self.c_reader, up_fut, random.Random(seed + ":fwd"))
        self.ctl._count(link.src, link.dst, connections=1)
        self.tasks.append(loop.create_task(fwd.read_loop()))
        self.tasks.append(loop.create_task(fwd.write_loop()))
        try:
            # The SYN travels src -> dst: while that direction is cut, the dial waits (a black hole).
            while self.ctl.faults(link.src, link.dst).cut:
                await self.ctl._wait_change()
            u_reader, self.u_writer = await asyncio.wait_for(
                asyncio.open_connection(*link.target), _CONNECT_TIMEOUT)
        except (TimeoutError, OSError):
            # Like "connection refused": deliver a reset to the dialler (held while b->a is cut).
            rev = _Pipe(self, link.dst, link.src, asyncio.StreamReader(), c_fut, random.Random(seed))
            rev._push(_Item("reset"))
            self.tasks.append(loop.create_task(rev.write_loop()))
            up_fut.cancel()
            await self.done
            return
        up_fut.set_result(self.u_writer)
        rev = _Pipe(self, link.dst, link.src, u_reader, c_fut, random.Random(seed + ":rev"))
        self.tasks.append(loop.create_task(rev.read_loop()))
        self.tasks.append(loop.create_task(rev.write_loop()))
        await self.done

    def half_closed(self) -> None:
        self.eofs += 1
        if self.eofs >= 2:
            self.close()

    def _writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.c_writer, self.u_writer) if w is not None]

    def abort(self) -> None:
        """Close both sockets with a RST (SO_LINGER 0)."""
        for w in self._writers():
            sock = w.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            w.transport.abort()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self._writers():
            w.transport.close()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        if not self.done.done():
            self.done.set_result(None)


class _Link:
    """The listening proxy for one directed link ``src -> dst``."""

    def __init__(self, ctl: NetworkController, src: Endpoint, dst: Endpoint, target: tuple[str, int],
                 framed: bool):
        self.ctl = ctl
        self.src, self.dst = src, dst
        self.target = target
        self.framed = framed
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[_Connection] = set()
        self.addr: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_accept, "127.0.0.1", 0)
        self.addr = self.server.sockets[0].getsockname()[:2]

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            conn.close()  # shutdown; not re-raised: asyncio's stream callback logs cancelled handlers
        except Exception:  # never let one connection's bug kill the proxy
            log.exception("link %s->%s: connection failed", self.src, self.dst)
            conn.abort()
        finally:
            self.connections.discard(conn)
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        if self.server is not None:
            await self.server.wait_closed()


class Partitions:
    """Partition shapes as grudges (receiver -> senders it drops), shared by every network backend.

    A subclass provides ``nodes`` (sorted node ids) and ``partition_grudge(grudge)``.
    """

    nodes: list[int]

    def partition_grudge(self, grudge: dict) -> None:
        raise NotImplementedError

    def partition(self, groups: list[list[int]]) -> None:
        """Nodes talk only within their group. Every known node must be in exactly one group."""
        nodes = set(self.nodes)
        listed = [n for g in groups for n in g]
        if len(listed) != len(set(listed)):
            raise ValueError(f"a node appears in two groups: {groups}")
        if set(listed) != nodes:
            raise ValueError(f"groups {groups} must cover exactly the nodes {sorted(nodes)}")
        group_of = {n: i for i, g in enumerate(groups) for n in g}
        self.partition_grudge({b: {a for a in nodes if group_of[a] != group_of[b]} for b in nodes})

    def isolate(self, i: int) -> None:
        """Node i can neither send to nor receive from any other node."""
        if i not in self.nodes:
            raise ValueError(f"unknown node {i}; nodes are {self.nodes}")
        others = [n for n in self.nodes if n != i]
        self.partition([[i], others])

    def partition_halves(self, order: list[int] | None = None) -> None:
        """Split the nodes (in ``order``, default sorted) into a smaller first half and the rest."""
        order = self._order(order)
        k = len(order) // 2
        self.partition([order[:k], order[k:]])

    def partition_majorities_ring(self, order: list[int] | None = None) -> None:
        """Each node sees a majority centred on itself in a ring; no two see the same majority
        (Jepsen's majorities-ring: grudges may be one-way, e.g. for 3 nodes)."""
        order = self._order(order)
        n = len(order)
        m = n // 2 + 1
        grudge = {}
        for start in range(n):
            window = [order[(start + k) % n] for k in range(m)]
            centre = window[m // 2]
            grudge[centre] = set(order) - set(window)
        self.partition_grudge(grudge)

    def partition_bridge(self, order: list[int] | None = None) -> None:
        """Two halves that cannot talk, joined by one bridge node (the middle one) that sees all."""
        order = self._order(order)
        n = len(order)
        if n < 3:
            raise ValueError("a bridge partition needs at least 3 nodes")
        k = n // 2
        left, bridge, right = order[:k], order[k], order[k + 1:]
        grudge = {x: set(right) for x in left}
        grudge.update({x: set(left) for x in right})
        grudge[bridge] = set()
        self.partition_grudge(grudge)

    def _order(self, order: list[int] | None) -> list[int]:
        nodes = self.nodes
        if order is None:
            return nodes
        if sorted(order) != nodes:
            raise ValueError(f"order {order} must be a permutation of the nodes {nodes}")
        return list(order)



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

    def _call(self, coro, timeout: float = 10.0):
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

    def __exit__(self, *exc) -> None:
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

    def _add(self, src: Endpoint, dst: Endpoint, target_addr, framed: bool) -> tuple[str, int]:
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
    def _set(self, links: Iterable[Pair] | None, **changes) -> None:
        with self._lock:
            if links is None:
                self._default_faults = dataclasses.replace(self._default_faults, **changes)
                self._pair_faults = {k: dataclasses.replace(v, **changes) for k, v in self._pair_faults.items()}
            else:
                for pair in links:
                    pair = tuple(pair)
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
