"""Retainers, invoices and cycles: states, terms hashes, unique amount tags, periods, payment URIs.

Pure rules: no I/O, no clock. ``now`` is always an argument.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from watcher.domain.money import Asset
from watcher.errors import BadInput, Refused


class RetainerStatus(StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    ACTIVE = "active"
    LAPSED = "lapsed"
    ENDED = "ended"


class InvoiceKind(StrEnum):
    FIRST_MONTH = "first_month"
    RENEWAL = "renewal"
    SPRINT = "sprint"


class InvoiceStatus(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    PAID = "paid"
    PAID_LATE = "paid_late"
    UNDERPAID = "underpaid"
    EXPIRED = "expired"
    NEEDS_REVIEW = "needs_review"
    VOID = "void"


class CycleStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    LAPSED = "lapsed"


#: Invoices in these states still wait for money, so they hold their unique amount.
UNSETTLED = frozenset(
    {
        InvoiceStatus.OPEN,
        InvoiceStatus.PENDING,
        InvoiceStatus.UNDERPAID,
        InvoiceStatus.NEEDS_REVIEW,
        InvoiceStatus.EXPIRED,  # past due + grace, unpaid: still payable (then paid_late)
    }
)
SETTLED = frozenset({InvoiceStatus.PAID, InvoiceStatus.PAID_LATE})

#: Invoices may only be issued while a retainer is in one of these states.
ISSUABLE = frozenset({RetainerStatus.APPROVED, RetainerStatus.ACTIVE, RetainerStatus.LAPSED})


@dataclass(frozen=True, slots=True)
class Terms:
    """What a client approves. Any change to these needs a new approval."""

    client: str
    chain: str
    chain_id: int
    asset: str
    token_address: str | None
    decimals: int
    monthly_base_units: int
    pay_to: str
    scope: str
    cadence: str = "monthly"
    scope_cap: str = ""

    def canonical_json(self) -> str:
        data = asdict(self)
        data["monthly_base_units"] = str(self.monthly_base_units)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of the terms."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()


def max_tag(decimals: int) -> int:
    """The largest unique-amount tag for an asset: 1/1000 of a unit (0.001 USDC), at least 1."""
    return max(1, int(10**decimals) // 1000)


def unique_amount(price: int, taken: Iterable[int], decimals: int) -> int:
    """The price plus the smallest tag (>= 1 base unit) whose total is not in ``taken``.

    ``taken`` are the amounts held for the same chain + asset + wallet (see ``held_amounts``).
    Raises ``Refused`` when every tag up to ``max_tag(decimals)`` is in use.
    """
    used = set(taken)
    for tag in range(1, max_tag(decimals) + 1):
        if price + tag not in used:
            return price + tag
    raise Refused(
        f"no free unique amount for price {price} base units: all {max_tag(decimals)} tags "
        "are held by open or recently issued invoices"
    )


@dataclass(frozen=True, slots=True)
class IssuedAmount:
    """An invoice's amount on one chain + asset + wallet, and how long it holds it."""

    amount: int
    status: InvoiceStatus
    issued_at: datetime
    paid_at: datetime | None = None


def holds_until(invoice: IssuedAmount, cooling_days: int) -> datetime | None:
    """When ``invoice`` stops holding its amount: None while it still waits for money, else
    ``tag_cooling_days`` after it was last used (issued, or paid if later). Paid and voided
    invoices keep their amount through the cooling window, so a client who repeats a saved
    payment never pays another client's invoice."""
    if invoice.status in UNSETTLED:
        return None
    last_used = max(invoice.issued_at, invoice.paid_at or invoice.issued_at)
    return last_used + timedelta(days=cooling_days)


def held_amounts(invoices: Iterable[IssuedAmount], now: datetime, cooling_days: int) -> set[int]:
    """Amounts that may not be issued at ``now``: unsettled invoices' and those cooling down."""
    held = set()
    for invoice in invoices:
        until = holds_until(invoice, cooling_days)
        if until is None or now < until:
            held.add(invoice.amount)
    return held


@dataclass(frozen=True, slots=True)
class TagSpace:
    """How many unique amounts of one price are in use and how many are left."""

    price: int
    used: int
    left: int


def tag_space(price: int, held: Iterable[int], decimals: int) -> TagSpace:
    """Tags of ``price`` in use among ``held`` amounts, and tags still free."""
    top = max_tag(decimals)
    used = sum(1 for amount in set(held) if price < amount <= price + top)
    return TagSpace(price, used, top - used)


def choose_amount(
    price: int,
    decimals: int,
    invoices: Iterable[IssuedAmount],
    *,
    now: datetime,
    cooling_days: int,
) -> int:
    """The amount a new invoice of ``price`` asks for at ``now``: the smallest free tag.

    Refused when every tag is held; the message says when the first one frees up (if any
    invoice of that price is cooling down rather than still open).
    """
    issued = list(invoices)
    held = held_amounts(issued, now, cooling_days)
    try:
        return unique_amount(price, held, decimals)
    except Refused:
        top = max_tag(decimals)
        frees = [
            until
            for inv in issued
            if price < inv.amount <= price + top
            and (until := holds_until(inv, cooling_days)) is not None
            and until > now
        ]
        when = (
            f"the first frees at {min(frees):%Y-%m-%dT%H:%M:%SZ}"
            if frees
            else "settle or void an open invoice of that price first"
        )
        raise Refused(
            f"no free unique amount for this price: all {top} tag(s) are held by open "
            f"invoices or invoices issued within billing.tag_cooling_days ({cooling_days}); "
            f"{when}"
        ) from None


def payment_uri(asset: Asset, pay_to: str, amount: int) -> str:
    """EIP-681 URI a wallet can open: native value transfer or ERC-20 ``transfer``."""
    if asset.token_address is None:
        return f"ethereum:{pay_to}@{asset.chain_id}?value={amount}"
    return (
        f"ethereum:{asset.token_address}@{asset.chain_id}/transfer"
        f"?address={pay_to}&uint256={amount}"
    )


def parse_when(text: str, *, what: str = "date") -> datetime:
    """Parse ``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 timestamp with an offset, into UTC."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{what} {text!r} is not a date (YYYY-MM-DD) or ISO 8601 time") from None
    if value.tzinfo is None:
        raise BadInput(f"{what} {text!r} has no time zone; add Z or +00:00")
    return value.astimezone(UTC)


def add_months(start: datetime, months: int) -> datetime:
    """``start`` moved by whole calendar months, the day clamped to the month's end."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def due_at(issued_at: datetime, due_days: int) -> datetime:
    return issued_at + timedelta(days=due_days)


def check_issuable(status: RetainerStatus, approved_hash: str | None, current_hash: str) -> None:
    """Refuse to invoice a retainer that is not approved, or whose terms changed since approval."""
    if status not in ISSUABLE or approved_hash is None:
        raise Refused(f"retainer is {status.value}, not approved: approve it before invoicing")
    if approved_hash != current_hash:
        raise Refused("retainer terms changed since the last approval: approve them again")
