"""Which invoice an inflow pays, and what an invoice's payments add up to. Pure rules.

Rules, first that applies wins (DESIGN.md "Matching"):

1. attached: the operator named this transfer for an invoice (``invoice attach``); it still
   has to be on the invoice's chain, in its asset, to its wallet (another transfer of the same
   tx never rides along on an attachment);
2. amount: the inflow equals an unsettled invoice's unique amount (same chain, asset, wallet);
3. payer: the sender is an expected payer of a retainer: the oldest not-yet-covered invoice of
   that retainer in the inflow's asset;
4. otherwise unassigned.

Several candidates at any rule mean ``review``: never a guess. ``allocate`` processes inflows
in canonical chain order, so its result does not depend on the order they arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

from watcher.domain.billing import InvoiceStatus


class Rule(StrEnum):
    ATTACHED = "attached"
    AMOUNT = "amount"
    PAYER = "payer"
    UNASSIGNED = "unassigned"
    REVIEW = "review"


@dataclass(frozen=True, slots=True)
class Inflow:
    """A transfer into a receiving wallet, as the matcher needs to see it."""

    uid: str
    chain_id: int
    tx_hash: str
    log_index: int | None
    block_number: int
    from_address: str
    to_address: str
    asset: str
    amount: int

    @property
    def order(self) -> tuple[int, str, int]:
        return (self.block_number, self.tx_hash, -1 if self.log_index is None else self.log_index)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An invoice that may still receive money."""

    id: int
    retainer_id: int
    chain_id: int
    asset: str
    pay_to: str
    amount: int
    price: int
    issued_at: datetime
    payers: frozenset[str] = frozenset()
    attached: frozenset[tuple[str, int | None]] = frozenset()  # (tx_hash, log_index or None)
    covered: bool = False  # enough already allocated: the payer rule skips it


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    invoice_ids: tuple[int, ...] = ()

    @property
    def invoice_id(self) -> int | None:
        return self.invoice_ids[0] if self.rule in _ALLOCATING else None


_ALLOCATING = frozenset({Rule.ATTACHED, Rule.AMOUNT, Rule.PAYER})


def _same_wallet_asset(inflow: Inflow, inv: Candidate) -> bool:
    return (
        inv.chain_id == inflow.chain_id
        and inv.asset == inflow.asset
        and inv.pay_to == inflow.to_address
    )


def _decide(rule: Rule, found: Sequence[Candidate]) -> Match | None:
    if not found:
        return None
    if len(found) == 1:
        return Match(rule, (found[0].id,))
    return Match(Rule.REVIEW, tuple(sorted(inv.id for inv in found)))


def match(inflow: Inflow, invoices: Iterable[Candidate]) -> Match:
    """The invoice ``inflow`` pays, why, or why none / several."""
    pool = list(invoices)
    attached = [
        inv
        for inv in pool
        if _same_wallet_asset(inflow, inv)
        and (
            (inflow.tx_hash, inflow.log_index) in inv.attached
            or (inflow.tx_hash, None) in inv.attached
        )
    ]
    if (decided := _decide(Rule.ATTACHED, attached)) is not None:
        return decided
    by_amount = [
        inv for inv in pool if _same_wallet_asset(inflow, inv) and inv.amount == inflow.amount
    ]
    if (decided := _decide(Rule.AMOUNT, by_amount)) is not None:
        return decided
    by_payer = [
        inv
        for inv in pool
        if _same_wallet_asset(inflow, inv) and inflow.from_address in inv.payers and not inv.covered
    ]
    retainers = {inv.retainer_id for inv in by_payer}
    if len(retainers) > 1:
        return Match(Rule.REVIEW, tuple(sorted(inv.id for inv in by_payer)))
    if by_payer:
        oldest = min(by_payer, key=lambda inv: (inv.issued_at, inv.id))
        return Match(Rule.PAYER, (oldest.id,))
    return Match(Rule.UNASSIGNED)


@dataclass(frozen=True, slots=True)
class Allocation:
    uid: str
    match: Match


