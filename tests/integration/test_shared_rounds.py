"""Work that several daemons (or an operator beside them) could do twice on one database:
two racing ``invoice issue`` make one invoice and one clear refusal, two for different
retainers at one price ask for different amounts (SQLite and PostgreSQL), and a renewal round
runs only under its advisory lock (PostgreSQL)."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from tests.support.base_ledger import PAYER, USDC, WALLET, base_context
from watcher.errors import Refused
from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.ledger.renewals import ROUND_LOCK, run_renewals
from watcher.ledger.settlement import Settlement
from watcher.store.db import transaction
from watcher.store.tables import Invoice, Transfer

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def context_for(tmp_path: Path, url: str) -> Context:
    return base_context(tmp_path, url, lambda: NOW)


@pytest.fixture
def ctx(tmp_path: Path, db_url: str) -> Context:
    return context_for(tmp_path, db_url)


@pytest.fixture
def pg_ctx(tmp_path: Path, pg_url: str) -> Context:
    return context_for(tmp_path, pg_url)


def approved_retainer(ctx: Context) -> str:
    r = ledger.add_retainer(
        ctx, client="Acme", chain="base", asset="USDC", monthly="100", payers=[PAYER]
    )
    ledger.approve_retainer(ctx, f"RET-{r.id}", by="Jane")
    return f"RET-{r.id}"


def test_two_racing_invoice_issues_make_one_invoice_and_one_refusal(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``invoice issue`` for one retainer at the same time: the second waits for the
    first, then is refused naming the first's unpaid invoice; one invoice exists. (Each
    waits, inside its transaction, for the other to arrive there too: without the retainer's
    lock both would get that far and both issue.)"""
    ref = approved_retainer(ctx)
    meet = threading.Barrier(2, timeout=3)
    pick = ledger.pick_amount

    def pick_after_meeting(*args: Any, **kwargs: Any) -> int:
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()  # the other issue never comes while this one holds the retainer
        return pick(*args, **kwargs)

    monkeypatch.setattr(ledger, "pick_amount", pick_after_meeting)
    outcomes: list[object] = []

    def issue() -> None:
        try:
            outcomes.append(ledger.issue_invoice(ctx, ref))
        except Refused as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=issue) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    refusals = [o for o in outcomes if isinstance(o, Refused)]
    issued = [o for o in outcomes if isinstance(o, Invoice)]
    assert len(issued) == 1 and len(refusals) == 1, outcomes
    assert str(refusals[0]) == (
        "INV-1 for month 1 is still unpaid: void it or wait for it to be paid"
    )
    with Session(ctx.engine) as session:
        assert len(session.exec(select(Invoice)).all()) == 1
    ctx.engine.dispose()


def test_two_racing_issues_for_different_retainers_at_one_price_pick_distinct_amounts(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``invoice issue`` for two retainers at the same price on one chain + asset, at the
    same instant, ask for two different amounts. (Both meet just before picking: without the
    per-asset lock on PostgreSQL both would read the same free tag and ask for it.)"""
    refs = [approved_retainer(ctx), approved_retainer(ctx)]
    meet = threading.Barrier(2, timeout=3)
    pick = ledger.pick_amount

    def pick_after_meeting(*args: Any, **kwargs: Any) -> int:
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()  # on SQLite the other issue waits for this one's BEGIN IMMEDIATE
        return pick(*args, **kwargs)

    monkeypatch.setattr(ledger, "pick_amount", pick_after_meeting)
    outcomes: list[object] = []

    def issue(ref: str) -> None:
        try:
            outcomes.append(ledger.issue_invoice(ctx, ref))
        except Exception as exc:  # shown by the assertion below
            outcomes.append(exc)

    threads = [threading.Thread(target=issue, args=(ref,)) for ref in refs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(isinstance(o, Invoice) for o in outcomes) and len(outcomes) == 2, outcomes
    with Session(ctx.engine) as session:
        amounts = [i.amount for i in session.exec(select(Invoice)).all()]
    assert len(amounts) == 2 and len(set(amounts)) == 2, amounts
    ctx.engine.dispose()


def paid_first_month(ctx: Context) -> None:
    """RET-1 with INV-1 paid by a final transfer (no chain needed)."""
    ref = approved_retainer(ctx)
    ledger.issue_invoice(ctx, ref)
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        t = Transfer(
            uid="8453:0xab:erc20:0", chain="base", chain_id=8453, kind="erc20",
            tx_hash="0x" + "ab" * 32, log_index=0, block_number=10, block_hash="0x" + "cd" * 32,
            from_address=PAYER, to_address=WALLET, asset="USDC", token_address=USDC,
            decimals=6, amount=100_000_000, detected_at=NOW,
        )  # fmt: skip
        session.add(t)
        session.flush()
        settlement.found(session, [t])
        t.status, t.finalized_at, t.final_block = "final", NOW, 12
        session.add(t)
        settlement.finalized(session, [t])


def test_a_renewal_round_runs_only_under_its_advisory_lock(pg_ctx: Context) -> None:
    """While another daemon's round holds the advisory lock, a round does nothing and says it
    skipped; once the lock is free the same round issues the renewal."""
    ctx = pg_ctx
    paid_first_month(ctx)
    later = NOW + timedelta(days=27)
    with ctx.engine.connect() as other, other.begin():
        got = other.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ROUND_LOCK})
        assert got.scalar() is True
        report = run_renewals(ctx.engine, ctx.settings, later)
        assert report.skipped and report.issued == []
    report = run_renewals(ctx.engine, ctx.settings, later)
    assert not report.skipped and report.issued == ["INV-2"]
    ctx.engine.dispose()
