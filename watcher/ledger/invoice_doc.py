"""The invoice a consultant sends: what the printable document says, read from the ledger.

A settled invoice has a frozen proof; the document is then that proof's receipt instead.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.domain.cycles import period_in_run
from watcher.domain.money import format_amount
from watcher.ids import parse_id
from watcher.ledger import queries
from watcher.ledger.payloads import approval_doc
from watcher.ledger.proof import load_proof
from watcher.store.outbox import iso
from watcher.store.tables import Approval, Cycle, Invoice, Retainer


def invoice_document(engine: Engine, ref: str) -> dict[str, Any]:
    """``{"proof": bundle}`` for a settled invoice, else the invoice with its retainer, the
    approval it was issued under (terms and who approved them when) and its period."""
    row = queries.invoice(engine, ref)  # NotFound (exit 2) for an unknown invoice
    if row["status"] in ("paid", "paid_late"):
        return {"proof": load_proof(engine, ref)}
    with Session(engine) as session:
        invoice = session.get(Invoice, parse_id(ref, "INV"))
        assert invoice is not None
        retainer = session.get(Retainer, invoice.retainer_id)
        assert retainer is not None
        approval = session.get(Approval, invoice.approval_id) if invoice.approval_id else None
        terms: dict[str, Any] = json.loads(approval.terms_json) if approval else {}
        period = _period(session, invoice, retainer)
    if terms.get("monthly_base_units") is not None:
        terms["monthly"] = format_amount(int(terms["monthly_base_units"]), invoice.decimals)
    return {
        "invoice": row,
        "retainer": {
            "id": row["retainer_id"],
            "client": retainer.client,
            "start_at": iso(retainer.start_at),
        },
        "approval": approval_doc(approval),
        "terms": terms,
        "period": period,
    }


def _period(session: Session, invoice: Invoice, retainer: Retainer) -> dict[str, Any]:
    """The month the invoice pays for: known dates for a renewal of a running month, else
    when it starts (the payment's time, not before the retainer's start)."""
    if invoice.kind == "sprint" or invoice.period_index is None:
        return {"kind": "sprint", "index": None, "starts_at": None, "ends_at": None}
    previous = session.exec(
        select(Cycle)
        .where(Cycle.retainer_id == retainer.id, Cycle.period_index == invoice.period_index - 1)
        .order_by(col(Cycle.id).desc())
    ).first()
    if previous is not None and previous.status != "lapsed":
        month = period_in_run(previous.anchor_at, previous.anchor_index, invoice.period_index)
        return {
            "kind": "month",
            "index": invoice.period_index,
            "starts_at": iso(month.starts_at),
            "ends_at": iso(month.ends_at),
        }
    return {
        "kind": "month",
        "index": invoice.period_index,
        "starts_at": None,  # starts when paid, not before the retainer's start
        "ends_at": None,
    }
