"""What settlement writes out: event payloads and the proof bundle, built from stored rows.

Pure functions of rows and settings: no queries beyond reading the rows they are given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from sqlmodel import Session

from watcher.domain.money import format_amount
from watcher.ids import fmt_id
from watcher.schemas.proof import SCHEMA_VERSION
from watcher.settings import Settings
from watcher.store.outbox import iso
from watcher.store.tables import Approval, Cycle, Invoice, Retainer, Transfer

#: Token decimals as read on chain: (chain name, token address) -> decimals, or None if unknown.
DecimalsReader = Callable[[str, str], int | None]


def explorer_tx_url(settings: Settings, chain: str, tx_hash: str) -> str | None:
    base = next((c.explorer_url for c in settings.chains if c.name == chain), None)
    return f"{base}/tx/{tx_hash}" if base else None


def approval_doc(approval: Approval | None) -> dict[str, Any] | None:
    """Who approved the terms and when, as the proof and the invoice document show it."""
    if approval is None:
        return None
    return {
        "approved_by": approval.approved_by,
        "approved_at": iso(approval.approved_at),
        "note": approval.note,
        "terms_hash": approval.terms_hash,
    }


def proof_bundle(
    settings: Settings,
    session: Session,
    invoice: Invoice,
    payments: Iterable[Transfer],
    cycle: Cycle | None,
    token_decimals: DecimalsReader | None,
) -> dict[str, Any]:
    """The proof bundle (``proof-v1``) of a settled ``invoice`` paid by ``payments``."""
    retainer = session.get(Retainer, invoice.retainer_id)
    approval = session.get(Approval, invoice.approval_id) if invoice.approval_id else None
    assert retainer is not None
    chain = next((c for c in settings.chains if c.name == invoice.chain), None)
    decimals_on_chain: int | None = invoice.decimals if invoice.token_address is None else None
    if invoice.token_address and token_decimals is not None:
        decimals_on_chain = token_decimals(invoice.chain, invoice.token_address)
    return {
        "schema": SCHEMA_VERSION,
        "invoice": {
            "id": fmt_id("INV", invoice.id),
            "kind": invoice.kind,
            "period_index": invoice.period_index,
            "status": invoice.status,
            "price": format_amount(invoice.price, invoice.decimals),
            "amount": format_amount(invoice.amount, invoice.decimals),
            "amount_base_units": str(invoice.amount),
            "paid_amount": format_amount(invoice.paid_amount, invoice.decimals),
            "paid_amount_base_units": str(invoice.paid_amount),
            "overpaid_by": format_amount(invoice.overpaid_by, invoice.decimals),
            "issued_at": iso(invoice.issued_at),
            "due_at": iso(invoice.due_at),
            "paid_at": iso(invoice.paid_at),
            "pay_to": invoice.pay_to,
        },
        "retainer": {
            "id": fmt_id("RET", retainer.id),
            "client": retainer.client,
            "scope": retainer.scope,
            "terms_hash": invoice.terms_hash,
            "terms": json.loads(approval.terms_json) if approval else None,
            "approval": approval_doc(approval),
        },
        "chain": {
            "name": invoice.chain,
            "chain_id": invoice.chain_id,
            "explorer_url": chain.explorer_url if chain else None,
        },
        "asset": {
            "symbol": invoice.asset,
            "token_address": invoice.token_address,
            "decimals": invoice.decimals,
            "decimals_on_chain": decimals_on_chain,
        },
        "payments": [
            {
                "chain_id": t.chain_id,
                "tx_hash": t.tx_hash,
                "log_index": t.log_index,
                "kind": t.kind,
                "attribution": t.attribution,
                "block_number": t.block_number,
                "block_hash": t.block_hash,
                "block_time": iso(t.block_time),
                "final_block": t.final_block,
                **_flow(t),
                "detected_at": iso(t.detected_at),
                "finalized_at": iso(t.finalized_at),
                "explorer_tx_url": explorer_tx_url(settings, t.chain, t.tx_hash),
            }
            for t in payments
        ],
        "cycle": None
        if cycle is None
        else {
            "id": fmt_id("CYC", cycle.id),
            "period_index": cycle.period_index,
            "starts_at": iso(cycle.starts_at),
            "ends_at": iso(cycle.ends_at),
        },
    }


def transfer_data(
    settings: Settings, t: Transfer, *, invoice_id: int | None = None
) -> dict[str, Any]:
    """The payload of a transfer event (``payment.*``, ``transfer.unassigned``)."""
    return {
        "chain": t.chain,
        "chain_id": t.chain_id,
        "tx_hash": t.tx_hash,
        "log_index": t.log_index,
        "block_number": t.block_number,
        "block_hash": t.block_hash,
        "block_time": iso(t.block_time),
        **_flow(t),
        "status": t.status,
        "invoice_id": fmt_id("INV", invoice_id),
        "explorer_tx_url": explorer_tx_url(settings, t.chain, t.tx_hash),
    }


def invoice_data(session: Session, invoice: Invoice) -> dict[str, Any]:
    """The payload of an invoice event (``invoice.paid_late``, ``invoice.underpaid``)."""
    retainer = session.get(Retainer, invoice.retainer_id)
    return {
        "invoice_id": fmt_id("INV", invoice.id),
        "retainer_id": fmt_id("RET", invoice.retainer_id),
        "client": retainer.client if retainer else None,
        "kind": invoice.kind,
        "period_index": invoice.period_index,
        "chain": invoice.chain,
        "asset": invoice.asset,
        "price": format_amount(invoice.price, invoice.decimals),
        "amount": format_amount(invoice.amount, invoice.decimals),
        "paid_amount": format_amount(invoice.paid_amount, invoice.decimals),
        "status": invoice.status,
        "due_at": iso(invoice.due_at),
        "cycle_id": fmt_id("CYC", invoice.cycle_id),
    }


def _flow(t: Transfer) -> dict[str, Any]:
    """Who paid whom how much, in the key order every payload lists them."""
    return {
        "from": t.from_address,
        "to": t.to_address,
        "asset": t.asset,
        "token_address": t.token_address,
        "amount": format_amount(t.amount, t.decimals),
        "amount_base_units": str(t.amount),
    }
