"""Transactional anomaly checking in the manner of Jepsen's Elle (Kingsbury & Alvaro, "Elle:
Inferring Isolation Anomalies from Experimental Observations", VLDB 2020).

A history of transactions over lists (`list-append`) or registers (`rw-register`) is turned into a
dependency graph between transactions (write-write, write-read, read-write, plus process and
real-time order); every cycle in that graph is an isolation anomaly (Adya's G0, G1c, G-single,
G2-item, ...), and some anomalies are visible without a cycle (G1a aborted reads, G1b
intermediate reads, internal inconsistency, incompatible orders, duplicate elements, lost updates).
`check_txns` does all of it with bounded time and memory; `kalamdb check --model list-append`
runs it on a file.
"""

from kalamdb.chaos.elle.check import TxnCheckResult, check_txns
from kalamdb.chaos.elle.history import Txn, load_txn_history

__all__ = ["Txn", "TxnCheckResult", "check_txns", "load_txn_history"]
