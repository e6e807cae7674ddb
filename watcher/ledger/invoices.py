"""Invoice use cases: issue, void; the retainer ones (``watcher.ledger.retainers``) are re-exported
here for the CLI. I/O sequenced around the domain."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlmodel import Session, col, or_, select

from watcher.domain import billing
from watcher.domain.billing import InvoiceKind, InvoiceStatus, RetainerStatus
from watcher.domain.money import Asset, format_amount, parse_amount
from watcher.errors import BadInput, NotFound, Refused, WatcherError
from watcher.ids import fmt_id, parse_id
from watcher.ledger import token_decimals
from watcher.ledger.context import Context
from watcher.ledger.retainers import (
    add_retainer,
    approve_retainer,
    asset_for,
    get_retainer,
    terms_of,
    update_retainer,
)
from watcher.ledger.settlement import Settlement
from watcher.settings import Settings
from watcher.store.db import transaction
from watcher.store.tables import Allocation, Approval, Invoice, Retainer

log = structlog.get_logger("watcher.ledger")

__all__ = [  # the retainer commands too: one module for the CLI and the tests
    "add_retainer", "approve_retainer", "asset_for", "get_invoice", "get_retainer",
    "issue_invoice", "terms_of", "update_retainer", "void_invoice",
]  # fmt: skip


def get_invoice(session: Session, ref: str) -> Invoice:
    invoice = session.get(Invoice, parse_id(ref, "INV"))
    if invoice is None:
        raise NotFound(f"unknown invoice {ref!r}")
    return invoice


def issued_amounts(
    session: Session, chain_id: int, asset: str, pay_to: str, *, since: datetime
) -> list[billing.IssuedAmount]:
    """Invoices for one chain + asset + wallet that may still hold their amount: every
    unsettled one, and any other issued or paid since ``since`` (the cooling window's start)."""
    rows = session.exec(
        select(Invoice).where(
            Invoice.chain_id == chain_id,
            Invoice.asset == asset,
            Invoice.pay_to == pay_to,
            or_(
                col(Invoice.status).in_([s.value for s in billing.UNSETTLED]),
                col(Invoice.issued_at) >= since,
                col(Invoice.paid_at) >= since,
            ),
        )
    ).all()
    return [
        billing.IssuedAmount(i.amount, InvoiceStatus(i.status), i.issued_at, i.paid_at)
        for i in rows
    ]


def amount_tag_lock(chain_id: int, symbol: str) -> int:
    """The advisory lock key (a signed 64-bit int, the same in every process) under which
    amounts are picked for one chain + asset on PostgreSQL."""
    digest = hashlib.blake2b(f"proofwatch amount tag {chain_id}:{symbol}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def pick_amount(
    session: Session, settings: Settings, asset: Asset, pay_to: str, price: int, now: datetime
) -> int:
    """The unique amount a new invoice of ``price`` asks for (``billing.choose_amount``).

    Picking is serialised per chain + asset: on PostgreSQL the issuing transaction first takes
    ``amount_tag_lock`` (held until it commits), so two ``invoice issue`` for different
    retainers at the same price cannot both read the same free tag; on SQLite the writer's
    ``BEGIN IMMEDIATE`` already holds the whole database."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        key = amount_tag_lock(asset.chain_id, asset.symbol)
        session.connection().execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    cooling = settings.billing.tag_cooling_days
    issued = issued_amounts(
        session, asset.chain_id, asset.symbol, pay_to, since=now - timedelta(days=cooling)
    )
    try:
        return billing.choose_amount(price, asset.decimals, issued, now=now, cooling_days=cooling)
    except Refused as exc:
        shown = f"{format_amount(price, asset.decimals)} {asset.symbol} on {asset.chain}"
        raise Refused(f"{shown}: {exc}") from None


def next_period(session: Session, retainer_id: int) -> int:
    """The month number the next monthly invoice is for (1 for the first)."""
    rows = session.exec(
        select(Invoice.period_index).where(
            Invoice.retainer_id == retainer_id,
            col(Invoice.kind).in_([InvoiceKind.FIRST_MONTH.value, InvoiceKind.RENEWAL.value]),
            Invoice.status != InvoiceStatus.VOID.value,
        )
    ).all()
    return max((r for r in rows if r is not None), default=0) + 1


def issue_in(
    session: Session,
    settings: Settings,
    retainer: Retainer,
    *,
    kind: InvoiceKind,
    price: int,
    now: datetime,
    due: datetime | None = None,
    verify_decimals: bool = False,
) -> Invoice:
    """Issue an invoice inside ``session``: checks approval and the token's decimals (see
    ``watcher.ledger.token_decimals``; ``verify_decimals`` raises DecimalsUnknown when none
    were read yet), picks the unique amount.

    Issuing is serialised per retainer: the retainer's row is locked first (``FOR UPDATE`` on
    PostgreSQL; a SQLite writer holds the database), so of two racing ``invoice issue`` (or a
    renewal round beside one) the second waits, then sees the first's invoice and is refused."""
    session.exec(select(Retainer.id).where(Retainer.id == retainer.id).with_for_update()).first()
    chain = settings.chain(retainer.chain)
    approval = session.get(Approval, retainer.approval_id) if retainer.approval_id else None
    try:
        billing.check_issuable(
            RetainerStatus(retainer.status),
            approval.terms_hash if approval else None,
            terms_of(retainer, chain).hash(),
        )
    except Refused as exc:  # name the retainer: the domain message does not know its id
        raise Refused(f"{fmt_id('RET', retainer.id)}: {exc}") from None
    asset = asset_for(chain, retainer.asset)
    period: int | None = None
    if kind != InvoiceKind.SPRINT:
        period = next_period(session, retainer.id or 0)
        open_monthly = session.exec(
            select(Invoice).where(
                Invoice.retainer_id == retainer.id,
                Invoice.kind != InvoiceKind.SPRINT.value,
                col(Invoice.status).in_([s.value for s in billing.UNSETTLED]),
            )
        ).first()
        if open_monthly is not None:
            raise Refused(
                f"{fmt_id('INV', open_monthly.id)} for month {open_monthly.period_index} is "
                "still unpaid: void it or wait for it to be paid"
            )
        if kind == InvoiceKind.FIRST_MONTH and period != 1:
            raise Refused(f"{fmt_id('RET', retainer.id)} already has a first-month invoice")
        if kind == InvoiceKind.RENEWAL and period == 1:
            raise Refused(f"{fmt_id('RET', retainer.id)} has no first-month invoice yet")
    due_at = due if due is not None else billing.due_at(now, settings.billing.due_days)
    if due_at < now:
        raise BadInput(f"due date {due_at:%Y-%m-%d} is before the issue date {now:%Y-%m-%d}")
    token_decimals.check_issuable(
        session, settings, chain.name, asset.token_address, need_known=verify_decimals
    )
    if retainer.decimals != asset.decimals:  # the config's decimals were fixed since
        raise Refused(
            f"{fmt_id('RET', retainer.id)}: its price was set with {asset.symbol} at "
            f"{retainer.decimals} decimals, the config now says {asset.decimals}: set it again "
            f"with `retainer update {fmt_id('RET', retainer.id)} --monthly AMOUNT` and approve"
        )
    amount = pick_amount(session, settings, asset, chain.receiving_address, price, now)
    invoice = Invoice(
        retainer_id=retainer.id or 0,
        kind=kind.value,
        period_index=period,
        chain=chain.name,
        chain_id=chain.chain_id,
        asset=asset.symbol,
        token_address=asset.token_address,
        decimals=asset.decimals,
        price=price,
        amount=amount,
        pay_to=chain.receiving_address,
        payment_uri=billing.payment_uri(asset, chain.receiving_address, amount),
        status=InvoiceStatus.OPEN.value,
        issued_at=now,
        due_at=due_at,
        terms_hash=approval.terms_hash if approval else "",
        approval_id=retainer.approval_id,
    )
    session.add(invoice)
    session.flush()
    if approval is not None:  # early payments: sent after the approval of these terms
        Settlement(settings, lambda: now).issued(
            session, invoice, json.loads(retainer.payers), approval.approved_at
        )
    return invoice


