"""Settlement: inflows become payments of invoices; final payments settle them and open cycles.

Every function here runs inside the caller's transaction (the scanner's, or ``tick``'s), so a
state change and the events it causes commit together. Running any of it twice changes
nothing: allocations are keyed by transfer, events by a dedupe key, proofs written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlmodel import Session, col, or_, select

from watcher import token_decimals
from watcher.domain import cycles as cycle_rules
from watcher.domain import matching
from watcher.domain.billing import SETTLED, UNSETTLED, InvoiceKind, InvoiceStatus, RetainerStatus
from watcher.domain.money import format_amount
from watcher.errors import WatcherError
from watcher.ids import fmt_id
from watcher.proof_schema import SCHEMA_VERSION
from watcher.settings import Settings
from watcher.store.outbox import emit, emit_many, iso
from watcher.store.tables import (
    Allocation,
    Approval,
    Attachment,
    Cycle,
    Invoice,
    Proof,
    Retainer,
    Review,
    Transfer,
)

log = structlog.get_logger("watcher.settlement")
T = TypeVar("T")

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


def paid_at(t: Transfer) -> datetime:
    """A payment's time for every deadline: its block's timestamp (the detection time only for
    rows stored before schema 4, which have none)."""
    return t.block_time or t.detected_at


def _active_payments(session: Session, invoice_id: int) -> list[Transfer]:
    return list(
        session.exec(
            select(Transfer)
            .join(Allocation, col(Allocation.transfer_id) == col(Transfer.id))
            .where(Allocation.invoice_id == invoice_id, Allocation.active)
            .where(Transfer.status != "orphaned")
            .order_by(col(Transfer.block_number), col(Transfer.id))
        ).all()
    )


def _batches(values: list[T], size: int = 500) -> Iterator[list[T]]:
    """``values`` in slices that stay far below SQLite's limit of bound parameters."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _funded_by_invoice(session: Session, invoice_ids: list[int]) -> dict[int, int]:
    """What each invoice already has allocated (orphaned transfers excluded): one query."""
    funded = dict.fromkeys(invoice_ids, 0)
    if not invoice_ids:
        return funded
    rows = session.exec(
        select(Allocation.invoice_id, Transfer.amount)
        .join(Transfer, col(Allocation.transfer_id) == col(Transfer.id))
        .where(col(Allocation.invoice_id).in_(invoice_ids), Allocation.active)
        .where(Transfer.status != "orphaned")
    ).all()
    for invoice_id, amount in rows:
        funded[invoice_id] += amount
    return funded


def _allocated_ids(session: Session, transfer_ids: list[int]) -> set[int]:
    """Which of these transfers already fund an invoice: one query."""
    if not transfer_ids:
        return set()
    rows = session.exec(
        select(Allocation.transfer_id).where(
            col(Allocation.transfer_id).in_(transfer_ids), Allocation.active
        )
    ).all()
    return set(rows)


def _active_allocation(session: Session, transfer_id: int) -> Allocation | None:
    return session.exec(
        select(Allocation).where(Allocation.transfer_id == transfer_id, Allocation.active)
    ).first()


@dataclass
class Settlement:
    """The scanner's hooks plus the settlement and renewal rounds, for one configuration."""

    settings: Settings
    now: Callable[[], datetime]
    token_decimals: DecimalsReader | None = None

    # --- scanner hooks (called inside the scanner's transaction) ---------------------------

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        """Match newly seen inflows to invoices: allocate, flag for review, or report unassigned."""
        fresh = [t for t in transfers if t.status != "orphaned" and not self._untrusted(session, t)]
        if not fresh:
            return
        allocated = _allocated_ids(session, [t.id for t in fresh if t.id is not None])
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
        taken = _allocated_ids(session, ids)
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
        mine = {t.id for t in _active_payments(session, invoice.id)}
        early = [t for t in waiting if t.id in mine]
        if early:
            log.info(
                "invoice.early_payments",
                invoice=fmt_id("INV", invoice.id),
                txs=[t.tx_hash for t in early],
            )
        return early

    def _untrusted(self, session: Session, transfer: Transfer) -> bool:
        """A transfer of a token whose configured decimals disagree with the chain's is never
        counted (left unassigned; the alert was raised when the mismatch was read)."""
        reason = token_decimals.mismatch(
            session, self.settings, transfer.chain, transfer.token_address
        )
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
            allocation = _active_allocation(session, transfer.id)
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

    # --- allocation ----------------------------------------------------------------------

    def _match(self, session: Session, transfers: list[Transfer]) -> list[matching.Allocation]:
        """The matcher's verdict on each of ``transfers`` (none of them allocated yet)."""
        if not transfers:
            return []
        candidates, retainers_of = self._candidates(session, transfers)
        funded = _funded_by_invoice(session, [c.id for c in candidates])
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
        for amount_part in _batches(amounts):
            queries.append(by_key.where(col(Invoice.amount).in_(amount_part)))
        for tx_part in _batches(txs):
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
        payments = _active_payments(session, invoice_id)
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

    # --- proof ---------------------------------------------------------------------------

    def proof_bundle(
        self, session: Session, invoice: Invoice, payments: Iterable[Transfer], cycle: Cycle | None
    ) -> dict[str, Any]:
        retainer = session.get(Retainer, invoice.retainer_id)
        approval = session.get(Approval, invoice.approval_id) if invoice.approval_id else None
        assert retainer is not None
        chain = next((c for c in self.settings.chains if c.name == invoice.chain), None)
        decimals_on_chain: int | None = invoice.decimals if invoice.token_address is None else None
        if invoice.token_address and self.token_decimals is not None:
            decimals_on_chain = self.token_decimals(invoice.chain, invoice.token_address)
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
                    "from": t.from_address,
                    "to": t.to_address,
                    "asset": t.asset,
                    "token_address": t.token_address,
                    "amount": format_amount(t.amount, t.decimals),
                    "amount_base_units": str(t.amount),
                    "detected_at": iso(t.detected_at),
                    "finalized_at": iso(t.finalized_at),
                    "explorer_tx_url": explorer_tx_url(self.settings, t.chain, t.tx_hash),
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

    # --- event payloads ------------------------------------------------------------------

    def _transfer_data(self, t: Transfer, *, invoice_id: int | None = None) -> dict[str, Any]:
        return {
            "chain": t.chain,
            "chain_id": t.chain_id,
            "tx_hash": t.tx_hash,
            "log_index": t.log_index,
            "block_number": t.block_number,
            "block_hash": t.block_hash,
            "block_time": iso(t.block_time),
            "from": t.from_address,
            "to": t.to_address,
            "asset": t.asset,
            "token_address": t.token_address,
            "amount": format_amount(t.amount, t.decimals),
            "amount_base_units": str(t.amount),
            "status": t.status,
            "invoice_id": fmt_id("INV", invoice_id),
            "explorer_tx_url": explorer_tx_url(self.settings, t.chain, t.tx_hash),
        }

    def _invoice_data(self, session: Session, invoice: Invoice) -> dict[str, Any]:
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
