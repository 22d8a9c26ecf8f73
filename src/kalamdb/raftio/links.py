"""What both directions of the peer transport share: the node's id, the handshake both sides run,
the counters `PeerTransport.stats` publishes, the set of open connections that `stop()` closes,
and the throttled logger. `PeerTransport` builds one and hands it to the listener (inbound.py)
and the outbound links (outbound.py), so neither holds a second copy of the wiring."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from kalamdb.raftio.handshake import Handshake
from kalamdb.raftio.transport_stats import LogThrottle, TransportCounters


@dataclass(frozen=True, slots=True)
class LinkContext:
    node_id: int
    handshake: Handshake
    counters: TransportCounters
    writers: set[asyncio.StreamWriter]  # every open connection of the transport, closed by stop()
    throttle: LogThrottle
    log: logging.Logger
