"""Settlement rules on a real SQLite file, without a chain: review flags and the schema's
guarantee that a transfer funds at most one invoice."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from watcher import ledger
from watcher.ledger import Context
from watcher.settings import load_settings
from watcher.settlement import Settlement
from watcher.store.db import SCHEMA_VERSION, make_engine, migrate, transaction
from watcher.store.tables import Allocation, Invoice, OutboxEvent, Transfer

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAYER = "0x52908400098527886E0F7030069857D2E4169EE7"


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    (tmp_path / "watcher.toml").write_text(
        f"""[database]
url = "sqlite:///w.db"
[[chains]]
name = "base"
chain_id = 8453
rpc_urls = ["http://127.0.0.1:9"]
receiving_address = "{WALLET}"
[[chains.tokens]]
symbol = "USDC"
address = "{USDC}"
decimals = 6
"""
    )
    settings = load_settings(tmp_path / "watcher.toml")
    engine = make_engine(settings.database_url)
    migrate(engine)
    return Context(settings=settings, engine=engine, now=lambda: NOW)


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


def test_init_migrates_a_version_1_database_to_the_current_schema(ctx: Context) -> None:
    """A schema-1 file (no unique allocation index, no block timestamps) is brought to the
    current version by migrate, and migrating again changes nothing."""
    path = ctx.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        for (view,) in conn.execute("SELECT name FROM sqlite_master WHERE type='view'").fetchall():
            conn.execute(f"DROP VIEW {view}")
        conn.execute("DROP INDEX uq_allocations_active_transfer")
        conn.execute("ALTER TABLE transfers DROP COLUMN block_time")
        conn.execute("ALTER TABLE transfers DROP COLUMN attribution")
        conn.execute("DROP TABLE token_decimals")
        conn.execute("ALTER TABLE chain_state DROP COLUMN cursor_time")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")

    assert migrate(ctx.engine) == (1, SCHEMA_VERSION)
    assert migrate(ctx.engine) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")]
    assert "uq_allocations_active_transfer" in names
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(transfers)")]
    assert {"block_time", "attribution"} <= set(columns)
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(chain_state)")]
    assert "cursor_time" in columns
