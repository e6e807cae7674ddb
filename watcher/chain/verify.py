"""``proof verify``: re-check a proof bundle against any node, trusting nothing but the chain.

What is checked, in order (the first that fails is the mismatch named):

1. the node is the bundle's chain (``eth_chainId``);
2. per payment: the receipt exists with status 1, in the recorded block number and hash; that
   hash is the canonical block at that number (and its timestamp the recorded ``block_time``);
   the transfer is there with the recorded sender, recipient and raw amount (the token's
   ``Transfer`` log at its index, the transaction's value, or the internal call at its trace
   position; a balance-attributed internal payment by the balances of the wallet and the
   contract over its block); the block is at or below the node's final block
   (``finalized``, ``safe`` or N confirmations);
3. the token's ``decimals()`` on chain equals the bundle's (18 for the native coin);
4. the amounts add up: each decimal amount is its base units at those decimals, the paid
   amount is the payments' sum, paid to the invoice's wallet in its asset;
5. the terms hash recomputed from the bundle's terms equals the approval's, and the invoice's.

No database is read: the bundle and the node are all there is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.chain.online import DECIMALS_SELECTOR
from watcher.chain.rpc import RpcPool
from watcher.chain.sources import quantity, same
from watcher.chain.verify_transfer import Checker, check_transfer
from watcher.domain.proof_rules import Check, amount_checks, terms_checks
from watcher.errors import BadInput, Refused, WatcherError
from watcher.schemas.proof import SCHEMA_VERSION, validate_bundle


@dataclass
class Verification:
    """Every check made, in order; ``mismatch`` is the first that failed."""

    invoice: str
    chain_id: int
    rpc: str  # redacted
    finality: str
    final_block: int | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def mismatch(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def as_json(self) -> dict[str, Any]:
        bad = self.mismatch
        return {
            "verified": bad is None,
            "schema": SCHEMA_VERSION,
            "invoice": self.invoice,
            "chain_id": self.chain_id,
            "rpc": self.rpc,
            "finality": self.finality,
            "final_block": self.final_block,
            "mismatch": None if bad is None else {"field": bad.field, "detail": bad.detail},
            "checks": [{"field": c.field, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


class ProofMismatch(Refused):
    """The chain does not vouch for the bundle: exit 3, naming the first field that differs."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        bad = verification.mismatch
        assert bad is not None
        super().__init__(f"proof {verification.invoice} does not verify: {bad.field}: {bad.detail}")


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def final_block_of(pool: RpcPool, finality: str) -> int:
    """The node's final block under ``finality`` ("finalized", "safe" or N confirmations)."""
    if finality.isdigit():
        head = quantity(pool.call("eth_blockNumber"))
        return head - int(finality) + 1
    block = pool.call("eth_getBlockByNumber", [finality, False])
    if not isinstance(block, dict):
        raise WatcherError(f"the node has no {finality!r} block; pass --finality N (confirmations)")
    return quantity(block["number"])


def parse_finality(text: str) -> str:
    """``finalized``, ``safe`` or a positive number of confirmations; BadInput otherwise."""
    value = text.strip().lower()
    if value in ("finalized", "safe") or (value.isdigit() and int(value) >= 1):
        return value
    raise BadInput(f"--finality {text!r} must be finalized, safe or a number of confirmations >= 1")


def verify_bundle(bundle: Any, pool: RpcPool, *, finality: str = "finalized") -> Verification:
    """Check ``bundle`` against the node behind ``pool``; raise ``ProofMismatch`` on the first
    difference, ``BadInput`` if it is not a ``proof-v1`` bundle, ``RpcError`` if the node
    cannot be asked."""
    if isinstance(bundle, dict):
        bundle.setdefault("schema", SCHEMA_VERSION)  # bundles frozen before the marker existed
    validate_bundle(bundle)
    chain_id = int(bundle["chain"]["chain_id"])
    out = Verification(
        invoice=str(bundle["invoice"]["id"]),
        chain_id=chain_id,
        rpc=pool.current_url_redacted,
        finality=finality,
    )
    c = Checker(out)
    node_chain = quantity(pool.call("eth_chainId"))
    if c.check(
        "chain.chain_id",
        node_chain == chain_id,
        f"node is chain {chain_id}",
        f"the node is chain {node_chain}, the bundle says {chain_id}",
    ):
        out.final_block = final_block_of(pool, finality)
        for i, payment in enumerate(bundle["payments"]):
            _check_payment(c, pool, i, payment, out.final_block)
        _check_decimals(c, pool, bundle["asset"])
    out.checks += amount_checks(bundle)
    out.checks += terms_checks(bundle)
    if out.mismatch is not None:
        raise ProofMismatch(out)
    return out


