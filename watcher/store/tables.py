"""SQLModel tables. Operators read the views in ``views.py``; these tables are not the contract.

Amounts are stored as decimal TEXT of base units: wei overflow SQLite's 64-bit INTEGER
(10 ETH = 10**19 wei). All datetimes are stored as UTC without a zone and returned UTC-aware.
Chain ids, block numbers and log indexes are 64-bit (``BIGINT``): PostgreSQL's ``INTEGER`` is
32-bit, SQLite's is 64-bit either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    DateTime,
    Index,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlmodel import Field, SQLModel


class BaseUnits(TypeDecorator[int]):
    """An arbitrary-size non-negative integer stored as decimal text."""

    impl = String(80)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"amounts must be int base units, got {type(value).__name__}")
        return str(value)

    def process_result_value(self, value: str | None, dialect: Any) -> int | None:
        return None if value is None else int(value)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime; naive values are refused on the way in."""

    impl = DateTime()
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _amount(nullable: bool = False) -> Any:
    return Field(sa_column=Column(BaseUnits(), nullable=nullable))


def _big(*, nullable: bool = False, **kwargs: Any) -> Any:
    """A 64-bit integer column (chain ids, block numbers, log indexes)."""
    if nullable:
        kwargs.setdefault("default", None)
    return Field(sa_type=BigInteger, nullable=nullable, **kwargs)


def _when(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable))


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class Retainer(SQLModel, table=True):
    __tablename__ = "retainers"
    id: int | None = Field(default=None, primary_key=True)
    client: str
    chain: str
    chain_id: int = _big()
    asset: str
    token_address: str | None = None
    decimals: int
    monthly: int = _amount()
    pay_to: str
    payers: str = "[]"  # JSON list of checksummed addresses
    scope: str = ""
    scope_cap: str = ""
    cadence: str = "monthly"
    start_at: datetime = _when(nullable=False)
    status: str = "draft"
    terms_hash: str
    approval_id: int | None = Field(default=None, foreign_key="approvals.id")
    created_at: datetime = _when(nullable=False)


class Approval(SQLModel, table=True):
    __tablename__ = "approvals"
    id: int | None = Field(default=None, primary_key=True)
    retainer_id: int = Field(foreign_key="retainers.id", index=True)
    approved_by: str
    note: str = ""
    approved_at: datetime = _when(nullable=False)
    terms_hash: str
    terms_json: str


