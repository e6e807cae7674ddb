"""Internal ETH without traces: attributing a balance jump to the transaction that caused it.

On a node without traces (``internal = "off"``) an internal payment (a Safe, an exchange's
batcher) shows only as wallet growth the found inflows do not explain: the balance guard raises
``watcher.unexplained_balance`` and locates the block. ``invoice attach INV TXHASH`` then
accepts a transaction in that block when its value flow explains the jump:

- the guard located unexplained growth in the transaction's block, not yet attributed;
- the transaction succeeded, is not from or to the wallet, and is the only one in its block
  sent to the contract it called;
- that contract's balance fell over the block by at least the unexplained amount (what it
  received in the transaction counted).

The transfer is recorded as ``internal`` with ``attribution = "balance"`` and the amount the
wallet gained unexplained in that block (never more than the guard saw), and the proof says it
was balance-attributed. It must explain the whole jump: two internal payments in one block from
different transactions are not split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address
from sqlmodel import Session, col, select

from watcher.chain.rpc import RpcPool
from watcher.chain.sources import balance_call, block_call, same
from watcher.errors import Refused
from watcher.settings import ChainSettings
from watcher.store.tables import OutboxEvent, Transfer

BALANCE = "balance"


@dataclass(frozen=True)
class Jump:
    """What the balance guard saw in one block."""

    block: int
    unexplained: int  # wei, as the guard reported it for its range
    explained_in_block: int  # native and internal inflows already stored for that block


def located_jump(session: Session, chain: ChainSettings, block: int) -> Jump | None:
    """The guard's unexplained native growth located at ``block`` (None: none there, or it is
    already attributed to a transaction)."""
    unexplained = 0
    for event in session.exec(
        select(OutboxEvent).where(OutboxEvent.type == "watcher.unexplained_balance")
    ):
        data = json.loads(event.body).get("data", {})
        native = data.get("token_address") is None and data.get("asset") in (
            None,
            chain.native_symbol,
        )
        if data.get("chain") == chain.name and data.get("block") == block and native:
            unexplained = max(unexplained, int(data.get("unexplained", "0")))
    if unexplained <= 0:
        return None
    stored = session.exec(
        select(Transfer).where(
            Transfer.chain == chain.name,
            Transfer.block_number == block,
            col(Transfer.kind).in_(["native", "internal"]),
            Transfer.status != "orphaned",
        )
    ).all()
    if any(t.attribution == BALANCE for t in stored):
        return None
    return Jump(block, unexplained, sum(t.amount for t in stored))


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def attributed_amount(
    pool: RpcPool, chain: ChainSettings, tx: Mapping[str, Any], jump: Jump
) -> tuple[str, int]:
    """(sender contract, wei) that ``tx`` paid the wallet by internal calls, judged by balances
    over its block; ``Refused`` naming why when its value flow does not explain the jump."""
    wallet, block = chain.receiving_address, jump.block
    callee = tx.get("to")
    if callee is None or same(callee, wallet) or same(tx.get("from"), wallet):
        raise Refused(
            "a balance-attributed payment must be a call to a contract that pays the wallet"
        )
    full, w_after, w_before, c_after, c_before = pool.batch(
        [
            block_call(block, full=True),
            balance_call(wallet, block),
            balance_call(wallet, block - 1),
            balance_call(callee, block),
            balance_call(callee, block - 1),
        ]
    )
    txs = full.get("transactions", []) if isinstance(full, dict) else []
    to_callee = [t for t in txs if isinstance(t, dict) and same(t.get("to"), callee)]
    if len(to_callee) != 1:
        raise Refused(
            f"block {block} holds {len(to_callee)} transactions to {callee}: the balance jump "
            "cannot be attributed to one of them"
        )
    gained = _int(w_after) - _int(w_before) - jump.explained_in_block
    amount = min(gained, jump.unexplained)
    outflow = _int(c_before) + _int(tx.get("value", "0x0")) - _int(c_after)
    if amount <= 0 or outflow < amount:
        raise Refused(
            f"{to_checksum_address(callee)} lost {outflow} wei in block {block}: that does not "
            f"explain the wallet's unexplained {amount} wei"
        )
    return str(to_checksum_address(callee)), amount