def _check_payment(
    c: Checker,
    pool: RpcPool,
    i: int,
    p: Mapping[str, Any],
    final_block: int,
) -> None:
    at = f"payments[{i}]"
    tx_hash = str(p["tx_hash"])
    tx, receipt, block = pool.batch(
        [
            ("eth_getTransactionByHash", [tx_hash]),
            ("eth_getTransactionReceipt", [tx_hash]),
            ("eth_getBlockByNumber", [hex(int(p["block_number"])), False]),
        ]
    )
    if not c.check(
        f"{at}.tx_hash",
        isinstance(receipt, dict) and isinstance(tx, dict),
        f"transaction {tx_hash} is on the node",
        f"transaction {tx_hash} is unknown to the node (another chain history, or reorged away)",
    ):
        return
    if not c.check(
        f"{at}.tx_hash",
        quantity(receipt.get("status", "0x0")) == 1,
        "receipt status 1",
        f"transaction {tx_hash} reverted (receipt status 0)",
    ):
        return
    number = quantity(receipt["blockNumber"])
    c.check(
        f"{at}.block_number",
        number == p["block_number"],
        f"mined in block {number}",
        f"the transaction is in block {number}, the bundle says {p['block_number']}",
    )
    c.check(
        f"{at}.block_hash",
        same(receipt.get("blockHash"), p["block_hash"]),
        f"receipt's block hash {p['block_hash']}",
        f"the transaction is in block {receipt.get('blockHash')}, the bundle says "
        f"{p['block_hash']}",
    )
    canonical = block.get("hash") if isinstance(block, dict) else None
    c.check(
        f"{at}.block_hash",
        same(canonical, p["block_hash"]),
        f"canonical block {p['block_number']} is {p['block_hash']}",
        f"the canonical block {p['block_number']} is {canonical}, the bundle says "
        f"{p['block_hash']}",
    )
    if p.get("block_time") is not None and isinstance(block, dict):
        stamp = _iso(quantity(block["timestamp"]))
        c.check(
            f"{at}.block_time",
            stamp == p["block_time"],
            f"block time {stamp}",
            f"block {p['block_number']} has timestamp {stamp}, the bundle says {p['block_time']}",
        )
    check_transfer(c, pool, at, p, tx, receipt)
    c.check(
        f"{at}.block_number",
        int(p["block_number"]) <= final_block,
        f"block {p['block_number']} is final (final block {final_block})",
        f"block {p['block_number']} is not final on this node (final block {final_block})",
    )


def _check_decimals(c: Checker, pool: RpcPool, asset: Mapping[str, Any]) -> None:
    token = asset.get("token_address")
    if token is None:
        c.check(
            "asset.decimals",
            asset["decimals"] == 18,
            "native coin, 18 decimals",
            f"the native coin has 18 decimals, not {asset['decimals']}",
        )
        return
    raw = pool.call("eth_call", [{"to": token, "data": DECIMALS_SELECTOR}, "latest"])
    if not c.check(
        "asset.decimals",
        isinstance(raw, str) and len(raw) > 2,
        f"{token} answers decimals()",
        f"{token} answers no decimals(): no token contract there on this node",
    ):
        return
    on_chain = quantity(raw)
    c.check(
        "asset.decimals",
        on_chain == asset["decimals"],
        f"{asset['symbol']} decimals() is {on_chain}",
        f"{asset['symbol']} decimals() is {on_chain} on chain, the bundle says {asset['decimals']}",
    )
