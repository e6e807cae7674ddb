"""The time-driven round: close ended months, issue renewals, expire invoices, lapse retainers.

One round at a time: on PostgreSQL, where several daemons share the database, a round runs
only while it holds one advisory lock (``pg_try_advisory_xact_lock`` in a transaction of its
own that lasts the round, released when it ends or its connection drops); a daemon that finds
it taken skips its round (``RenewalReport.skipped``). On SQLite the file lock already keeps a
single daemon.

Runs inside one transaction per retainer, with the injected clock, so rehearsals with
``WATCHER_NOW`` behave exactly like the calendar would. Renewals are issued by that clock;
expiry and lapses also wait for the chain's clock: a deadline has passed only once the
retainer's chain has been scanned up to a block whose timestamp is past it (a stopped or
blind scanner expires and lapses nobody), and a ``pending`` invoice (covered, waiting for
finality) never lapses its retainer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.domain import cycles as rules
from watcher.domain.billing import InvoiceKind, InvoiceStatus, RetainerStatus
from watcher.domain.money import format_amount
from watcher.errors import WatcherError
from watcher.ids import fmt_id
from watcher.ledger.invoices import issue_in
from watcher.settings import Settings
from watcher.store.db import transaction
from watcher.store.outbox import emit, iso
from watcher.store.tables import ChainState, Cycle, Invoice, Retainer

log = structlog.get_logger("watcher.renewals")


@dataclass
class RenewalReport:
    issued: list[str] = field(default_factory=list)
    lapsed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    skipped: bool = False  # another daemon's round held the lock: this one did nothing


#: The advisory lock key of the renewal round (PostgreSQL): "proofwatch renewals".
ROUND_LOCK = 0x70776174_72656E77


@contextmanager
def round_lock(engine: Engine) -> Iterator[bool]:
    """Whether this round may run: on PostgreSQL, True while it holds the round's advisory
    lock (held by an open transaction on a connection of its own until the block ends),
    False when another round holds it; on SQLite always True."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn, conn.begin():
        held = conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ROUND_LOCK})
        yield bool(held.scalar())


def run_renewals(engine: Engine, settings: Settings, now: datetime) -> RenewalReport:
    """One round over every retainer (see the module docstring)."""
    report = RenewalReport()
    with round_lock(engine) as mine:
        if not mine:
            log.debug("renewals.skipped", reason="another daemon's round holds the lock")
            report.skipped = True
            return report
        with transaction(engine) as session:
            ids = [r.id for r in session.exec(select(Retainer)).all()]
        for retainer_id in ids:
            with transaction(engine) as session:
                retainer = session.get(Retainer, retainer_id)
                if retainer is not None:
                    state = session.get(ChainState, retainer.chain)
                    clock = _Clock(now, state.cursor_time if state is not None else None)
                    _one(session, settings, retainer, clock, report)
    return report


@dataclass(frozen=True)
class _Clock:
    """The watcher's time and the retainer's chain's time (its cursor block's timestamp)."""

    now: datetime
    chain_time: datetime | None

    def passed(self, deadline: datetime) -> bool:
        return rules.deadline_passed(deadline, self.now, self.chain_time)


def _latest_cycle(session: Session, retainer_id: int) -> Cycle | None:
    return session.exec(
        select(Cycle)
        .where(Cycle.retainer_id == retainer_id)
        .order_by(col(Cycle.period_index).desc())
    ).first()


def _invoice_for(session: Session, retainer_id: int, period: int) -> Invoice | None:
    return session.exec(
        select(Invoice).where(
            Invoice.retainer_id == retainer_id,
            Invoice.period_index == period,
            Invoice.kind != InvoiceKind.SPRINT.value,
            Invoice.status != InvoiceStatus.VOID.value,
        )
    ).first()


