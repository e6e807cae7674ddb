"""The hits of one range: the receipts of the candidate transactions (status, the wallet's
fees), the headers of their blocks where needed, every block-hash check, and the wallet's own
transactions found by ``trace_filter``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.chain.calls import (
    block_call,
    checksum,
    hex_value,
    quantity,
    ranged,
    same,
    trace_filter_call,
)
from watcher.chain.chunk import ChainMoved, Chunk, Inflow
from watcher.chain.range_state import RangeState
from watcher.chain.receipts import parse_receipts, receipt_calls, spending
from watcher.chain.traces import Frame, ancestors_ok, sent_transactions


class HitReads(RangeState):
    """The reader's part for what it found: receipts, hit headers, the wallet's spending."""

    def _sent_by_traces(self) -> list[dict[str, Any]]:
        """The transactions the wallet sent over the range (the balance says it spent, or
        cannot say)."""
        chain = self.chain
        build = lambda a, b: trace_filter_call(chain, a, b, sent=True)  # noqa: E731
        traces = ranged(self.pool, self.sizers["trace_filter"], build, self.first, self.last)
        return sent_transactions(traces, self.wallet)

    def _receipts(
        self,
        chunk: Chunk,
        frames: list[Frame],
        candidates: list[dict[str, Any]],
        spent: list[dict[str, Any]],
    ) -> None:
        """Status of every candidate and the fees of the wallet's transactions (one batch, with
        the headers of the blocks holding hits), then every block-hash check."""
        tx_blocks: dict[str, Any] = {}  # tx hash -> the block hash its source named
        for tx in candidates + spent:
            tx_blocks[hex_value(tx["hash"])] = tx.get("blockHash")
        for f in frames:
            tx_blocks[f.tx_hash] = f.block_hash
        tx_hashes = sorted(tx_blocks)
        deep = sorted({f.tx_hash for f in frames if f.deep})
        # A hit block's header is read in the reorg window, above ``self.window`` (its parent
        # hash, stored, makes a rewind land on the exact common ancestor; no reorg forks below
        # the final block, and deeper hashes are not kept); below it only for its time: not
        # when a log or a receipt read here names it (``blockTimestamp``), and then only if the
        # receipt did not (older nodes: one more round trip).
        floor = self.window
        covered = {f.block_number for f in frames}
        headed = {n for n, b in self.blocks.items() if b.parent_hash}
        hits = {n for n, _, _ in self.checks}
        wanted = sorted(
            n for n in hits - headed if n > floor or (n not in self.blocks and n not in covered)
        )
        calls = receipt_calls(tx_hashes, deep) + [block_call(n) for n in wanted]
        answers = self.pool.batch(calls) if calls else []
        split = len(calls) - len(wanted)
        receipts, trees = parse_receipts(tx_hashes, deep, answers[:split])
        for n, raw in zip(wanted, answers[split:], strict=True):
            self.blocks[n] = self._header(raw, n)
        for tx_hash in tx_hashes:
            receipt = receipts[tx_hash]
            if receipt is not None and same(receipt.get("blockHash"), tx_blocks[tx_hash]):
                self._stamped(receipt)
        late = sorted(hits - set(self.blocks))
        headers = self.pool.batch([block_call(n) for n in late]) if late else []
        for n, raw in zip(late, headers, strict=True):
            self.blocks[n] = self._header(raw, n)
        for number, claimed, what in self.checks:
            if not same(self.blocks[number].hash, claimed):
                raise ChainMoved(f"{what} in block {number} is from another branch")
        for tx_hash, receipt in receipts.items():
            if receipt is None:
                raise ChainMoved(f"no receipt for {tx_hash}: the chain moved while reading")
            if not same(receipt.get("blockHash"), tx_blocks[tx_hash]):
                raise ChainMoved(f"the receipt of {tx_hash} is from another branch")

        def ok(tx_hash: str) -> bool:
            return quantity(_receipt(receipts, tx_hash)["status"]) == 1

        for tx in candidates:
            if ok(tx["hash"]):
                frm, value = str(checksum(tx["from"])), quantity(tx["value"])
                at = quantity(tx["blockNumber"]), hex_value(tx["blockHash"])
                chunk.inflows.append(Inflow("native", hex_value(tx["hash"]), None, *at, frm, value))
        for tx in spent:
            number = quantity(tx["blockNumber"])
            chunk.explain(number, -spending(tx, _receipt(receipts, tx["hash"])))
        for frame in frames:
            if not ok(frame.tx_hash):
                continue
            if frame.deep and not ancestors_ok(frame, trees.get(frame.tx_hash) or []):
                continue
            chunk.inflows.append(frame.inflow())


def _receipt(receipts: Mapping[str, dict[str, Any] | None], tx_hash: Any) -> dict[str, Any]:
    receipt = receipts[hex_value(tx_hash)]
    assert receipt is not None
    return receipt
