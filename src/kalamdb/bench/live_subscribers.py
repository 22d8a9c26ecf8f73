"""The fan-out subscriber process of the live benchmarks (bench/live.py) and its parent-side handle.
The subscribers run in a separate process with a minimal WebSocket reader (raw asyncio protocol,
frames parsed by hand, `?compress=false`) so that measuring 100,000 frames per second does not cost
more than producing them. A notification's latency is its arrival time minus the time in its `_seq`
(the writing node's clock when it prepared the write, milliseconds; same machine).

The parent drives it over stdin/stdout, one JSON line per answer: after start it prints `ready`;
then `count`, `stats`, `reset` and `stop`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import time
from typing import IO, Any

from kalamdb.engine.ids import SNOWFLAKE_EPOCH_MS

TABLE = "benchlive.t"


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank; NaN when empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _WsReader(asyncio.Protocol):
    """Client side of one WebSocket after the upgrade: counts text frames and records, per frame,
    now - (time in its `_seq`) in ms."""

    def __init__(self, stats: dict) -> None:
        self.buf = bytearray()
        self.stats = stats
        self.transport: Any = None
        self.handshake_done = asyncio.get_running_loop().create_future()
        self.acks = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    def data_received(self, data: bytes) -> None:
        self.stats["reads"] = self.stats.get("reads", 0) + 1
        buf = self.buf
        buf += data
        if not self.handshake_done.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.handshake_done.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.handshake_done.set_result(None)
        pos = 0
        n = len(buf)
        now_ms = time.time() * 1000.0
        lat = self.stats["lat"]
        frames = 0
        while n - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            if b1 < 126:
                hdr, length = 2, b1
            elif b1 == 126:
                if n - pos < 4:
                    break
                hdr, length = 4, struct.unpack_from("!H", buf, pos + 2)[0]
            else:
                if n - pos < 10:
                    break
                hdr, length = 10, struct.unpack_from("!Q", buf, pos + 2)[0]
            if n - pos < hdr + length:
                break
            start = pos + hdr
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                i = buf.find(b'"_seq":"', start, start + length)
                if i >= 0:
                    j = buf.find(b'"', i + 8)
                    seq = int(buf[i + 8: j])
                    lat.append(now_ms - ((seq >> 22) + SNOWFLAKE_EPOCH_MS))
                    frames += 1
                elif buf.find(b"subscription_ack", start, start + length) >= 0:
                    self.acks += 1
            pos = start + length
        del buf[:pos]
        self.stats["frames"] += frames

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        self.transport.write(head + mask + masked)


async def _open(url: str, token: str, stats: dict) -> _WsReader:
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: _WsReader(stats), host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    proto.transport.write((f"GET /v1/ws?compress=false HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Authorization: Bearer {token}\r\n\r\n").encode())
    await proto.handshake_done
    return proto


async def subscribers_main(spec: dict) -> None:
    """The subscriber process: open every connection, subscribe, say `ready`, count until stdin
    says `stop`, then print the counts and latencies as JSON."""
    stats: dict[str, Any] = {"frames": 0, "lat": []}
    conns: list[_WsReader] = []

    async def ping() -> None:  # from the start: the server closes a connection silent for 10 s
        while True:
            await asyncio.sleep(3)
            for c in conns:
                if not c.transport.is_closing():
                    c.send_text('{"type":"ping"}')

    pinger = asyncio.create_task(ping())
    for url in spec["urls"]:
        for token in spec["tokens"]:
            c = await _open(url, token, stats)
            for j in range(spec["subs_per_conn"]):
                c.send_text(json.dumps({"type": "subscribe", "subscription": {"id": f"s{j}",
                                                                              "sql": f"SELECT * FROM {TABLE}"}}))
            conns.append(c)
    want = len(conns) * spec["subs_per_conn"]
    while sum(c.acks for c in conns) < want:
        await asyncio.sleep(0.05)  # acks arrive through the protocol callbacks; bounded by the parent
    print(json.dumps({"ready": len(conns), "subscriptions": want}), flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "count":  # cheap: polled while waiting for the last notifications
            print(json.dumps({"frames": stats["frames"], "reads": stats.get("reads", 0)}), flush=True)
        elif line == "stats":
            lat = stats["lat"]
            print(json.dumps({"frames": stats["frames"], "reads": stats.get("reads", 0), "p50_ms": pct(lat, 0.5),
                              "p99_ms": pct(lat, 0.99), "max_ms": max(lat) if lat else None}), flush=True)
        elif line == "reset":
            stats["frames"], stats["lat"] = 0, []
            print(json.dumps({"reset": True}), flush=True)
        elif line in ("stop", ""):
            break
    pinger.cancel()
    lat = stats["lat"]
    print(json.dumps({"frames": stats["frames"], "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                      "max_ms": max(lat) if lat else None}), flush=True)
    for c in conns:
        c.transport.close()


class SubscriberProcess:
    """The subscriber process seen from the benchmark: started with the nodes' URLs, the users'
    tokens and the subscriptions per connection; `ready` says how many it opened."""

    def __init__(self, urls: list[str], tokens: list[str], subs_per_conn: int) -> None:
        spec = {"urls": urls, "tokens": tokens, "subs_per_conn": subs_per_conn}
        self.proc = subprocess.Popen([sys.executable, "-m", "kalamdb.bench.live", "_subscribers", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self._stdin: IO[str] = self.proc.stdin
        self._stdout: IO[str] = self.proc.stdout
        try:
            self.ready: dict = json.loads(self._stdout.readline())
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, command: str) -> dict:
        """`count` (frames so far, cheap), `stats` (frames and latency percentiles) or `reset`."""
        self._stdin.write(command + "\n")
        self._stdin.flush()
        return json.loads(self._stdout.readline())

    def stop(self) -> None:
        """Close every subscription and wait for the process to exit."""
        self._stdin.write("stop\n")
        self._stdin.flush()
        self._stdin.close()
        self._stdout.read()
        self.proc.wait(30)

    def kill(self) -> None:
        """Kill the process if it still runs (cleanup after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
