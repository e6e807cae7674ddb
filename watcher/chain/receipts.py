"""Receipts and block hashes: what a transaction did, and whether a block is still there.

Used by the reader (status of each candidate, the wallet's spending), by finality
(``watcher.chain.confirm``: is the stored transfer still the one on chain) and by the reorg walk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from watcher.chain.calls import (
    TRANSFER_TOPIC,
    address_topic,
    as_dict,
    as_list,
    block_call,
    decode_amount,
    parse_block,
    quantity,
    receipt_call,
    same,
)
from watcher.chain.rpc import Call, RpcPool

Receipts = dict[str, dict[str, Any] | None]


def receipt_calls(tx_hashes: Sequence[str], deep: Sequence[str] = ()) -> list[Call]:
    """Receipts of ``tx_hashes``, then the ``trace_transaction`` trees of ``deep``."""
    return [receipt_call(h) for h in tx_hashes] + [("trace_transaction", [h]) for h in deep]


def parse_receipts(
    tx_hashes: Sequence[str], deep: Sequence[str], answers: Sequence[Any]
) -> tuple[Receipts, dict[str, list[Any]]]:
    """The answers to ``receipt_calls(tx_hashes, deep)``: receipts by hash, trees by hash."""
    split_at = len(tx_hashes)
    receipts: Receipts = {
        h: (None if a is None else as_dict(a, "a receipt"))
        for h, a in zip(tx_hashes, answers[:split_at], strict=True)
    }
    trees = {h: as_list(a, "a trace") for h, a in zip(deep, answers[split_at:], strict=True)}
    return receipts, trees


def read_receipts(
    pool: RpcPool, tx_hashes: Sequence[str], deep: Sequence[str] = ()
) -> tuple[Receipts, dict[str, list[Any]]]:
    """Receipts by tx hash (None: the node does not know the transaction any more), and the
    ``trace_transaction`` trees of the ``deep`` ones, in one batch."""
    if not tx_hashes:
        return {}, {}
    return parse_receipts(tx_hashes, deep, pool.batch(receipt_calls(tx_hashes, deep)))


def spending(tx: Mapping[str, Any], receipt: Mapping[str, Any]) -> int:
    """Wei a transaction sent by the wallet took from it: the fees, plus the value if it
    succeeded and went elsewhere."""
    fee = quantity(receipt.get("gasUsed", 0)) * quantity(
        receipt.get("effectiveGasPrice") or tx.get("gasPrice") or 0
    )
    if receipt.get("blobGasUsed"):
        fee += quantity(receipt["blobGasUsed"]) * quantity(receipt.get("blobGasPrice") or 0)
    if receipt.get("l1Fee"):
        fee += quantity(receipt["l1Fee"])  # OP-stack chains charge the L1 data fee on top
    sent = quantity(receipt["status"]) == 1 and not same(tx.get("to"), tx.get("from"))
    return fee + (quantity(tx.get("value", "0x0")) if sent else 0)


def block_hashes(pool: RpcPool, numbers: Sequence[int]) -> dict[int, str | None]:
    """The node's hash for each block number (None: it has no such block any more), read
    from headers."""
    wanted = sorted(set(numbers))
    answers = pool.batch([block_call(n) for n in wanted]) if wanted else []
    return {
        n: None if raw is None else parse_block(raw, n).hash
        for n, raw in zip(wanted, answers, strict=True)
    }


class StoredTransfer(Protocol):
    """What a receipt is checked against: the fields of a transfer as it was stored."""

    @property
    def kind(self) -> str: ...
    @property
    def block_hash(self) -> str: ...
    @property
    def log_index(self) -> int | None: ...
    @property
    def token_address(self) -> str | None: ...
    @property
    def amount(self) -> int: ...


def receipt_disagrees(
    transfer: StoredTransfer, receipt: Mapping[str, Any] | None, wallet: str
) -> str:
    """Why ``receipt`` does not confirm ``transfer`` as stored ("" when it does)."""
    if receipt is None:
        return "transaction not found"
    if not same(receipt.get("blockHash"), transfer.block_hash):
        return f"now in block {receipt.get('blockHash')}"
    if quantity(receipt.get("status", "0x0")) != 1:
        return "transaction failed"
    if transfer.kind != "erc20":
        return ""
    log = next(
        (lg for lg in receipt.get("logs") or [] if quantity(lg["logIndex"]) == transfer.log_index),
        None,
    )
    if log is None:
        return f"no log at index {transfer.log_index}"
    topics = [str(t).lower() for t in log.get("topics") or []]
    if (
        not same(log.get("address"), transfer.token_address)
        or topics[:1] != [TRANSFER_TOPIC]
        or topics[2:3] != [address_topic(wallet)]
        or decode_amount(log.get("data", "0x")) != transfer.amount
    ):
        return f"log {transfer.log_index} is not the same transfer"
    return ""