def _one(
    session: Session, settings: Settings, retainer: Retainer, clock: _Clock, report: RenewalReport
) -> None:
    rid, now = retainer.id or 0, clock.now
    billing = settings.billing
    for cycle in session.exec(
        select(Cycle).where(Cycle.retainer_id == rid, Cycle.status == "open")
    ).all():
        if cycle.ends_at <= now:
            cycle.status = "closed"
            session.add(cycle)
            report.closed.append(fmt_id("CYC", cycle.id) or "")
    _expire_unpaid(session, settings, rid, clock, report)
    if retainer.status != RetainerStatus.ACTIVE:
        return
    latest = _latest_cycle(session, rid)
    if latest is None:
        return
    nxt = _invoice_for(session, rid, latest.period_index + 1)
    if nxt is None and rules.renewal_due(latest.ends_at, billing.renewal_lead_days, now):
        try:
            invoice = issue_in(
                session,
                settings,
                retainer,
                kind=InvoiceKind.RENEWAL,
                price=retainer.monthly,
                now=now,
            )
        except WatcherError as exc:
            report.blocked.append(fmt_id("RET", rid) or "")
            log.warning("renewal.blocked", retainer=fmt_id("RET", rid), reason=str(exc))
        else:
            nxt = invoice
            report.issued.append(fmt_id("INV", invoice.id) or "")
            emit(
                session,
                "invoice.renewal_issued",
                {
                    "invoice_id": fmt_id("INV", invoice.id),
                    "retainer_id": fmt_id("RET", rid),
                    "client": retainer.client,
                    "period_index": invoice.period_index,
                    "amount": invoice_amount(invoice),
                    "amount_base_units": str(invoice.amount),
                    "asset": invoice.asset,
                    "chain": invoice.chain,
                    "pay_to": invoice.pay_to,
                    "payment_uri": invoice.payment_uri,
                    "due_at": iso(invoice.due_at),
                },
                dedupe_key=f"invoice.renewal_issued:{fmt_id('INV', invoice.id)}",
                now=now,
            )
            log.info("invoice.renewal_issued", invoice=fmt_id("INV", invoice.id))
    covered = {InvoiceStatus.PAID, InvoiceStatus.PAID_LATE, InvoiceStatus.PENDING}
    funded = nxt is not None and nxt.status in covered
    if not funded and clock.passed(rules.lapse_deadline(latest.ends_at, billing.grace_days)):
        retainer.status = RetainerStatus.LAPSED.value
        latest.status = "lapsed"
        session.add_all([retainer, latest])
        report.lapsed.append(fmt_id("RET", rid) or "")
        emit(
            session,
            "retainer.lapsed",
            {
                "retainer_id": fmt_id("RET", rid),
                "client": retainer.client,
                "last_cycle_id": fmt_id("CYC", latest.id),
                "last_period_index": latest.period_index,
                "ended_at": iso(latest.ends_at),
                "unpaid_invoice_id": fmt_id("INV", nxt.id) if nxt else None,
            },
            dedupe_key=f"retainer.lapsed:{fmt_id('RET', rid)}:{latest.period_index}",
            now=now,
        )
        log.warning("retainer.lapsed", retainer=fmt_id("RET", rid), month=latest.period_index)


def _expire_unpaid(
    session: Session, settings: Settings, retainer_id: int, clock: _Clock, report: RenewalReport
) -> None:
    """Unpaid invoices past due + grace (on both clocks) become ``expired``; they stay payable
    (then late, or on time if the payment's block is before the due date)."""
    now = clock.now
    grace = timedelta(days=settings.billing.grace_days)
    for invoice in session.exec(
        select(Invoice).where(
            Invoice.retainer_id == retainer_id,
            col(Invoice.status).in_([InvoiceStatus.OPEN.value, InvoiceStatus.UNDERPAID.value]),
        )
    ).all():
        if invoice.status == InvoiceStatus.OPEN and clock.passed(invoice.due_at + grace):
            invoice.status = InvoiceStatus.EXPIRED.value
            session.add(invoice)
            report.expired.append(fmt_id("INV", invoice.id) or "")
            emit(
                session,
                "invoice.expired",
                {
                    "invoice_id": fmt_id("INV", invoice.id),
                    "retainer_id": fmt_id("RET", retainer_id),
                    "kind": invoice.kind,
                    "period_index": invoice.period_index,
                    "amount": invoice_amount(invoice),
                    "asset": invoice.asset,
                    "due_at": iso(invoice.due_at),
                },
                dedupe_key=f"invoice.expired:{fmt_id('INV', invoice.id)}",
                now=now,
            )


def invoice_amount(invoice: Invoice) -> str:
    return format_amount(invoice.amount, invoice.decimals)
