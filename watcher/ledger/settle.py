"""Final payments settle invoices: coverage recomputed, the proof written, the cycle opened.

Every method runs inside the caller's transaction (the scanner's, or ``tick``'s), so a state
change and the events it causes commit together. Running any of it twice changes nothing:
events are keyed by a dedupe key, proofs written once, a cycle opened once per invoice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlmodel import Session, col, select

from watcher.domain import cycles as cycle_rules
from watcher.domain import matching
from watcher.domain.billing import SETTLED, InvoiceKind, InvoiceStatus, RetainerStatus
from watcher.domain.money import format_amount
from watcher.errors import WatcherError
from watcher.ids import fmt_id
from watcher.ledger import payloads, token_decimals
from watcher.ledger.payloads import DecimalsReader, explorer_tx_url
from watcher.settings import Settings
from watcher.store.outbox import emit, iso
from watcher.store.tables import Allocation, Cycle, Invoice, Proof, Retainer, Review, Transfer

log = structlog.get_logger("watcher.settlement")


def paid_at(t: Transfer) -> datetime:
    """A payment's time for every deadline: its block's timestamp (the detection time only for
    rows stored before schema 4, which have none)."""
    return t.block_time or t.detected_at


def active_payments(session: Session, invoice_id: int) -> list[Transfer]:
    return list(
        session.exec(
            select(Transfer)
            .join(Allocation, col(Allocation.transfer_id) == col(Transfer.id))
            .where(Allocation.invoice_id == invoice_id, Allocation.active)
            .where(Transfer.status != "orphaned")
            .order_by(col(Transfer.block_number), col(Transfer.id))
        ).all()
    )


@dataclass
class Settler:
    """Settling for one configuration: final transfers announced, invoices recomputed from
    their payments and settled once covered and final (``Settlement`` adds the matching)."""

    settings: Settings
    now: Callable[[], datetime]
    token_decimals: DecimalsReader | None = None

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        """Final transfers: tell the world, and settle the invoices they complete."""
        touched: set[int] = set()
        ids = [t.id for t in transfers if t.id is not None]
        invoice_of = dict(
            session.exec(
                select(Allocation.transfer_id, Allocation.invoice_id).where(
                    col(Allocation.transfer_id).in_(ids), Allocation.active
                )
            ).all()
        )
        for transfer in transfers:
            invoice_id = invoice_of.get(transfer.id or 0)
            if invoice_id is None:
                continue
            self._emit_finalized(session, transfer, invoice_id)
            touched.add(invoice_id)
        for invoice_id in sorted(touched):
            self.refresh(session, invoice_id)

    def _emit_finalized(self, session: Session, transfer: Transfer, invoice_id: int) -> None:
        emit(
            session,
            "payment.finalized",
            self._transfer_data(transfer, invoice_id=invoice_id),
            dedupe_key=f"payment.finalized:{transfer.uid}",
            now=self.now(),
        )

    # --- invoice state -------------------------------------------------------------------

    def refresh(self, session: Session, invoice_id: int) -> Invoice:
        """Recompute an invoice from its allocated payments; settle it when covered and final."""
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            raise WatcherError(f"invoice {fmt_id('INV', invoice_id)} vanished during settlement")
        if invoice.status in SETTLED or invoice.status == InvoiceStatus.VOID:
            return invoice
        if token_decimals.mismatch(session, self.settings, invoice.chain, invoice.token_address):
            return invoice  # amounts of that token mean nothing until the config is fixed
        payments = active_payments(session, invoice_id)
        open_reviews = session.exec(
            select(Review.reason)
            .where(Review.invoice_id == invoice_id, col(Review.cleared_at).is_(None))
            .order_by(col(Review.created_at).desc())
        ).all()
        invoice.review_reason = open_reviews[0] if open_reviews else None
        if open_reviews:
            current = InvoiceStatus.NEEDS_REVIEW
        elif invoice.status == InvoiceStatus.NEEDS_REVIEW:
            current = InvoiceStatus.OPEN  # review cleared: the renewal round may expire it
        else:
            current = InvoiceStatus(invoice.status)
        result = matching.coverage(
            price=invoice.price,
            amount=invoice.amount,
            due_at=invoice.due_at,
            payments=[matching.Paid(t.amount, t.status == "final", paid_at(t)) for t in payments],
            tolerance=self.settings.billing.underpay_tolerance,
            current=current,
            expired=invoice.status == InvoiceStatus.EXPIRED,
        )
        invoice.paid_amount = result.paid_amount
        invoice.overpaid_by = result.overpaid_by
        previous = invoice.status
        invoice.status = result.status.value
        session.add(invoice)
        if result.status in SETTLED:
            assert result.covered_at is not None
            self._settle(session, invoice, payments, late=result.late, paid_at=result.covered_at)
        elif (
            result.status == InvoiceStatus.UNDERPAID
            and payments
            and all(t.status == "final" for t in payments)
        ):
            emit(
                session,
                "invoice.underpaid",
                {
                    **self._invoice_data(session, invoice),
                    "missing": format_amount(
                        matching.covered_threshold(
                            invoice.price, self.settings.billing.underpay_tolerance
                        )
                        - result.paid_amount,
                        invoice.decimals,
                    ),
                },
                dedupe_key=f"invoice.underpaid:{invoice.id}:{result.paid_amount}",
                now=self.now(),
            )
        if previous != invoice.status:
            log.info(
                "invoice.status",
                invoice=fmt_id("INV", invoice.id),
                old=previous,
                new=invoice.status,
            )
        session.flush()
        return invoice

    def _settle(
        self,
        session: Session,
        invoice: Invoice,
        payments: list[Transfer],
        *,
        late: bool,
        paid_at: datetime,
    ) -> None:
        """``paid_at``: the block time of the payment that completed coverage, which is the
        invoice's ``paid_at`` and month 1's earliest start."""
        now = self.now()
        invoice.paid_at = paid_at
        cycle = None
        if invoice.kind != InvoiceKind.SPRINT:
            cycle = self._open_cycle(session, invoice, payments, paid_at)
            invoice.cycle_id = cycle.id
        session.add(invoice)
        session.flush()
        bundle = self.proof_bundle(session, invoice, payments, cycle)
        if session.get(Proof, invoice.id) is None:
            session.add(
                Proof(
                    invoice_id=invoice.id or 0,
                    bundle=json.dumps(bundle, sort_keys=True, separators=(",", ":")),
                    created_at=now,
                )
            )
        if late:
            emit(
                session,
                "invoice.paid_late",
                self._invoice_data(session, invoice),
                dedupe_key=f"invoice.paid_late:{invoice.id}",
                now=now,
            )
        log.info(
            "invoice.settled",
            invoice=fmt_id("INV", invoice.id),
            status=invoice.status,
            cycle=fmt_id("CYC", cycle.id if cycle else None),
        )

    def _open_cycle(
        self, session: Session, invoice: Invoice, payments: list[Transfer], paid_at: datetime
    ) -> Cycle:
        existing = session.exec(select(Cycle).where(Cycle.funded_by_invoice == invoice.id)).first()
        if existing is not None:
            return existing
        retainer = session.get(Retainer, invoice.retainer_id)
        assert retainer is not None
        last = session.exec(
            select(Cycle)
            .where(Cycle.retainer_id == retainer.id)
            .order_by(col(Cycle.period_index).desc())
        ).first()
        previous = None
        if last is not None:
            previous = cycle_rules.PreviousCycle(
                period_index=last.period_index,
                anchor_at=last.anchor_at,
                anchor_index=last.anchor_index,
                ends_at=last.ends_at,
                lapsed=last.status == "lapsed"
                or retainer.status == RetainerStatus.LAPSED
                or cycle_rules.lapsed(last.ends_at, self.settings.billing.grace_days, paid_at),
            )
        period = cycle_rules.next_period(
            period_index=invoice.period_index or 1,
            previous=previous,
            retainer_start=retainer.start_at,
            paid_at=paid_at,
        )
        proof_tx = max(payments, key=lambda t: (t.block_number, t.id or 0)).tx_hash
        cycle = Cycle(
            retainer_id=retainer.id or 0,
            period_index=period.period_index,
            anchor_at=period.anchor_at,
            anchor_index=period.anchor_index,
            starts_at=period.starts_at,
            ends_at=period.ends_at,
            status="open",
            funded_by_invoice=invoice.id,
            proof_tx_hash=proof_tx,
        )
        session.add(cycle)
        retainer.status = RetainerStatus.ACTIVE.value
        session.add(retainer)
        session.flush()
        tx = payments[-1]
        emit(
            session,
            "cycle.opened",
            {
                "retainer_id": fmt_id("RET", retainer.id),
                "client": retainer.client,
                "cycle_id": fmt_id("CYC", cycle.id),
                "period_index": cycle.period_index,
                "starts_at": iso(cycle.starts_at),
                "ends_at": iso(cycle.ends_at),
                "invoice_id": fmt_id("INV", invoice.id),
                "amount": format_amount(invoice.paid_amount, invoice.decimals),
                "amount_base_units": str(invoice.paid_amount),
                "asset": invoice.asset,
                "chain": invoice.chain,
                "chain_id": invoice.chain_id,
                "tx_hash": proof_tx,
                "block_number": tx.block_number,
                "explorer_tx_url": explorer_tx_url(self.settings, invoice.chain, proof_tx),
            },
            dedupe_key=f"cycle.opened:{fmt_id('CYC', cycle.id)}",
            now=self.now(),
        )
        log.info(
            "cycle.opened",
            cycle=fmt_id("CYC", cycle.id),
            retainer=fmt_id("RET", retainer.id),
            month=cycle.period_index,
        )
        return cycle

    # --- event payloads and proof (``watcher.ledger.payloads``) ----------------------------

    def proof_bundle(
        self, session: Session, invoice: Invoice, payments: Iterable[Transfer], cycle: Cycle | None
    ) -> dict[str, Any]:
        return payloads.proof_bundle(
            self.settings, session, invoice, payments, cycle, self.token_decimals
        )

    def _transfer_data(self, t: Transfer, *, invoice_id: int | None = None) -> dict[str, Any]:
        return payloads.transfer_data(self.settings, t, invoice_id=invoice_id)

    def _invoice_data(self, session: Session, invoice: Invoice) -> dict[str, Any]:
        return payloads.invoice_data(session, invoice)
