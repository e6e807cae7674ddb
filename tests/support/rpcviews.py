"""How a node that is behind, or on another view of the chain, answers: for ``RpcProxy``.

A ``ChainView`` rewrites requests before they reach the real node and answers after, so that
the proxy behaves like a backend whose head is ``lag`` blocks behind (it does not have the
newer blocks yet), whose ``finalized``/``safe`` tags trail by ``tag_lag`` more blocks, and
that may disagree about receipts (another block hash). Pure functions over JSON-RPC entries;
the proxy supplies the real head and tag numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TAGS = ("safe", "finalized")
# Methods whose last parameter is a block reference (state at that block).
_AT_BLOCK = {
    "eth_getBalance": 1,
    "eth_call": 1,
    "eth_getTransactionCount": 1,
    "eth_getCode": 1,
    "eth_getStorageAt": 2,
}
_RANGED = ("eth_getLogs", "trace_filter")
_BY_HASH = ("eth_getTransactionReceipt", "eth_getTransactionByHash")
NOT_FOUND = {"code": -32000, "message": "header not found"}
NOT_FOUND_BY_HASH = {"code": -32000, "message": "header for hash not found"}  # geth's words


def _number(ref: Any) -> int | None:
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str) and ref.startswith("0x"):
        return int(ref, 16)
    return None


def other_hash(value: Any) -> Any:
    """A different 32-byte hash of the same shape (last nibble changed)."""
    if not isinstance(value, str) or len(value) < 3:
        return value
    last = "0" if value[-1].lower() != "0" else "1"
    return value[:-1] + last


@dataclass
class ChainView:
    """One request's view: ``head`` is the lagging node's head; ``tag_number(tag)`` the real
    node's number for ``safe``/``finalized``; ``hash_number(hash)`` the real node's number of
    a block hash (None: unknown), for state read by block hash (EIP-1898)."""

    head: int
    tag_number: Callable[[str], int]
    tag_lag: int = 0
    lag: int = 0
    disagree: bool = False
    hash_number: Callable[[str], int | None] = lambda block_hash: None

    def tag(self, tag: str) -> int:
        return max(0, min(self.head, self.tag_number(tag) - self.lag - self.tag_lag))

    def rewrite(self, entry: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
        """``(entry to forward, None)``, or ``(None, local answer)`` when the lagging node
        answers by itself (its head; a block it does not have; state it does not have)."""
        method = entry.get("method")
        params = list(entry.get("params") or [])
        req_id = entry.get("id")
        if method == "eth_blockNumber":
            return None, {"jsonrpc": "2.0", "id": req_id, "result": hex(self.head)}
        if method == "eth_getBlockByNumber" and params:
            ref = params[0]
            if ref in ("latest", "pending"):
                number: int | None = self.head
            elif ref in TAGS:
                number = self.tag(str(ref))
            else:
                number = _number(ref)
            if number is not None and number > self.head:
                return None, {"jsonrpc": "2.0", "id": req_id, "result": None}
            if number is not None:
                params[0] = hex(number)
        elif method in _AT_BLOCK and len(params) > _AT_BLOCK[method]:
            at = _AT_BLOCK[method]
            ref = params[at]
            number = self.head if ref in ("latest", "pending") else _number(ref)
            if ref in TAGS:
                number = self.tag(str(ref))
            if isinstance(ref, dict) and isinstance(ref.get("blockHash"), str):
                number = self.hash_number(ref["blockHash"])  # a block this node may not have
                if number is not None and number > self.head:
                    return None, {"jsonrpc": "2.0", "id": req_id, "error": NOT_FOUND_BY_HASH}
                number = None  # forwarded as it is
            if number is not None and number > self.head:
                return None, {"jsonrpc": "2.0", "id": req_id, "error": NOT_FOUND}
            if number is not None:
                params[at] = hex(number)
        elif method in _RANGED and params and isinstance(params[0], dict):
            flt = dict(params[0])
            if "blockHash" not in flt:
                first = _number(flt.get("fromBlock")) or 0
                last = _number(flt.get("toBlock"))
                if first > self.head:
                    return None, {"jsonrpc": "2.0", "id": req_id, "result": []}
                if last is None or last > self.head:
                    flt["toBlock"] = hex(self.head)
                params[0] = flt
        elif method == "debug_traceBlockByNumber" and params:
            number = _number(params[0])
            if number is not None and number > self.head:
                return None, {"jsonrpc": "2.0", "id": req_id, "error": NOT_FOUND}
        return {**entry, "params": params}, None

    def answer(self, entry: dict[str, Any], answer: Any) -> Any:
        """The upstream's ``answer`` as this view gives it: a transaction in a block the node
        does not have is unknown; with ``disagree`` a receipt names another block hash."""
        if not isinstance(answer, dict) or entry.get("method") not in _BY_HASH:
            return answer
        result = answer.get("result")
        if not isinstance(result, dict):
            return answer
        number = _number(result.get("blockNumber"))
        if number is not None and number > self.head:
            return {**answer, "result": None}
        if self.disagree and entry.get("method") == "eth_getTransactionReceipt":
            logs = [
                {**lg, "blockHash": other_hash(lg.get("blockHash"))}
                for lg in result.get("logs") or []
                if isinstance(lg, dict)
            ]
            result = {**result, "blockHash": other_hash(result.get("blockHash")), "logs": logs}
            return {**answer, "result": result}
        return answer
