"""A scripted in-memory EVM node: blocks, transactions, receipts, logs and traces written by the
test, served as JSON-RPC over a real local HTTP server.

The chain is a list of blocks the test appends to (one block per transaction, as Anvil's
automine does, or ``mine(n)`` empty ones); a transaction says what it did (value moved, ERC-20
``Transfer`` logs, internal value calls, success or revert), and the node derives everything a
client can ask: blocks by number or tag (``safe``/``finalized`` trail ``latest`` by
``safe_lag``/``finalized_lag``), receipts, ``eth_getLogs`` (address and topic filters),
``trace_filter`` (``toAddress``/``fromAddress``), ``trace_transaction``,
``debug_traceBlockByNumber`` with ``callTracer``, balances and ``balanceOf`` at any block,
nonces. ``block_timestamps=True`` models the newer nodes (Anvil, geth >= 1.16, reth) whose
receipts and logs name their block's time (``blockTimestamp``: an int in receipts, hex in logs,
as Anvil answers); without it, the older ones that do not.

``reorg(depth, txs)`` replaces the blocks above ``head - depth`` like ``anvil_reorg``
(new hashes; the old transactions vanish unless re-included).

Served through ``RpcProxy`` with the node as its upstream handler, so the real ``RpcPool``
(batches, failover, chain-id check, redaction) talks HTTP to it and every proxy fault works on
it too. Adding a JSON-RPC method is one method here: ``def rpc_<name>(self, *params)``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from eth_utils import keccak, to_checksum_address

from tests.support.rpcproxy import RpcFault, RpcProxy
from tests.support.scripted_chain import (
    GAS_PRICE,
    Block,
    Call,
    Log,
    Tx,
    block_logs,
    call_tree,
    frames,
    q,
    top_call,
    tx_json,
)
from tests.support.service import Service

__all__ = ["Block", "Call", "Log", "ScriptedNode", "Tx"]

BALANCE_OF = "0x70a08231"
ZERO = "0x" + "00" * 20
GENESIS_TIME = 1_790_000_000  # 2026-09-21: block n is mined at GENESIS_TIME + n seconds
DEV_BALANCE = 10_000 * 10**18


class ScriptedNode(Service):
    """An in-memory chain answering JSON-RPC; ``start()`` serves it on 127.0.0.1."""

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        safe_lag: int = 32,
        finalized_lag: int = 64,
        accounts: int = 10,
        block_timestamps: bool = False,
    ) -> None:
        self.chain_id, self.safe_lag, self.finalized_lag = chain_id, safe_lag, finalized_lag
        self.block_timestamps = block_timestamps  # receipts and logs carry blockTimestamp
        self.accounts = [str(to_checksum_address(f"0x{0xDE0 + i:040x}")) for i in range(accounts)]
        self.genesis: dict[str, int] = dict.fromkeys(self.accounts, DEV_BALANCE)
        self.closed: set[str] = set()  # contract wallets whose plain ETH transfers revert
        self.blocks: list[Block] = []
        self._ids = itertools.count(1)
        self._branch = 0
        self._lock = threading.RLock()
        self._proxy: RpcProxy | None = None
        self._mine([])

    # -- serving ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._proxy is not None, "ScriptedNode is not started"
        return self._proxy.url

    def start(self) -> ScriptedNode:
        self._proxy = RpcProxy(self).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None

    def __call__(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC entry: ``rpc_<method>(*params)``; unknown methods are -32601."""
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            raise RpcFault(-32601, f"the method {method} does not exist/is not available")
        with self._lock:
            try:
                return handler(*params)
            except RpcFault:
                raise
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise RpcFault(-32602, f"invalid params for {method}: {exc}") from exc

    # -- writing the chain -----------------------------------------------------------------

    @property
    def head(self) -> int:
        return len(self.blocks) - 1

    def _hash(self, *parts: object) -> str:
        return "0x" + keccak(text=":".join(str(p) for p in parts)).hex()

    def _mine(self, txs: list[Tx]) -> Block:
        number = len(self.blocks)
        parent = self.blocks[-1].hash if self.blocks else "0x" + "00" * 32
        digest = self._hash("block", self._branch, number, parent, *(t.hash for t in txs))
        block = Block(number, digest, parent, GENESIS_TIME + number, txs)
        self.blocks.append(block)
        return block

    def mine(self, n: int = 1) -> None:
        """Append ``n`` empty blocks."""
        with self._lock:
            for _ in range(n):
                self._mine([])

    def withdraw(self, address: str, gwei: int) -> Block:
        """Mine a block whose only content is a beacon-chain withdrawal of ``gwei`` to
        ``address`` (no transaction: only the block lists it)."""
        with self._lock:
            block = self._mine([])
            block.withdrawals.append((to_checksum_address(address), gwei))
            return block

    def new_tx(self, frm: str, to: str, value: int = 0, **kw: Any) -> Tx:
        """A transaction not mined yet (for ``include`` or ``reorg``), with a fresh hash."""
        with self._lock:
            nonce = sum(1 for t in self._txs() if t.frm == frm)
            return Tx(self._hash("tx", next(self._ids)), frm, to, value, nonce=nonce, **kw)

    def include(self, tx: Tx) -> Tx:
        """Mine ``tx`` in a block of its own; a plain transfer to a closed wallet reverts."""
        with self._lock:
            if tx.to in self.closed and tx.value > 0 and not tx.logs and not tx.calls:
                tx.status = 0
            self._mine([tx])
            return tx

    def send(self, frm: str, to: str, value: int, **kw: Any) -> Tx:
        """A transaction from ``frm`` to ``to``, mined in its own block."""
        return self.include(self.new_tx(frm, to, value, **kw))

    def reorg(self, depth: int, txs: Sequence[tuple[Tx, int]] = ()) -> None:
        """Replace the last ``depth`` blocks by as many new ones holding ``txs`` (tx, offset
        from the first replaced block): the head keeps its height, every hash above changes."""
        with self._lock:
            first = len(self.blocks) - depth
            assert first > 0, "cannot replace the genesis block"
            del self.blocks[first:]
            self._branch += 1
            for offset in range(depth):
                self._mine([tx for tx, at in txs if at == offset])

    def rollback(self, n: int) -> None:
        """Drop the last ``n`` blocks."""
        with self._lock:
            del self.blocks[len(self.blocks) - n :]

    # -- reading the chain -----------------------------------------------------------------

    def _txs(self, up_to: int | None = None) -> Iterator[Tx]:
        for block in self.blocks[: None if up_to is None else up_to + 1]:
            yield from block.txs

    def _located(self, tx_hash: str) -> tuple[Block, int, Tx] | None:
        for block in self.blocks:
            for index, tx in enumerate(block.txs):
                if tx.hash == tx_hash.lower():
                    return block, index, tx
        return None

    def balance(self, address: str, at: int | None = None) -> int:
        """Native balance of ``address`` after block ``at`` (default: the head)."""
        with self._lock:
            total = self.genesis.get(address, 0)
            for block in self.blocks[: None if at is None else at + 1]:
                total += sum(gwei * 10**9 for to, gwei in block.withdrawals if to == address)
            for tx in self._txs(at):
                if tx.frm == address:
                    total -= tx.gas_used * GAS_PRICE
                if tx.status != 1:
                    continue
                total += tx.value * ((tx.to == address) - (tx.frm == address))
                for call in _flatten(tx.calls):
                    total += call.value * ((call.to == address) - (call.frm == address))
            return total

    def token_balance(self, token: str, address: str, at: int | None = None) -> int:
        with self._lock:
            total = 0
            for tx in self._txs(at):
                for log in tx.logs if tx.status == 1 else []:
                    if log.token == token:
                        total += log.amount * ((log.to == address) - (log.frm == address))
            return total

    def _number(self, ref: Any) -> int:
        if isinstance(ref, Mapping):  # EIP-1898: a block by hash (only on this branch here)
            for block in self.blocks:
                if block.hash == str(ref.get("blockHash", "")).lower():
                    return block.number
            raise RpcFault(-32001, "Resource not found")
        if ref in ("latest", "pending", None):
            return self.head
        if ref == "earliest":
            return 0
        if ref == "safe":
            return max(0, self.head - self.safe_lag)
        if ref == "finalized":
            return max(0, self.head - self.finalized_lag)
        return int(str(ref), 16)

    # -- JSON-RPC methods ------------------------------------------------------------------

    def rpc_eth_chainId(self) -> str:
        return q(self.chain_id)

    def rpc_eth_blockNumber(self) -> str:
        return q(self.head)

    def rpc_eth_getBlockByNumber(self, ref: Any, full: bool = False) -> dict[str, Any] | None:
        number = self._number(ref)
        if not 0 <= number <= self.head:
            return None
        block = self.blocks[number]
        txs: list[Any] = [
            tx_json(block, i, tx) if full else tx.hash for i, tx in enumerate(block.txs)
        ]
        return {
            "number": q(block.number), "hash": block.hash, "parentHash": block.parent_hash,
            "timestamp": q(block.timestamp), "transactions": txs,
            "withdrawals": [
                {"index": q(i), "validatorIndex": q(7), "address": to.lower(), "amount": q(gwei)}
                for i, (to, gwei) in enumerate(block.withdrawals)
            ],
            "gasLimit": q(30_000_000), "miner": ZERO,
        }  # fmt: skip

    def rpc_eth_getBlockByHash(self, block_hash: str, full: bool = False) -> dict[str, Any] | None:
        for block in self.blocks[: self.head + 1]:
            if block.hash == block_hash.lower():
                return self.rpc_eth_getBlockByNumber(q(block.number), full)
        return None

    def rpc_eth_getTransactionByHash(self, tx_hash: str) -> dict[str, Any] | None:
        found = self._located(tx_hash)
        return None if found is None else tx_json(*found)

    def rpc_eth_getTransactionReceipt(self, tx_hash: str) -> dict[str, Any] | None:
        found = self._located(tx_hash)
        if found is None:
            return None
        block, index, tx = found
        logs = [self._stamp(lg) for lg in block_logs(block) if lg["transactionHash"] == tx.hash]
        stamp = {"blockTimestamp": block.timestamp} if self.block_timestamps else {}
        return stamp | {
            "transactionHash": tx.hash, "transactionIndex": q(index), "from": tx.frm,
            "to": tx.to, "blockNumber": q(block.number), "blockHash": block.hash,
            "status": q(tx.status), "gasUsed": q(tx.gas_used),
            "cumulativeGasUsed": q(tx.gas_used), "effectiveGasPrice": q(GAS_PRICE),
            "logs": logs, "contractAddress": None, "type": "0x2",
        }  # fmt: skip

    def rpc_eth_getBalance(self, address: str, ref: Any = "latest") -> str:
        number = self._number(ref)
        if number > self.head:
            raise RpcFault(-32000, "header not found")
        return q(self.balance(to_checksum_address(address), number))

    def rpc_eth_getTransactionCount(self, address: str, ref: Any = "latest") -> str:
        wallet = to_checksum_address(address)
        return q(sum(1 for tx in self._txs(self._number(ref)) if tx.frm == wallet))

    def rpc_eth_call(self, request: Mapping[str, Any], ref: Any = "latest") -> str:
        data = str(request.get("data") or request.get("input") or "")
        if not data.startswith(BALANCE_OF) or len(data) != 74:
            raise RpcFault(3, "execution reverted")
        token = to_checksum_address(request["to"])
        holder = to_checksum_address("0x" + data[-40:])
        amount = self.token_balance(token, holder, self._number(ref))
        return "0x" + amount.to_bytes(32, "big").hex()

    def rpc_eth_getLogs(self, flt: Mapping[str, Any]) -> list[dict[str, Any]]:
        first, last = self._number(flt.get("fromBlock")), self._number(flt.get("toBlock"))
        addresses = flt.get("address")
        if isinstance(addresses, str):
            addresses = [addresses]
        wanted = None if addresses is None else {a.lower() for a in addresses}
        topics = list(flt.get("topics") or [])
        out: list[dict[str, Any]] = []
        for block in self.blocks[first : last + 1]:
            for log in block_logs(block):
                if wanted is not None and log["address"].lower() not in wanted:
                    continue
                if all(_topic_ok(want, log["topics"], i) for i, want in enumerate(topics)):
                    out.append(self._stamp(log))
        return out

    def _stamp(self, log: dict[str, Any]) -> dict[str, Any]:
        """A log as this kind of node answers it: with its block's time (hex) or without."""
        if not self.block_timestamps:
            return log
        return log | {"blockTimestamp": q(self.blocks[int(log["blockNumber"], 16)].timestamp)}

    def rpc_trace_filter(self, flt: Mapping[str, Any]) -> list[dict[str, Any]]:
        first, last = self._number(flt.get("fromBlock")), self._number(flt.get("toBlock"))
        to = {a.lower() for a in flt.get("toAddress") or []}
        frm = {a.lower() for a in flt.get("fromAddress") or []}
        out: list[dict[str, Any]] = []
        for block in self.blocks[first : last + 1]:
            for index, tx in enumerate(block.txs):
                for f in frames(block, index, tx):
                    if to and f["action"]["to"].lower() not in to:
                        continue
                    if frm and f["action"]["from"].lower() not in frm:
                        continue
                    out.append(f)
        return out

    def rpc_trace_transaction(self, tx_hash: str) -> list[dict[str, Any]] | None:
        found = self._located(tx_hash)
        return None if found is None else frames(*found)

    def rpc_debug_traceBlockByNumber(self, ref: Any, options: Any = None) -> list[Any]:
        if (options or {}).get("tracer") != "callTracer":
            raise RpcFault(-32602, "only the callTracer is scripted")
        number = self._number(ref)
        if not 0 <= number <= self.head:
            raise RpcFault(-32000, f"block #{number} not found")
        txs = self.blocks[number].txs
        return [{"txHash": tx.hash, "result": call_tree(top_call(tx))} for tx in txs]


def _flatten(calls: list[Call]) -> Iterator[Call]:
    """Every call that took effect: an errored call undoes itself and everything inside it."""
    for call in calls:
        if not call.error:
            yield call
            yield from _flatten(call.calls)


def _topic_ok(want: Any, topics: list[str], i: int) -> bool:
    if want is None:
        return True
    have = topics[i].lower() if i < len(topics) else None
    options = want if isinstance(want, list) else [want]
    return have in {str(o).lower() for o in options}
