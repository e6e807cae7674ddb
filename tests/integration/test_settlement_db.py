"""Settlement rules on a real database (a SQLite file and a PostgreSQL database: ``db_url``),
without a chain: review flags, the schema's guarantee that a transfer funds at most one
invoice, and the migrations."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from tests.support.base_ledger import NOW, PAYER, USDC, WALLET
from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.ledger.renewals import run_renewals
from watcher.ledger.settlement import Settlement
from watcher.store.db import SCHEMA_VERSION, migrate, transaction
from watcher.store.tables import Allocation, Invoice, OutboxEvent, Transfer


def _two_retainers_sharing_a_payer(ctx: Context) -> tuple[int, int]:
    ids = []
    for client in ("Acme", "Globex"):
        r = ledger.add_retainer(
            ctx, client=client, chain="base", asset="USDC", monthly="100", payers=[PAYER]
        )
        ledger.approve_retainer(ctx, f"RET-{r.id}", by="Jane")
        ids.append(ledger.issue_invoice(ctx, f"RET-{r.id}").id or 0)
    return ids[0], ids[1]


def _transfer(session: Session, amount: int, tx: str = "0x" + "ab" * 32) -> Transfer:
    t = Transfer(
        uid=f"8453:{tx}:erc20:0", chain="base", chain_id=8453, kind="erc20", tx_hash=tx,
        log_index=0, block_number=10, block_hash="0x" + "cd" * 32, from_address=PAYER,
        to_address=WALLET, asset="USDC", token_address=USDC, decimals=6, amount=amount,
        detected_at=NOW,
    )  # fmt: skip
    session.add(t)
    session.flush()
    return t


def _status(ctx: Context, invoice_id: int) -> str:
    with Session(ctx.engine) as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        return invoice.status


def test_attaching_the_ambiguous_transfer_releases_the_other_invoice(ctx: Context) -> None:
    """A payer of two retainers flags both invoices; attaching the transfer to one puts the
    other back to open, not stuck in needs_review."""
    a, b = _two_retainers_sharing_a_payer(ctx)
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        transfer = _transfer(session, 100_000_000)
        settlement.found(session, [transfer])
    assert (_status(ctx, a), _status(ctx, b)) == ("needs_review", "needs_review")

    with transaction(ctx.engine) as session:
        transfer = session.exec(select(Transfer)).one()
        invoice = session.get(Invoice, a)
        assert invoice is not None
        settlement.attach(session, transfer, invoice)

    assert (_status(ctx, a), _status(ctx, b)) == ("pending", "open")
    with Session(ctx.engine) as session:
        types = [e.type for e in session.exec(select(OutboxEvent))]
    assert types.count("invoice.needs_review") == 1 and types.count("payment.detected") == 1


def test_attaching_another_transfer_keeps_the_review_of_the_ambiguous_one(ctx: Context) -> None:
    """An invoice flagged by ambiguous transfer X stays flagged when the operator attaches a
    different transfer Y to it."""
    a, _ = _two_retainers_sharing_a_payer(ctx)
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        settlement.found(session, [_transfer(session, 100_000_000)])
        other = _transfer(session, 40_000_000, tx="0x" + "ef" * 32)
        invoice = session.get(Invoice, a)
        assert invoice is not None
        settlement.attach(session, other, invoice)

    assert _status(ctx, a) == "needs_review"


def test_the_database_refuses_a_second_active_allocation_of_a_transfer(ctx: Context) -> None:
    """Even a writer that skips the checks cannot make one transfer fund two invoices."""
    a, b = _two_retainers_sharing_a_payer(ctx)
    with pytest.raises(IntegrityError), Session(ctx.engine) as session:
        transfer = _transfer(session, 100_000_000)
        for invoice_id in (a, b):
            session.add(
                Allocation(transfer_id=transfer.id or 0, invoice_id=invoice_id, rule="amount",
                           created_at=NOW)
            )  # fmt: skip
            session.flush()


def _execute(ctx: Context, *statements: str) -> None:
    with ctx.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def test_init_migrates_a_version_1_database_to_the_current_schema(ctx: Context) -> None:
    """A schema-1 database (no unique allocation index, no transfers.block_time or
    unconfirmed_since) is brought to the current version by migrate, and migrating again
    changes nothing."""
    views = sa.inspect(ctx.engine).get_view_names()
    _execute(
        ctx,
        *(f"DROP VIEW {view}" for view in views),
        "DROP INDEX uq_allocations_active_transfer",
        "ALTER TABLE transfers DROP COLUMN block_time",
        "ALTER TABLE transfers DROP COLUMN attribution",
        "DROP TABLE token_decimals",
        "ALTER TABLE chain_state DROP COLUMN cursor_time",
        "ALTER TABLE transfers DROP COLUMN unconfirmed_since",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    )

    assert migrate(ctx.engine) == (1, SCHEMA_VERSION)
    assert migrate(ctx.engine) == (SCHEMA_VERSION, SCHEMA_VERSION)
    inspector = sa.inspect(ctx.engine)
    names = [i["name"] for i in inspector.get_indexes("allocations")]
    assert "uq_allocations_active_transfer" in names
    columns = [c["name"] for c in inspector.get_columns("transfers")]
    assert "block_time" in columns and "unconfirmed_since" in columns
    assert {"block_time", "attribution"} <= set(columns)
    columns = [c["name"] for c in inspector.get_columns("chain_state")]
    assert "cursor_time" in columns
    assert inspector.has_table("token_decimals")


PAYER2 = "0x1aD91ee08f21bE3dE0BA2ba6918E714dA6B45836"


def _retainer(ctx: Context, client: str, payers: list[str]) -> int:
    r = ledger.add_retainer(
        ctx, client=client, chain="base", asset="USDC", monthly="100", payers=payers
    )
    ledger.approve_retainer(ctx, f"RET-{r.id}", by="Jane")
    return ledger.issue_invoice(ctx, f"RET-{r.id}").id or 0


def test_clearing_one_transfers_review_keeps_another_transfers_review(ctx: Context) -> None:
    """Invoice A flagged by ambiguous transfers X and Y stays in review when Y is attached
    elsewhere: X still flags it (it used to go back to open, its one reason overwritten)."""
    a = _retainer(ctx, "Acme", [PAYER, PAYER2])
    b = _retainer(ctx, "Globex", [PAYER])
    c = _retainer(ctx, "Initech", [PAYER2])
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        x = _transfer(session, 100_000_000)
        y = _transfer(session, 100_000_000, tx="0x" + "ef" * 32)
        y.from_address = PAYER2
        session.add(y)
        session.flush()
        settlement.found(session, [x, y])
    assert [_status(ctx, i) for i in (a, b, c)] == ["needs_review"] * 3

    with transaction(ctx.engine) as session:
        y = session.exec(select(Transfer).where(Transfer.from_address == PAYER2)).one()
        invoice = session.get(Invoice, c)
        assert invoice is not None
        settlement.attach(session, y, invoice)

    assert [_status(ctx, i) for i in (a, b, c)] == ["needs_review", "needs_review", "pending"]


def test_migration_3_keeps_an_open_review_of_a_schema_2_file(ctx: Context) -> None:
    """A schema-2 file whose invoice is in review gets a review row for that transfer, so the
    invoice stays in review after the upgrade."""
    a, _ = _two_retainers_sharing_a_payer(ctx)
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        settlement.found(session, [_transfer(session, 100_000_000)])
    _execute(ctx, "DROP TABLE reviews", "UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    assert migrate(ctx.engine) == (2, SCHEMA_VERSION)
    with ctx.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT invoice_id, cleared_at FROM reviews ORDER BY 1"))
        assert [tuple(row) for row in rows] == [(a, None), (a + 1, None)]
    with transaction(ctx.engine) as session:
        settlement.refresh(session, a)
    assert _status(ctx, a) == "needs_review"


def test_issuing_an_invoice_settles_it_with_a_final_early_payment(ctx: Context) -> None:
    """A round payment already final before its invoice existed pays the invoice as it is
    issued, in that transaction: payment.detected and payment.finalized, cycle opened."""
    r = ledger.add_retainer(
        ctx, client="Acme", chain="base", asset="USDC", monthly="100", payers=[PAYER]
    )
    ledger.approve_retainer(ctx, f"RET-{r.id}", by="Jane")
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        early = _transfer(session, 100_000_000)
        settlement.found(session, [early])
        early.status, early.finalized_at, early.final_block = "final", NOW, 12
        session.add(early)

    invoice = ledger.issue_invoice(ctx, f"RET-{r.id}")

    assert (invoice.status, invoice.paid_amount) == ("paid", 100_000_000)
    assert invoice.cycle_id is not None
    with Session(ctx.engine) as session:
        types = [e.type for e in session.exec(select(OutboxEvent))]
    assert types == ["transfer.unassigned", "payment.detected", "payment.finalized", "cycle.opened"]


def test_a_renewal_issued_by_the_clock_takes_the_payment_sent_ahead_of_it(ctx: Context) -> None:
    """A client who pays next month before its renewal exists has that payment matched when
    the renewal round issues the invoice (it used to stay unassigned)."""
    r = ledger.add_retainer(
        ctx, client="Acme", chain="base", asset="USDC", monthly="100", payers=[PAYER]
    )
    ledger.approve_retainer(ctx, f"RET-{r.id}", by="Jane")
    first = ledger.issue_invoice(ctx, f"RET-{r.id}").id
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        month_1 = _transfer(session, 100_000_000)
        ahead = _transfer(session, 100_000_000, tx="0x" + "ef" * 32)
        settlement.found(session, [month_1])
        settlement.found(session, [ahead])
        for t in (month_1, ahead):
            t.status, t.finalized_at, t.final_block = "final", NOW, 12
            session.add(t)
        settlement.finalized(session, [month_1, ahead])
    assert _status(ctx, first or 0) == "paid"

    report = run_renewals(ctx.engine, ctx.settings, NOW + timedelta(days=27))

    (renewal_id,) = report.issued
    with Session(ctx.engine) as session:
        renewal = session.get(Invoice, int(renewal_id.removeprefix("INV-")))
        assert renewal is not None
        payments = session.exec(
            select(Allocation.transfer_id).where(
                Allocation.invoice_id == renewal.id, Allocation.active
            )
        ).all()
        assert (renewal.kind, renewal.status) == ("renewal", "paid")
        assert payments == [ahead.id]
