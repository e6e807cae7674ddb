"""Native inflows without traces, read by balance (``internal = "off"``), and the beacon
chain's withdrawals with traces: bisection to the blocks where the wallet's balance moved, and
those blocks in full (``watcher.chain.native`` does the bisection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from watcher.chain.calls import as_dict, as_list, block_call, quantity, same
from watcher.chain.chunk import ChainMoved, Chunk
from watcher.chain.native import Point, bisect
from watcher.chain.range_state import RangeState

log = structlog.get_logger("watcher.chain.sources")


class BalanceReads(RangeState):
    """The reader's balance-driven part: bisection, full blocks, withdrawals."""

    def _withdrawals(self, chunk: Chunk, at_lo: Point, at_hi: Point) -> None:
        """Traces do not show the beacon chain's withdrawals: when the balance grew more than
        the traces explain, bisect to the blocks where it changed and read their headers
        (which list withdrawals; they are added to ``chunk.explained``). Nothing is read when
        the traces explain it all."""
        if at_hi[0] - at_lo[0] <= sum(chunk.explained.values()):  # in, less spending
            return
        known = dict(self.withdrawn)
        lo = self.first - 1 if self.first > 0 else 0
        found = bisect(self.pool, self.wallet, lo, self.last, at_lo, at_hi)
        # A block known only from a receipt or log (no parent hash) may list withdrawals too.
        headed = {n for n, b in self.blocks.items() if b.parent_hash}
        wanted = [n for n in found.changed if n not in headed]
        answers = self.pool.batch([block_call(n) for n in wanted]) if wanted else []
        for n, raw in zip(wanted, answers, strict=True):
            header = self._header(raw, n)
            seen = self.blocks.get(n)
            if seen is not None and seen.hash != header.hash:
                raise ChainMoved(f"block {n} changed while reading: the chain moved")
            self.blocks[n] = header
        for number, wei in self.withdrawn.items():
            if number not in known:
                chunk.explain(number, wei)

    def _changed_blocks(self, at_lo: Point | None, at_hi: Point | None) -> list[int]:
        """The blocks whose balance or nonce changed (all of them where the node lacks state)."""
        first, last = self.first, self.last
        lo = first - 1 if first > 0 else 0  # block 0 (genesis) holds no transaction
        if at_lo is None or at_hi is None:
            self._no_state(first, last, f"no balance at the range ends: {self.no_state}")
            return list(range(lo + 1, last + 1))
        found = bisect(self.pool, self.wallet, lo, last, at_lo, at_hi, self.prior)
        self.points = found.known
        if found.unreadable:
            total = sum(b - a + 1 for a, b in found.unreadable)
            self._no_state(found.unreadable[0][0], found.unreadable[-1][1], found.reason, total)
        return found.blocks()

    def _no_state(self, first: int, last: int, reason: str, count: int | None = None) -> None:
        log.warning(
            "scan.no_old_state", chain=self.chain.name, first=first, last=last,
            full_blocks=count if count is not None else last - first + 1, reason=reason,
        )  # fmt: skip

    def _full_blocks(
        self, numbers: Sequence[int]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The value transactions to the wallet and the ones it sent in the blocks ``numbers``,
        read in full one POST at a time (only what matters is kept: a range read in full on a
        busy chain is big). The blocks holding any join the chunk's blocks."""
        candidates: list[dict[str, Any]] = []
        spent: list[dict[str, Any]] = []
        step = max(1, self.pool.max_batch)
        for start in range(0, len(numbers), step):
            part = numbers[start : start + step]
            answers = self.pool.batch([block_call(n, full=True) for n in part])
            for n, raw in zip(part, answers, strict=True):
                block = self._header(raw, n)
                known = self.blocks.get(n)
                if known is not None and known.hash != block.hash:
                    raise ChainMoved(f"block {n} changed while reading: the chain moved")
                native, sent = _block_transactions([as_dict(raw, f"block {n}")], self.wallet)
                if native or sent or n in self.withdrawn:
                    self.blocks[n] = block
                candidates += native
                spent += sent
        return candidates, spent


def _block_transactions(
    raw_blocks: Sequence[dict[str, Any]], wallet: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """From full blocks: value transactions to the wallet, and transactions it sent."""
    native: list[dict[str, Any]] = []
    spent: list[dict[str, Any]] = []
    for raw in raw_blocks:
        for tx in as_list(raw.get("transactions", []), "block transactions"):
            if same(tx.get("from"), wallet):
                spent.append(tx)
            elif same(tx.get("to"), wallet) and quantity(tx.get("value", "0x0")) > 0:
                native.append(tx)
    return native, spent