def issue_invoice(
    ctx: Context,
    ref: str,
    *,
    kind: str | None = None,
    amount: str | None = None,
    due: str | None = None,
    read_decimals: token_decimals.Reader | None = None,
) -> Invoice:
    """``invoice issue``: the next invoice of a retainer (first month if it has none).

    ``read_decimals`` reads a token's ``decimals()`` on chain when none is stored yet: a value
    that disagrees with the config refuses (nothing written), one that agrees is stored; a node
    that cannot be reached leaves it unverified with a warning (settlement checks it before
    counting anything). Without it, only a stored value is checked."""
    try:
        return _issue_invoice(ctx, ref, kind, amount, due, verify=read_decimals is not None)
    except token_decimals.DecimalsUnknown as unknown:
        assert read_decimals is not None
        chain = ctx.settings.chain(unknown.chain)
        token = next(t for t in chain.tokens if t.address == unknown.token)
        try:
            on_chain = read_decimals(chain, token.address)
        except WatcherError as exc:
            log.warning(
                "token.decimals_unverified", chain=chain.name, token=token.address, error=str(exc)
            )
        else:
            if on_chain != token.decimals:
                raise Refused(token_decimals.mismatch_reason(chain.name, token, on_chain)) from None
            with transaction(ctx.engine) as session:
                token_decimals.record(session, chain, token.address, on_chain, ctx.now())
        return _issue_invoice(ctx, ref, kind, amount, due, verify=False)


