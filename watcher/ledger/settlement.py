"""Settlement: inflows become payments of invoices; final payments settle them and open cycles.

This module matches inflows to invoices (allocations, reviews, unassigned reports); what is
covered and final is settled by ``watcher.ledger.settle`` and the payloads are built in
``watcher.ledger.payloads``. Every function here runs inside the caller's transaction (the
scanner's, or ``tick``'s), so a state change and the events it causes commit together.
Running any of it twice changes nothing: allocations are keyed by transfer, events by a
dedupe key, proofs written once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import structlog
from sqlmodel import Session, col, or_, select

from watcher.domain import matching
from watcher.domain.billing import SETTLED, UNSETTLED, InvoiceStatus
from watcher.ids import fmt_id
from watcher.ledger import token_decimals
from watcher.ledger.allocations import active_allocation, allocated_ids, batches, funded_by_invoice
from watcher.ledger.settle import Settler, active_payments
from watcher.store.outbox import emit, emit_many
from watcher.store.tables import (
    Allocation,
    Attachment,
    Invoice,
    Retainer,
    Review,
    Transfer,
)

log = structlog.get_logger("watcher.settlement")
Reasons = dict[tuple[str, str | None], str | None]  # (chain, token) -> why not trusted


def _inflow(t: Transfer) -> matching.Inflow:
    return matching.Inflow(
        uid=t.uid,
        chain_id=t.chain_id,
        tx_hash=t.tx_hash,
        log_index=t.log_index,
        block_number=t.block_number,
        from_address=t.from_address,
        to_address=t.to_address,
        asset=t.asset,
        amount=t.amount,
    )


class Settlement(Settler):
    """The scanner's hooks plus the settlement and renewal rounds, for one configuration.

    Here: matching inflows to invoices, allocations and reviews; settling what is covered
    and final is ``Settler``'s (``watcher.ledger.settle``)."""

    # --- scanner hooks (called inside the scanner's transaction) ---------------------------

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        """Match newly seen inflows to invoices: allocate, flag for review, or report unassigned."""
        memo: Reasons = {}  # the stored decimals looked up once per token, not per transfer
        fresh = [t for t in transfers if t.status != "orphaned"]
        fresh = [t for t in fresh if not self._untrusted(session, t, memo)]
        if not fresh:
            return
        allocated = allocated_ids(session, [t.id for t in fresh if t.id is not None])
        self._apply(session, [t for t in fresh if t.id is not None and t.id not in allocated])

    def _apply(self, session: Session, transfers: list[Transfer], *, early: bool = False) -> None:
        """Match ``transfers`` (none allocated yet) and record the verdicts: allocations,
        reviews and ``transfer.unassigned`` events; then recompute the invoices they fund.

        ``early``: transfers seen before (matched again when an invoice is issued): they were
        reported unassigned then, and those already final are announced final now."""
        results = self._match(session, transfers)
        by_uid = {t.uid: t for t in transfers}
        touched: set[int] = set()
        unassigned: list[tuple[str, dict[str, Any], str]] = []
        for result in results:
            transfer = by_uid[result.uid]
            target = result.match.invoice_id
            if target is not None:
                self._allocate(session, transfer, target, result.match.rule.value)
                if early and transfer.status == "final":
                    self._emit_finalized(session, transfer, target)
                touched.add(target)
            elif result.match.rule == matching.Rule.REVIEW:
                self._needs_review(session, transfer, result.match)
            elif not early:
                unassigned.append(
                    (
                        "transfer.unassigned",
                        self._transfer_data(transfer),
                        f"transfer.unassigned:{transfer.uid}:{transfer.block_hash}",
                    )
                )
        emit_many(session, unassigned, now=self.now())
        for invoice_id in sorted(touched):
            self.refresh(session, invoice_id)

    def issued(
        self, session: Session, invoice: Invoice, payers: Iterable[str], since: datetime
    ) -> list[Transfer]:
        """A new invoice meets the money that came before it: unassigned transfers of its
        chain, asset and wallet from ``payers`` (the retainer's), seen since ``since`` (the
        retainer's approval), are matched by the usual rules in chain order, inside the
        issuing transaction. Transfers waiting for an operator's review are left to them.
        Returns the transfers now allocated to ``invoice``."""
        senders = sorted(set(payers))
        if not senders or invoice.id is None:
            return []
        rows = list(
            session.exec(
                select(Transfer)
                .where(
                    Transfer.chain_id == invoice.chain_id,
                    Transfer.asset == invoice.asset,
                    Transfer.to_address == invoice.pay_to,
                    col(Transfer.from_address).in_(senders),
                    Transfer.status != "orphaned",
                    or_(
                        col(Transfer.block_time) >= since,
                        col(Transfer.block_time).is_(None) & (col(Transfer.detected_at) >= since),
                    ),
                )
                .order_by(col(Transfer.block_number), col(Transfer.id))
            ).all()
        )
        ids = [t.id for t in rows if t.id is not None]
        taken = allocated_ids(session, ids)
        in_review = set(
            session.exec(
                select(Review.transfer_id).where(
                    col(Review.transfer_id).in_(ids), col(Review.cleared_at).is_(None)
                )
            ).all()
        )
        waiting = [
            t
            for t in rows
            if t.id not in taken and t.id not in in_review and not self._untrusted(session, t)
        ]
        if not waiting:
            return []
        self._apply(session, waiting, early=True)
        session.flush()
        mine = {t.id for t in active_payments(session, invoice.id)}
        early = [t for t in waiting if t.id in mine]
        if early:
            log.info(
                "invoice.early_payments",
                invoice=fmt_id("INV", invoice.id),
                txs=[t.tx_hash for t in early],
            )
        return early

    def _untrusted(self, session: Session, transfer: Transfer, memo: Reasons | None = None) -> bool:
        """A transfer of a token whose configured decimals disagree with the chain's is never
        counted (left unassigned; the alert was raised when the mismatch was read). ``memo``
        keeps the answer per (chain, token) for the other transfers of a batch."""
        key, memo = (transfer.chain, transfer.token_address), {} if memo is None else memo
        if key not in memo:
            memo[key] = token_decimals.mismatch(session, self.settings, *key)
        reason = memo[key]
        if reason is not None:
            log.warning("transfer.not_counted", tx=transfer.tx_hash, reason=reason)
        return reason is not None

    def orphaned(self, session: Session, transfers: list[Transfer]) -> None:
        """Release the allocations of orphaned transfers; their invoices go back to waiting."""
        now = self.now()
        for transfer in transfers:
            if transfer.id is None:
                continue
            self._clear_review(session, transfer)  # an orphaned transfer is nobody's question
            allocation = active_allocation(session, transfer.id)
            if allocation is None:
                continue
            invoice = session.get(Invoice, allocation.invoice_id)
            if invoice is not None and invoice.status in SETTLED:
                # Settled proofs are never rewritten; the scanner reports the violation.
                log.error(
                    "settlement.orphan_of_settled",
                    invoice=fmt_id("INV", invoice.id),
                    tx=transfer.tx_hash,
                )
                continue
            allocation.active = False
            allocation.released_at = now
            session.add(allocation)
            emit(
                session,
                "payment.orphaned",
                self._transfer_data(transfer, invoice_id=allocation.invoice_id),
                dedupe_key=f"payment.orphaned:{transfer.uid}:{transfer.block_hash}",
                now=now,
            )
            session.flush()
            self.refresh(session, allocation.invoice_id)

    # --- allocation ----------------------------------------------------------------------

    def _match(self, session: Session, transfers: list[Transfer]) -> list[matching.Allocation]:
        """The matcher's verdict on each of ``transfers`` (none of them allocated yet)."""
        if not transfers:
            return []
        candidates, retainers_of = self._candidates(session, transfers)
        funded = funded_by_invoice(session, [c.id for c in candidates])
        thresholds = {
            c.id: matching.covered_threshold(c.price, self.settings.billing.underpay_tolerance)
            for c in candidates
        }
        return matching.allocate(
            [_inflow(t) for t in transfers],
            candidates,
            funded,
            threshold=thresholds,
            retainers_of=retainers_of,
        )

    def _candidates(
        self, session: Session, transfers: list[Transfer]
    ) -> tuple[list[matching.Candidate], dict[str, frozenset[int]]]:
        """The unsettled invoices any of ``transfers`` could match: by attached tx hash, by
        amount, or by expected payer; and, for each sender that is an expected payer, every
        retainer listing it. Looked up by those keys, so the cost follows the transfers, not
        the number of open invoices."""
        chain_ids = sorted({t.chain_id for t in transfers})
        unsettled = [s.value for s in UNSETTLED]
        by_key = select(Invoice).where(
            col(Invoice.chain_id).in_(chain_ids), col(Invoice.status).in_(unsettled)
        )
        found: dict[int | None, Invoice] = {}
        amounts = sorted({t.amount for t in transfers})
        txs = sorted({t.tx_hash for t in transfers})
        senders = {t.from_address for t in transfers}
        retainers_of: dict[str, set[int]] = {}
        for r in session.exec(select(Retainer).where(Retainer.payers != "[]")):
            for sender in senders & set(json.loads(r.payers)):
                retainers_of.setdefault(sender, set()).add(r.id or 0)
        payer_retainers = sorted({rid for ids in retainers_of.values() for rid in ids})
        payer_map = {sender: frozenset(ids) for sender, ids in retainers_of.items()}
        queries = [by_key.where(col(Invoice.retainer_id).in_(payer_retainers))]
        for amount_part in batches(amounts):
            queries.append(by_key.where(col(Invoice.amount).in_(amount_part)))
        for tx_part in batches(txs):
            by_tx = select(Attachment.invoice_id).where(col(Attachment.tx_hash).in_(tx_part))
            queries.append(by_key.where(col(Invoice.id).in_(by_tx)))
        for query in queries:
            found.update((i.id, i) for i in session.exec(query))
        invoices = list(found.values())
        if not invoices:
            return [], payer_map
        retainer_ids = sorted({i.retainer_id for i in invoices})
        payers = {
            r.id: frozenset(json.loads(r.payers))
            for r in session.exec(select(Retainer).where(col(Retainer.id).in_(retainer_ids)))
        }
        attached: dict[int, set[tuple[str, int | None]]] = {}
        for a in session.exec(
            select(Attachment).where(col(Attachment.invoice_id).in_([i.id for i in invoices]))
        ):
            attached.setdefault(a.invoice_id, set()).add((a.tx_hash, a.log_index))
        return [
            matching.Candidate(
                id=i.id or 0,
                retainer_id=i.retainer_id,
                chain_id=i.chain_id,
                asset=i.asset,
                pay_to=i.pay_to,
                amount=i.amount,
                price=i.price,
                issued_at=i.issued_at,
                payers=payers.get(i.retainer_id, frozenset()),
                attached=frozenset(attached.get(i.id or 0, set())),
            )
            for i in invoices
        ], payer_map

    def _allocate(self, session: Session, transfer: Transfer, invoice_id: int, rule: str) -> None:
        now = self.now()
        session.add(
            Allocation(
                transfer_id=transfer.id or 0, invoice_id=invoice_id, rule=rule, created_at=now
            )
        )
        session.flush()
        emit(
            session,
            "payment.detected",
            {**self._transfer_data(transfer, invoice_id=invoice_id), "rule": rule},
            dedupe_key=f"payment.detected:{transfer.uid}:{transfer.block_hash}:{invoice_id}",
            now=now,
        )
        log.info(
            "payment.detected",
            invoice=fmt_id("INV", invoice_id),
            tx=transfer.tx_hash,
            block=transfer.block_number,
            rule=rule,
        )

    def attach(self, session: Session, transfer: Transfer, invoice: Invoice) -> None:
        """Allocate an operator-named transfer (already verified on chain) to ``invoice``.

        Only the review this transfer caused is cleared: another ambiguous transfer that
        flagged the same invoice keeps it flagged."""
        self._allocate(session, transfer, invoice.id or 0, matching.Rule.ATTACHED.value)
        if transfer.status == "final":  # attached after the scanner saw it final
            self._emit_finalized(session, transfer, invoice.id or 0)
        self._clear_review(session, transfer)
        session.flush()
        self.refresh(session, invoice.id or 0)

    def _needs_review(self, session: Session, transfer: Transfer, match: matching.Match) -> None:
        """Flag every candidate invoice of an ambiguous transfer, one review row each."""
        names = ", ".join(fmt_id("INV", i) or "" for i in match.invoice_ids)
        reason = f"transfer {transfer.uid} matches {names}"
        if match.why:
            reason += f": {match.why}"
        now = self.now()
        for invoice_id in match.invoice_ids:
            invoice = session.get(Invoice, invoice_id)
            if invoice is None or invoice.status not in UNSETTLED:
                continue
            review = session.get(Review, (transfer.id, invoice_id))
            if review is None:
                review = Review(
                    transfer_id=transfer.id or 0, invoice_id=invoice_id, reason=reason,
                    created_at=now,
                )  # fmt: skip
            review.reason, review.cleared_at = reason, None
            session.add(review)
            invoice.review_reason = reason
            invoice.status = InvoiceStatus.NEEDS_REVIEW.value
            session.add(invoice)
        emit(
            session,
            "invoice.needs_review",
            {
                **self._transfer_data(transfer),
                "candidates": [fmt_id("INV", i) for i in match.invoice_ids],
                "reason": reason,
            },
            dedupe_key=f"invoice.needs_review:{transfer.uid}:{transfer.block_hash}",
            now=now,
        )
        log.warning("invoice.needs_review", transfer=transfer.uid, candidates=names)

    def _clear_review(self, session: Session, transfer: Transfer) -> None:
        """Clear this transfer's reviews only; each invoice it flagged is recomputed."""
        now = self.now()
        for review in session.exec(
            select(Review).where(
                Review.transfer_id == transfer.id, col(Review.cleared_at).is_(None)
            )
        ).all():
            review.cleared_at = now
            session.add(review)
            session.flush()
            self.refresh(session, review.invoice_id)
