"""The operator SQL views format amounts exactly like money.format_amount, on SQLite and on
PostgreSQL (the session's real test server)."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tests.support.base_ledger import WALLET, base_settings
from tests.support.postgres import STORES, PostgresServer
from watcher.domain.money import format_amount
from watcher.ledger import invoices as ledger
from watcher.ledger import queries
from watcher.store.db import make_engine, migrate, transaction
from watcher.store.tables import Invoice, Retainer, Transfer
from watcher.store.views import _fmt, _fmt_pg

NOW = datetime(2026, 1, 31, 10, tzinfo=UTC)
_TX_NUMBERS = itertools.count(1)

amounts = st.one_of(
    st.integers(min_value=0, max_value=10**40),
    st.sampled_from([0, 1, 10, 100, 10**6, 10**18, 10**19, 10**36]),
    # round numbers: many trailing zeros, the case rtrim must get right
    st.builds(lambda n, k: n * 10**k, st.integers(0, 10**6), st.integers(0, 30)),
)
decimals_0_18 = st.integers(min_value=0, max_value=18)


@pytest.fixture(scope="module", params=STORES)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A real SQLite file or PostgreSQL database created by make_engine + migrate, with one
    retainer to hang rows on."""
    pg: PostgresServer | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('views') / 'watcher.db'}"
    else:
        pg = request.getfixturevalue("pg_server")
        name = pg.create_database()
        url = pg.url(name)
    engine = make_engine(url)
    migrate(engine)
    with transaction(engine) as session:
        session.add(
            Retainer(
                id=1,
                client="Acme",
                chain="base",
                chain_id=8453,
                asset="TOK",
                decimals=6,
                monthly=1,
                pay_to=WALLET,
                start_at=NOW,
                terms_hash="sha256:x",
                created_at=NOW,
            )
        )
    yield engine
    engine.dispose()
    if pg is not None:
        pg.drop_database(name)


@pytest.fixture(scope="module")
def pg_conn(pg_server: PostgresServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain connection to the test server, to evaluate SQL fragments."""
    with pg_server.connect() as conn:
        yield conn


def test_fmt_expression_matches_known_examples() -> None:
    """The raw `_fmt` SQL gives the documented strings for a few hand-picked amounts."""
    conn = sqlite3.connect(":memory:")
    sql = f"SELECT {_fmt(':v', ':d')}"
    cases = [
        ("1500000137", 6, "1500.000137"),
        ("1500000000", 6, "1500"),
        ("1", 6, "0.000001"),
        ("0", 6, "0"),
        ("0", 0, "0"),
        ("10", 0, "10"),
        ("10000000000000000000", 18, "10"),
    ]
    for value, decimals, expected in cases:
        assert conn.execute(sql, {"v": value, "d": decimals}).fetchone() == (expected,)


@given(units=amounts, decimals=decimals_0_18)
def test_fmt_expression_equals_format_amount(units: int, decimals: int) -> None:
    """Evaluated in sqlite3, `_fmt` equals format_amount for any base units and 0..18 decimals."""
    conn = sqlite3.connect(":memory:")
    sql = f"SELECT {_fmt(':v', ':d')}"
    (got,) = conn.execute(sql, {"v": str(units), "d": decimals}).fetchone()
    assert got == format_amount(units, decimals)


@given(units=amounts, decimals=decimals_0_18)
def test_pg_fmt_expression_equals_format_amount(
    pg_conn: psycopg.Connection[tuple[object, ...]], units: int, decimals: int
) -> None:
    """Evaluated in PostgreSQL, `_fmt_pg` equals format_amount for any base units, 0..18
    decimals."""
    sql = f"SELECT {_fmt_pg('%(v)s::text', '%(d)s::int')}"
    row = pg_conn.execute(sql, {"v": str(units), "d": decimals}).fetchone()
    assert row == (format_amount(units, decimals),)


@given(
    price=amounts,
    amount=amounts,
    paid=amounts,
    decimals=decimals_0_18,
)
def test_v_invoices_amounts_equal_format_amount(
    engine: Engine, price: int, amount: int, paid: int, decimals: int
) -> None:
    """price, amount, paid_amount and overpaid_by in v_invoices equal format_amount, exactly."""
    overpaid = max(0, paid - amount)
    with transaction(engine) as session:
        invoice = Invoice(
            retainer_id=1,
            kind="sprint",
            chain="base",
            chain_id=8453,
            asset="TOK",
            decimals=decimals,
            price=price,
            amount=amount,
            pay_to=WALLET,
            payment_uri="ethereum:x",
            issued_at=NOW,
            due_at=NOW,
            terms_hash="sha256:x",
            paid_amount=paid,
            overpaid_by=overpaid,
        )
        session.add(invoice)
        session.flush()
        iid = invoice.id
    row = queries.invoice(engine, f"INV-{iid}")
    assert row["price"] == format_amount(price, decimals)
    assert row["amount"] == format_amount(amount, decimals)
    assert row["amount_base_units"] == str(amount)
    assert row["price_base_units"] == str(price)
    assert row["paid_amount"] == format_amount(paid, decimals)
    assert row["paid_amount_base_units"] == str(paid)
    assert row["overpaid_by"] == format_amount(overpaid, decimals)


@given(units=amounts, decimals=decimals_0_18)
def test_v_payments_amount_equals_format_amount(engine: Engine, units: int, decimals: int) -> None:
    """A transfer's amount in v_payments equals format_amount; base units are a string."""
    tx_hash = "0x" + f"{next(_TX_NUMBERS):x}".rjust(64, "0")
    with transaction(engine) as session:
        session.add(
            Transfer(
                uid=f"8453:{tx_hash}:erc20:0",
                chain="base",
                chain_id=8453,
                kind="erc20",
                tx_hash=tx_hash,
                log_index=0,
                block_number=1,
                block_hash="0x" + "0" * 64,
                from_address=WALLET,
                to_address=WALLET,
                asset="TOK",
                decimals=decimals,
                amount=units,
                detected_at=NOW,
            )
        )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT amount, amount_base_units FROM v_payments WHERE tx_hash = :h"),
            {"h": tx_hash},
        ).all()
    assert [tuple(r) for r in rows] == [(format_amount(units, decimals), str(units))]


def test_wei_above_64_bits_survive_the_ledger_and_the_views(tmp_path: Path, db_url: str) -> None:
    """A 10 ETH retainer (10**19 wei, over SQLite's INTEGER range) is invoiced and shown exactly."""
    settings = base_settings(db_url, tmp_path)
    engine = make_engine(settings.database_url)
    migrate(engine)
    ctx = ledger.Context(settings=settings, engine=engine, now=lambda: NOW)
    ledger.add_retainer(ctx, client="Acme", chain="base", asset="ETH", monthly="10")
    ledger.approve_retainer(ctx, "RET-1", by="Bob")
    ledger.issue_invoice(ctx, "RET-1")
    row = queries.invoice(engine, "INV-1")
    assert row["price"] == "10"
    assert row["amount"] == "10.000000000000000001"
    assert row["amount_base_units"] == str(10**19 + 1)
    assert row["payment_uri"] == f"ethereum:{WALLET}@8453?value={10**19 + 1}"
    assert queries.retainer(engine, "RET-1")["monthly_base_units"] == str(10**19)
    engine.dispose()