class Invoice(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (Index("ix_invoices_open", "chain_id", "asset", "pay_to", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    retainer_id: int = Field(foreign_key="retainers.id", index=True)
    kind: str
    period_index: int | None = None
    chain: str
    chain_id: int = _big()
    asset: str
    token_address: str | None = None
    decimals: int
    price: int = _amount()
    amount: int = _amount()
    pay_to: str
    payment_uri: str
    status: str = "open"
    issued_at: datetime = _when(nullable=False)
    due_at: datetime = _when(nullable=False)
    paid_at: datetime | None = _when()
    terms_hash: str
    approval_id: int | None = Field(default=None, foreign_key="approvals.id")
    paid_amount: int = Field(default=0, sa_column=Column(BaseUnits(), nullable=False))
    overpaid_by: int = Field(default=0, sa_column=Column(BaseUnits(), nullable=False))
    cycle_id: int | None = Field(default=None, foreign_key="cycles.id")
    review_reason: str | None = None  # the latest open review's reason (see ``Review``)


class Attachment(SQLModel, table=True):
    """An operator's claim that a given transfer pays a given invoice (``invoice attach``)."""

    __tablename__ = "attachments"
    id: int | None = Field(default=None, primary_key=True)
    invoice_id: int = Field(foreign_key="invoices.id", index=True)
    chain_id: int = _big()
    tx_hash: str
    log_index: int | None = _big(nullable=True)
    created_at: datetime = _when(nullable=False)


class Transfer(SQLModel, table=True):
    """An inflow to a receiving wallet seen on chain."""

    __tablename__ = "transfers"
    __table_args__ = (UniqueConstraint("uid", name="uq_transfers_uid"),)
    id: int | None = Field(default=None, primary_key=True)
    uid: str  # "<chain_id>:<tx_hash>:<kind>:<log_index or trace position>"
    chain: str
    chain_id: int = _big(index=True)
    kind: str  # erc20 | native | internal
    tx_hash: str = Field(index=True)
    log_index: int | None = _big(nullable=True)
    block_number: int = _big(index=True)
    block_hash: str
    block_time: datetime | None = _when()  # the block's timestamp; NULL only in pre-4 rows
    from_address: str
    to_address: str
    asset: str
    token_address: str | None = None
    decimals: int
    amount: int = _amount()
    status: str = "seen"  # seen | final | orphaned
    detected_at: datetime = _when(nullable=False)
    finalized_at: datetime | None = _when()
    final_block: int | None = _big(nullable=True)  # the final block number when it became final
    attribution: str | None = None  # "balance": internal, attributed by the balance guard
    # Its block is final but its receipt could not be confirmed (null, disagreeing, or the
    # second provider of cross_check not agreeing yet) since then; retried every poll.
    unconfirmed_since: datetime | None = _when()


class Allocation(SQLModel, table=True):
    """Which invoice a transfer funds. A transfer funds at most one invoice at a time."""

    __tablename__ = "allocations"
    id: int | None = Field(default=None, primary_key=True)
    transfer_id: int = Field(foreign_key="transfers.id", index=True)
    invoice_id: int = Field(foreign_key="invoices.id", index=True)
    rule: str  # attached | amount | payer
    active: bool = True
    created_at: datetime = _when(nullable=False)
    released_at: datetime | None = _when()


# A transfer funds at most one invoice: enforced by the database too (schema 2), by a partial
# unique index created with the table. DDL text, the same on SQLite and PostgreSQL, rather than
# an ``Index(..., sqlite_where=..., postgresql_where=...)``: naming a dialect's options makes
# SQLAlchemy import that dialect (PostgreSQL's pulls in asyncpg support and asyncio) at every
# start of every command, about 30 ms, even on SQLite.
ACTIVE_ALLOCATION_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS uq_allocations_active_transfer "
    "ON allocations (transfer_id) WHERE active"
)
_allocations: Table = Allocation.__table__  # type: ignore[attr-defined]
event.listen(_allocations, "after_create", DDL(ACTIVE_ALLOCATION_INDEX))  # type: ignore[no-untyped-call]


class Review(SQLModel, table=True):
    """A transfer the matcher could not place on one invoice flags each candidate (schema 3).

    One row per transfer and invoice, so clearing one transfer's review (``invoice attach``)
    never clears another transfer's review of the same invoice."""

    __tablename__ = "reviews"
    transfer_id: int = Field(foreign_key="transfers.id", primary_key=True)
    invoice_id: int = Field(foreign_key="invoices.id", primary_key=True, index=True)
    reason: str
    created_at: datetime = _when(nullable=False)
    cleared_at: datetime | None = _when()


class Cycle(SQLModel, table=True):
    __tablename__ = "cycles"
    id: int | None = Field(default=None, primary_key=True)
    retainer_id: int = Field(foreign_key="retainers.id", index=True)
    period_index: int
    anchor_at: datetime = _when(nullable=False)  # start of the run this cycle belongs to
    anchor_index: int  # period_index of the run's first cycle
    starts_at: datetime = _when(nullable=False)
    ends_at: datetime = _when(nullable=False)
    status: str = "open"
    funded_by_invoice: int | None = Field(default=None, foreign_key="invoices.id")
    proof_tx_hash: str | None = None


class Proof(SQLModel, table=True):
    """The frozen proof of a settled invoice: written once, never rewritten."""

    __tablename__ = "proofs"
    invoice_id: int = Field(foreign_key="invoices.id", primary_key=True)
    bundle: str  # canonical JSON
    created_at: datetime = _when(nullable=False)


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("dedupe_key", name="uq_outbox_dedupe"),)
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(index=True, unique=True)  # EVT-...
    type: str
    dedupe_key: str
    created_at: datetime = _when(nullable=False)
    body: str  # the exact JSON body sent to receivers, frozen at creation
    fanned_out: bool = False  # deliveries rows created for the configured channels


class Delivery(SQLModel, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("event_id", "channel", name="uq_delivery"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(foreign_key="outbox.id", index=True)
    channel: str  # the channel's stable name (configured, or derived from its URL); never a URL
    status: str = "pending"  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: datetime = _when(nullable=False)
    last_error: str | None = None
    delivered_at: datetime | None = _when()


class DeliveryAttempt(SQLModel, table=True):
    __tablename__ = "delivery_attempts"
    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="deliveries.id", index=True)
    at: datetime = _when(nullable=False)
    ok: bool
    detail: str = ""


class ChainState(SQLModel, table=True):
    """The scan cursor of one chain and what the last poll saw."""

    __tablename__ = "chain_state"
    chain: str = Field(primary_key=True)
    chain_id: int = _big()
    cursor: int | None = _big(nullable=True)  # last block fully scanned
    cursor_hash: str | None = None
    cursor_time: datetime | None = _when()  # the cursor block's timestamp: the chain's clock
    head: int | None = _big(nullable=True)
    final_block: int | None = _big(nullable=True)
    last_poll_at: datetime | None = _when()
    last_ok_at: datetime | None = _when()
    rpc_ok: bool = True
    last_error: str | None = None  # redacted
    balance: int | None = Field(default=None, sa_column=Column(BaseUnits(), nullable=True))
    degraded: bool = False
    halted_by: str | None = None  # EVT id of the watcher.finality_violation that stopped it
    resume_ack: str | None = None  # EVT id acknowledged by `chain resume`: follow that reorg


class ChainResume(SQLModel, table=True):
    """One ``proofwatch chain resume``: who acknowledged which violation, and when."""

    __tablename__ = "chain_resumes"
    id: int | None = Field(default=None, primary_key=True)
    chain: str = Field(index=True)
    event_id: str
    resumed_by: str
    resumed_at: datetime = _when(nullable=False)
    cursor: int | None = _big(nullable=True)  # the chain's cursor when it was resumed


class TokenDecimals(SQLModel, table=True):
    """A token's ``decimals()`` as read on chain, once (see ``watcher.ledger.token_decimals``)."""

    __tablename__ = "token_decimals"
    chain: str = Field(primary_key=True)
    token_address: str = Field(primary_key=True)  # checksummed
    chain_id: int = _big()
    decimals: int
    read_at: datetime = _when(nullable=False)


class BlockHash(SQLModel, table=True):
    __tablename__ = "block_hashes"
    chain: str = Field(primary_key=True)
    number: int = _big(primary_key=True)
    hash: str
    parent_hash: str


class Daemon(SQLModel, table=True):
    __tablename__ = "daemon"
    id: int = Field(default=1, primary_key=True)
    pid: int | None = None
    host: str | None = None
    started_at: datetime | None = _when()
    last_heartbeat_at: datetime | None = _when()
    stopped_at: datetime | None = _when()


class DaemonInstance(SQLModel, table=True):
    """One ``proofwatch run`` process that shares the database with others (``status`` lists
    them all). ``expires_at`` is wall-clock time: the chains it leases are free after it."""

    __tablename__ = "daemons"
    holder: str = Field(primary_key=True)  # "<host>/<pid>/<random>": unique per process start
    host: str
    pid: int
    started_at: datetime = _when(nullable=False)
    last_heartbeat_at: datetime = _when(nullable=False)
    expires_at: datetime = _when(nullable=False)
    stopped_at: datetime | None = _when()


class ChainLease(SQLModel, table=True):
    """Which daemon scans a chain: at most one, until ``expires_at`` (wall-clock time).

    Renewed by the holder's heartbeat; checked (row locked) in every transaction that commits
    the chain's scan, so a daemon that lost its lease commits nothing (``runtime.leases``).
    """

    __tablename__ = "chain_leases"
    chain: str = Field(primary_key=True)
    holder: str | None = None  # DaemonInstance.holder; None: free
    acquired_at: datetime | None = _when()
    expires_at: datetime | None = _when()


class DisabledChannel(SQLModel, table=True):
    """A channel whose receiver answered 410 Gone: not attempted until the operator enables it.

    ``channel`` is the identifier ``deliveries.channel`` uses. Its pending deliveries wait,
    unattempted; new events still get deliveries for it, so nothing is lost.
    """

    __tablename__ = "disabled_channels"
    channel: str = Field(primary_key=True)
    disabled_at: datetime = _when(nullable=False)
    reason: str  # short, redacted: "HTTP 410"
    event_id: str  # the event whose delivery got the answer
