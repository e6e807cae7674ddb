"""``invoice attach``: an operator names the transfer that pays an invoice; it is checked on chain.

Checks, each refusing with exit 3 and nothing written: the transaction exists on the invoice's
chain and succeeded, it pays the receiving wallet, in the invoice's asset, and the transfer is
not allocated to another invoice. Then it is allocated; it still waits for finality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from eth_utils import to_checksum_address
from sqlmodel import select

from watcher.chain.findings import block_time, transfer_uid
from watcher.chain.online import read_decimals
from watcher.chain.rpc import RpcPool
from watcher.chain.sources import (
    TRANSFER_TOPIC,
    address_topic,
    block_call,
    decode_amount,
    parse_block,
    quantity,
    same,
)
from watcher.domain.addresses import parse_tx_hash
from watcher.errors import BadInput, Refused, WatcherError
from watcher.ids import fmt_id
from watcher.ledger import attribution, token_decimals
from watcher.ledger.context import Context
from watcher.ledger.invoices import get_invoice
from watcher.ledger.settlement import Settlement
from watcher.settings import ChainSettings
from watcher.store.db import read_session, transaction
from watcher.store.tables import Allocation, Attachment, Invoice, Transfer


@dataclass(frozen=True)
class Found:
    kind: str
    log_index: int | None
    from_address: str
    amount: int
    attribution: str | None = None  # "balance": an internal payment seen only by the guard


def _find_on_chain(
    chain: ChainSettings,
    invoice: Invoice,
    tx: Mapping[str, Any],
    receipt: Mapping[str, Any],
    log_index: int | None,
    known: list[Transfer],
    attribute: Callable[[], tuple[str, int]] | None = None,
) -> Found:
    wallet = chain.receiving_address
    inv = fmt_id("INV", invoice.id)
    if invoice.token_address is not None:
        wallet_topic = address_topic(wallet)
        logs = [
            lg
            for lg in receipt.get("logs", [])
            if len(lg.get("topics", [])) == 3
            and str(lg["topics"][0]).lower() == TRANSFER_TOPIC
            and str(lg["topics"][2]).lower() == wallet_topic
        ]
        ours = [lg for lg in logs if same(lg.get("address"), invoice.token_address)]
        if log_index is not None:
            ours = [lg for lg in ours if quantity(lg["logIndex"]) == log_index]
        if not ours:
            if logs:
                raise Refused(
                    f"transaction pays the wallet in another token, not {invoice.asset} ({inv})"
                )
            if quantity(tx.get("value", "0x0")) > 0 and same(tx.get("to"), wallet):
                raise Refused(f"transaction pays native coin, not {invoice.asset} ({inv})")
            where = f" at log index {log_index}" if log_index is not None else ""
            raise Refused(f"transaction has no {invoice.asset} transfer to {wallet}{where}")
        if len(ours) > 1:
            indexes = ", ".join(str(quantity(lg["logIndex"])) for lg in ours)
            raise BadInput(
                f"transaction has several transfers to the wallet: pass --log-index "
                f"(one of {indexes})"
            )
        lg = ours[0]
        amount = decode_amount(lg.get("data"))
        if amount is None or amount == 0:
            raise Refused("the token transfer moves nothing")
        sender = "0x" + str(lg["topics"][1])[-40:]
        return Found("erc20", quantity(lg["logIndex"]), to_checksum_address(sender), amount)
    # native: a top-level transfer, or an internal one the scanner already found
    internal = [t for t in known if t.kind == "internal"]
    if same(tx.get("to"), wallet) and quantity(tx.get("value", "0x0")) > 0 and log_index is None:
        return Found("native", None, to_checksum_address(tx["from"]), quantity(tx["value"]))
    if internal:
        pick = [t for t in internal if log_index is None or t.log_index == log_index]
        if len(pick) == 1:
            return Found("internal", pick[0].log_index, pick[0].from_address, pick[0].amount)
        if len(pick) > 1:
            raise BadInput("transaction has several internal transfers: pass --log-index")
    if any(
        len(lg.get("topics", [])) == 3
        and str(lg["topics"][0]).lower() == TRANSFER_TOPIC
        and str(lg["topics"][2]).lower() == address_topic(wallet)
        for lg in receipt.get("logs", [])
    ):
        raise Refused(f"transaction pays a token, not {invoice.asset} ({inv})")
    if attribute is not None and log_index is None:  # the balance guard located a jump here
        sender, amount = attribute()
        return Found("internal", None, sender, amount, attribution=attribution.BALANCE)
    raise Refused(
        f"transaction does not send {invoice.asset} to {wallet} (internal transfers are "
        "accepted once the scanner has seen them, or once the balance guard located an "
        "unexplained jump in its block)"
    )


def attach(ctx: Context, invoice_ref: str, tx_ref: str, log_index: int | None = None) -> Transfer:
    """Verify ``tx_ref`` on the invoice's chain and allocate it to the invoice."""
    tx_hash = parse_tx_hash(tx_ref)
    if log_index is not None and log_index < 0:
        raise BadInput(f"log index {log_index!r} must be >= 0")
    with transaction(ctx.engine) as session:
        invoice = get_invoice(session, invoice_ref)
        _check_invoice(invoice)
        known = list(
            session.exec(
                select(Transfer).where(
                    Transfer.chain_id == invoice.chain_id, Transfer.tx_hash == tx_hash
                )
            ).all()
        )
    chain = ctx.settings.chain(invoice.chain)
    pool = RpcPool(
        chain.rpc_urls,
        chain=chain.name,
        expected_chain_id=chain.chain_id,
        timeout=chain.rpc_timeout,
    )
    tx, receipt = pool.batch(
        [("eth_getTransactionByHash", [tx_hash]), ("eth_getTransactionReceipt", [tx_hash])]
    )
    if tx is None:
        raise Refused(f"transaction {tx_hash} not found on chain {chain.name}")
    if receipt is None:
        raise Refused(f"transaction {tx_hash} is not mined yet")
    if quantity(receipt.get("status", "0x0")) != 1:
        raise Refused(f"transaction {tx_hash} reverted (status 0): it moved nothing")
    attribute = None
    if invoice.token_address is None:
        with read_session(ctx.engine) as session:
            jump = attribution.located_jump(session, chain, quantity(receipt["blockNumber"]))
        if jump is not None:
            attribute = partial(attribution.attributed_amount, pool, chain, tx, jump)
    found = _find_on_chain(chain, invoice, tx, receipt, log_index, known, attribute)
    mined_at = _block_time(pool, receipt)
    uid = transfer_uid(invoice.chain_id, tx_hash, found.kind, found.log_index)
    # Read before the write transaction: the proof frozen if this settles the invoice
    # records the token's decimals as the chain reports them.
    decimals = _decimals_on_chain(pool, invoice.token_address)
    token = next((t for t in chain.tokens if t.address == invoice.token_address), None)
    if token is not None and decimals is not None and decimals != token.decimals:
        raise Refused(token_decimals.mismatch_reason(chain.name, token, decimals))
    settlement = Settlement(ctx.settings, ctx.now, token_decimals=lambda _c, _t: decimals)
    with transaction(ctx.engine) as session:
        invoice = get_invoice(session, invoice_ref)
        _check_invoice(invoice)
        reason = token_decimals.mismatch(session, ctx.settings, chain.name, invoice.token_address)
        if reason is not None:
            raise Refused(reason)
        if token is not None and decimals is not None:
            token_decimals.record(session, chain, token.address, decimals, ctx.now())
        transfer = session.exec(select(Transfer).where(Transfer.uid == uid)).first()
        if transfer is not None and transfer.status == "orphaned":
            raise Refused(f"transfer {tx_hash} was orphaned by a reorg; it is not on the chain")
        if transfer is not None and transfer.id is not None:
            taken = session.exec(
                select(Allocation).where(Allocation.transfer_id == transfer.id, Allocation.active)
            ).first()
            if taken is not None:
                raise Refused(
                    f"transaction {tx_hash} is already allocated to "
                    f"{fmt_id('INV', taken.invoice_id)}"
                )
        if transfer is None:
            transfer = Transfer(
                uid=uid,
                chain=chain.name,
                chain_id=chain.chain_id,
                kind=found.kind,
                tx_hash=tx_hash,
                log_index=found.log_index,
                block_number=quantity(receipt["blockNumber"]),
                block_hash=str(receipt["blockHash"]).lower(),
                block_time=mined_at,
                from_address=found.from_address,
                to_address=chain.receiving_address,
                asset=invoice.asset,
                token_address=invoice.token_address,
                decimals=invoice.decimals,
                amount=found.amount,
                attribution=found.attribution,
                status="seen",
                detected_at=ctx.now(),
            )
            session.add(transfer)
            session.flush()
        session.add(
            Attachment(
                invoice_id=invoice.id or 0,
                chain_id=invoice.chain_id,
                tx_hash=tx_hash,
                log_index=found.log_index,
                created_at=ctx.now(),
            )
        )
        settlement.attach(session, transfer, invoice)
        return transfer


def _block_time(pool: RpcPool, receipt: Mapping[str, Any]) -> datetime:
    """The timestamp of the receipt's block: the payment's time for every deadline."""
    number = quantity(receipt["blockNumber"])
    block = pool.batch([block_call(number)])[0]
    parsed = parse_block(block, number)
    if not same(parsed.hash, receipt.get("blockHash")) or parsed.timestamp is None:
        raise WatcherError(f"block {number} changed while reading it: try again")
    when = block_time(parsed.timestamp)
    assert when is not None
    return when


def _decimals_on_chain(pool: RpcPool, token: str | None) -> int | None:
    """The token's ``decimals()`` (None for the native coin, or if the node cannot say)."""
    if token is None:
        return None
    try:
        return read_decimals(pool, token)
    except WatcherError:
        return None


def _check_invoice(invoice: Invoice) -> None:
    if invoice.status in {"paid", "paid_late", "void"}:
        raise Refused(f"{fmt_id('INV', invoice.id)} is {invoice.status}: nothing to attach")
