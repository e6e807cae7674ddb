"""What a contender costs a provider: JSON-RPC calls by method, bytes received, compute units.

Every contender of ``bench/scan.py``'s cost section talks to Anvil through one counting proxy
(``tests/support/rpcproxy.RpcProxy(raw=True)``: it forwards each POST's bytes unchanged and
counts POSTs, entries by method and the bytes it answered); a ``Tally`` is the difference of
the proxy's counters around one contender.

Compute units: Alchemy's published per-method costs (a batch costs the sum of its entries),
https://www.alchemy.com/docs/reference/compute-unit-costs (standard EVM methods) and the
Trace/Debug API pages (``trace_filter``: 40, ``debug_traceBlockByNumber``: 40), read on
2026-12-01. Methods not in the table (Anvil's own, ``trace_block``) are counted at
``UNKNOWN_CU`` and listed, so an estimate never hides them.

The floor (the least a watcher must ask to find the payments) is ``bench/floor.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.rpcproxy import FULL_BLOCK, RpcProxy

CU_SOURCE = "https://www.alchemy.com/docs/reference/compute-unit-costs"
CU: dict[str, int] = {
    "eth_chainId": 0,
    "net_version": 0,
    "eth_blockNumber": 10,
    "eth_getTransactionReceipt": 20,
    "eth_getBlockByNumber": 20,
    "eth_getBlockByHash": 20,
    "eth_getBalance": 20,
    "eth_getCode": 20,
    "eth_getTransactionCount": 20,
    "eth_getTransactionByHash": 20,
    "eth_getStorageAt": 20,
    "eth_call": 26,
    "eth_getLogs": 60,
    "eth_newFilter": 20,
    "eth_getFilterLogs": 60,
    "eth_uninstallFilter": 10,
    "eth_getBlockReceipts": 500,
    "trace_filter": 40,
    "trace_transaction": 40,
    "debug_traceBlockByNumber": 40,
    "debug_traceTransaction": 40,
}
UNKNOWN_CU = 40  # a method missing from the table is counted as a trace call


@dataclass
class Tally:
    """What one contender cost, from the proxy's counters, and how long it took."""

    label: str
    seconds: float = 0.0
    posts: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    found: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    full_blocks: int = 0  # eth_getBlockByNumber entries that asked for the transactions
    method_bytes: Counter[str] = field(default_factory=Counter)  # when the proxy counts them

    @property
    def entries(self) -> int:
        return sum(self.calls.values())

    @property
    def cu(self) -> int:
        return sum(CU.get(m, UNKNOWN_CU) * n for m, n in self.calls.items())

    @property
    def unknown_methods(self) -> list[str]:
        return sorted(m for m in self.calls if m not in CU)

    def add(self, other: Tally) -> None:
        self.seconds += other.seconds
        self.posts += other.posts
        self.calls.update(other.calls)
        self.bytes += other.bytes
        self.found.update(other.found)
        self.full_blocks += other.full_blocks
        self.method_bytes.update(other.method_bytes)


class Meter:
    """Counts what passes through one raw ``RpcProxy`` between ``start()`` and ``stop()``."""

    def __init__(self, proxy: RpcProxy) -> None:
        self.proxy = proxy
        self._posts = 0
        self._bytes = 0
        self._calls: Counter[str] = Counter()
        self._method_bytes: Counter[str] = Counter()
        self._started = 0.0

    def start(self) -> None:
        self._posts, self._bytes = self.proxy.posts, self.proxy.bytes_sent
        self._calls = Counter(self.proxy.calls)
        self._method_bytes = Counter(self.proxy.method_bytes)
        self._started = time.perf_counter()

    def stop(self, label: str) -> Tally:
        seconds = time.perf_counter() - self._started
        calls = Counter(self.proxy.calls)
        calls.subtract(self._calls)
        calls = +calls
        full = calls.pop(FULL_BLOCK, 0)  # a pseudo-method: not a call of its own
        method_bytes = Counter(self.proxy.method_bytes)
        method_bytes.subtract(self._method_bytes)
        return Tally(
            label,
            seconds,
            self.proxy.posts - self._posts,
            calls,
            self.proxy.bytes_sent - self._bytes,
            full_blocks=full,
            method_bytes=+method_bytes,
        )


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def table(rows: Sequence[Tally], floor: Tally, out: Any) -> None:
    """Print contenders side by side with their ratios to the floor."""
    out(
        f"    {'contender':50} {'wall s':>7} {'POSTs':>6} {'calls':>7} {'received':>11} "
        f"{'CU':>9}   x floor: time / calls / bytes / CU"
    )
    for t in rows:
        ratios = "/".join(
            f"{a / b:.1f}" if b else "-"
            for a, b in (
                (t.seconds, floor.seconds),
                (t.entries, floor.entries),
                (t.bytes, floor.bytes),
                (t.cu, floor.cu),
            )
        )
        out(
            f"    {t.label:50} {t.seconds:7.2f} {t.posts:6} {t.entries:7} "
            f"{megabytes(t.bytes):>11} {t.cu:9,}   {ratios}"
        )
    for t in rows:
        methods = ", ".join(f"{m} {n}" for m, n in sorted(t.calls.items(), key=lambda x: -x[1]))
        out(f"    {t.label}: {methods}; full blocks: {t.full_blocks}")
        if t.unknown_methods:
            out(f"      (not in the CU table, counted at {UNKNOWN_CU}: {t.unknown_methods})")
        for note in t.notes:
            out(f"      {note}")