def allocate(
    inflows: Iterable[Inflow],
    invoices: Iterable[Candidate],
    funded: dict[int, int] | None = None,
    *,
    threshold: dict[int, int] | None = None,
) -> list[Allocation]:
    """Match every inflow, in canonical chain order, updating coverage as money is allocated.

    ``funded`` is what each invoice already has; ``threshold`` what it needs to be covered
    (default: its price). Each inflow appears once in the result: a transfer funds at most
    one invoice.
    """
    by_id = {inv.id: inv for inv in invoices}
    have = dict(funded or {})
    need = dict(threshold or {})
    for inv in list(by_id.values()):
        # Money allocated before this call may already cover an invoice.
        if not inv.covered and have.get(inv.id, 0) >= need.get(inv.id, inv.price):
            by_id[inv.id] = replace(inv, covered=True)
    out: list[Allocation] = []
    seen: set[str] = set()
    for inflow in sorted(inflows, key=lambda i: (i.order, i.uid)):
        if inflow.uid in seen:
            continue
        seen.add(inflow.uid)
        result = match(inflow, by_id.values())
        out.append(Allocation(inflow.uid, result))
        target = result.invoice_id
        if target is not None:
            have[target] = have.get(target, 0) + inflow.amount
            if have[target] >= need.get(target, by_id[target].price):
                by_id[target] = replace(by_id[target], covered=True)
    return out


# --- coverage: what an invoice's allocated payments add up to --------------------------------


def covered_threshold(price: int, tolerance: Decimal) -> int:
    """The least sum that pays ``price`` given the underpay tolerance (a fraction < 1)."""
    allowance = int((Decimal(price) * tolerance).to_integral_value(rounding=ROUND_FLOOR))
    return price - allowance


@dataclass(frozen=True, slots=True)
class Paid:
    """One allocated, not orphaned transfer as coverage needs it; ``paid_at`` is its block's
    timestamp (the payment's time for every deadline), however late the watcher saw it."""

    amount: int
    final: bool
    paid_at: datetime


@dataclass(frozen=True, slots=True)
class Coverage:
    status: InvoiceStatus
    paid_amount: int
    overpaid_by: int
    final_amount: int
    late: bool = False
    settled_by_final: bool = field(default=False)
    covered_at: datetime | None = None  # block time of the payment that completed coverage


def coverage(
    *,
    price: int,
    amount: int,
    due_at: datetime,
    payments: Sequence[Paid],
    tolerance: Decimal,
    current: InvoiceStatus,
    expired: bool = False,
) -> Coverage:
    """The status an unsettled invoice should have given its allocated payments.

    Covered = the final sum reaches ``price × (1 − tolerance)``; the unique tag is never owed.
    ``pending`` = enough is allocated but not all of it is final yet. Coverage completed by a
    payment mined after the due date (by its block's timestamp) makes it ``paid_late``.
    """
    total = sum(p.amount for p in payments)
    final_total = sum(p.amount for p in payments if p.final)
    need = covered_threshold(price, tolerance)
    overpaid = max(0, total - amount)
    if payments and total >= need and all(p.final for p in payments):
        # The arrival that completed coverage, in arrival order.
        running, arrived = 0, payments[0].paid_at
        for p in sorted(payments, key=lambda p: p.paid_at):
            running += p.amount
            arrived = p.paid_at
            if running >= need:
                break
        late = arrived > due_at
        status = InvoiceStatus.PAID_LATE if late else InvoiceStatus.PAID
        return Coverage(
            status, total, overpaid, final_total, late=late, settled_by_final=True,
            covered_at=arrived,
        )  # fmt: skip
    if payments and total >= need:
        return Coverage(InvoiceStatus.PENDING, total, overpaid, final_total)
    if current == InvoiceStatus.NEEDS_REVIEW:
        return Coverage(InvoiceStatus.NEEDS_REVIEW, total, overpaid, final_total)
    if total > 0:
        return Coverage(InvoiceStatus.UNDERPAID, total, overpaid, final_total)
    status = InvoiceStatus.EXPIRED if expired else InvoiceStatus.OPEN
    return Coverage(status, total, overpaid, final_total)
