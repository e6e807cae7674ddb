"""The scripted node's records (blocks, transactions, internal calls, ERC-20 logs) and how
they read as JSON-RPC: logs, transactions, Parity-style traces and ``callTracer`` trees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
GAS_PRICE = 10**9


def q(value: int) -> str:
    """A JSON-RPC quantity."""
    return hex(value)


def topic(address: str) -> str:
    """An address as a 32-byte log topic."""
    return "0x" + "00" * 12 + address[2:].lower()


@dataclass
class Call:
    """An internal call carrying value, made by a contract during a transaction."""

    frm: str
    to: str
    value: int
    error: bool = False
    calls: list[Call] = field(default_factory=list)


@dataclass
class Log:
    """An ERC-20 ``Transfer`` log."""

    token: str
    frm: str
    to: str
    amount: int


@dataclass
class Tx:
    """A transaction as mined: what it moved, and whether it succeeded."""

    hash: str
    frm: str
    to: str
    value: int
    status: int = 1
    gas_used: int = 21_000
    logs: list[Log] = field(default_factory=list)  # only kept when status is 1
    calls: list[Call] = field(default_factory=list)  # internal calls, in execution order
    nonce: int = 0


@dataclass
class Block:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    txs: list[Tx] = field(default_factory=list)
    withdrawals: list[tuple[str, int]] = field(default_factory=list)  # (address, gwei)


def block_logs(block: Block) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, tx in enumerate(block.txs):
        for log in tx.logs if tx.status == 1 else []:
            out.append({
                "address": log.token, "data": "0x" + log.amount.to_bytes(32, "big").hex(),
                "topics": [TRANSFER_TOPIC, topic(log.frm), topic(log.to)],
                "blockNumber": q(block.number), "blockHash": block.hash,
                "transactionHash": tx.hash, "transactionIndex": q(index),
                "logIndex": q(len(out)), "removed": False,
            })  # fmt: skip
    return out


def tx_json(block: Block, index: int, tx: Tx) -> dict[str, Any]:
    return {
        "hash": tx.hash, "from": tx.frm, "to": tx.to, "value": q(tx.value),
        "nonce": q(tx.nonce), "gas": q(max(tx.gas_used, 21_000)), "gasPrice": q(GAS_PRICE),
        "input": "0x", "blockNumber": q(block.number), "blockHash": block.hash,
        "transactionIndex": q(index),
    }  # fmt: skip


def frames(block: Block, index: int, tx: Tx) -> list[dict[str, Any]]:
    """``trace_transaction`` frames (Parity style): the top call, then each internal call
    with its trace address, depth first in execution order."""

    def frame(call: Call, path: list[int], error: bool, subtraces: int) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "action": {"from": call.frm, "to": call.to, "value": q(call.value),
                       "callType": "call", "gas": "0x0", "input": "0x"},
            "blockHash": block.hash, "blockNumber": block.number,
            "result": None if error else {"gasUsed": "0x0", "output": "0x"},
            "subtraces": subtraces, "traceAddress": path, "transactionHash": tx.hash,
            "transactionPosition": index, "type": "call",
        }  # fmt: skip
        if error:
            entry["error"] = "Reverted"
        return entry

    top = Call(tx.frm, tx.to, tx.value, tx.status != 1, tx.calls)
    out = [frame(top, [], top.error, len(tx.calls))]

    def walk(calls: list[Call], path: list[int]) -> None:
        for i, call in enumerate(calls):
            out.append(frame(call, [*path, i], call.error, len(call.calls)))
            walk(call.calls, [*path, i])

    walk(tx.calls, [])
    return out


# -- JSON-RPC methods ------------------------------------------------------------------


def call_tree(call: Call) -> dict[str, Any]:
    """A call as ``debug_traceBlockByNumber``'s ``callTracer`` shows it, with its children."""
    out: dict[str, Any] = {"type": "CALL", "from": call.frm, "to": call.to,
                           "value": q(call.value), "gas": "0x0", "gasUsed": "0x0",
                           "input": "0x"}  # fmt: skip
    if call.calls:
        out["calls"] = [call_tree(c) for c in call.calls]
    if call.error:
        out["error"] = "execution reverted"
    return out


def top_call(tx: Tx) -> Call:
    """The transaction itself as the outermost call."""
    return Call(tx.frm, tx.to, tx.value, tx.status != 1, tx.calls)