def _issue_invoice(
    ctx: Context,
    ref: str,
    kind: str | None,
    amount: str | None,
    due: str | None,
    *,
    verify: bool,
) -> Invoice:
    now = ctx.now()
    try:
        the_kind = InvoiceKind(kind) if kind else None
    except ValueError:
        raise BadInput(f"invoice kind {kind!r} must be first_month, renewal or sprint") from None
    due_at = billing.parse_when(due, what="due date") if due else None
    if due_at is not None and len(due.strip() if due else "") == 10:
        due_at += timedelta(days=1, seconds=-1)  # a bare date is due by the end of that day
    with transaction(ctx.engine) as session:
        retainer = get_retainer(session, ref)
        chain = ctx.settings.chain(retainer.chain)
        decimals = asset_for(chain, retainer.asset).decimals
        if the_kind is None:
            first = next_period(session, retainer.id or 0) == 1
            the_kind = InvoiceKind.FIRST_MONTH if first else InvoiceKind.RENEWAL
        if the_kind == InvoiceKind.SPRINT:
            if amount is None:
                raise BadInput("a sprint invoice needs --amount")
            price = parse_amount(amount, decimals)
        else:
            if amount is not None:
                raise BadInput(
                    f"--amount {amount!r} is only for sprint invoices; monthly invoices use the "
                    "approved monthly price"
                )
            price = retainer.monthly
        return issue_in(
            session, ctx.settings, retainer, kind=the_kind, price=price, now=now, due=due_at,
            verify_decimals=verify,
        )  # fmt: skip


def void_invoice(ctx: Context, ref: str) -> Invoice:
    """Void an invoice that nothing is allocated to; its amount stays held through the
    cooling window (``billing.tag_cooling_days``), then becomes free."""
    with transaction(ctx.engine) as session:
        invoice = get_invoice(session, ref)
        if invoice.status == InvoiceStatus.VOID:
            raise Refused(f"{fmt_id('INV', invoice.id)} is already void")
        allocated = session.exec(
            select(Allocation).where(Allocation.invoice_id == invoice.id, Allocation.active)
        ).first()
        if allocated is not None or invoice.status in billing.SETTLED:
            raise Refused(
                f"{fmt_id('INV', invoice.id)} has payments allocated ({invoice.status}); "
                "it cannot be voided"
            )
        invoice.status = InvoiceStatus.VOID.value
        session.add(invoice)
    return invoice
