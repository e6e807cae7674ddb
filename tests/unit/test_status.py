"""The status document and health verdict, read from a real database (no node needed): every
test runs on a SQLite file and on PostgreSQL (the ``db_url`` fixture).

Every document a test reads is read twice: through the engine (``watcher.runtime.status``,
the daemon's status server) and through the DB-API (``watcher.runtime.status_read``, the
``status`` command), and the two must print the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.runtime import status_read
from watcher.runtime.status import RUNNING_WITHIN, health_problems, status_document
from watcher.settings import Settings, load_settings
from watcher.store.db import make_engine, migrate, transaction
from watcher.store.dbapi import open_reader
from watcher.store.tables import ChainState, Daemon, Delivery, OutboxEvent

NOW = datetime(2026, 11, 21, 15, 0, 0, tzinfo=UTC)
SECRET = "SECRETKEY1234567890"
WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"

CONFIG = f"""
[database]
url = "${{DATABASE_URL}}"

[[chains]]
name = "base"
chain_id = 8453
rpc_urls = ["${{BASE_RPC_URL}}"]
receiving_address = "{WALLET}"
finality = "finalized"
poll_seconds = 6
start_block = 100

[[chains.tokens]]
symbol = "USDC"
address = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
decimals = 6

[[chains]]
name = "polygon"
chain_id = 137
rpc_urls = ["http://127.0.0.1:9/"]
receiving_address = "{WALLET}"
finality = 64
poll_seconds = 6
start_block = 100
native_symbol = "POL"

[status]
stale_seconds = 120
"""


@dataclass
class Db:
    settings: Settings
    engine: Engine  # the daemon's writer
    reader: Engine  # what `proofwatch status` uses

    def document(self, now: datetime = NOW) -> dict[str, Any]:
        document = status_document(self.reader, self.settings, now)
        with open_reader(self.settings.database_url) as reader:
            direct = status_read.status_document(reader, self.settings, now)
        assert _printed(direct) == _printed(document)
        return document


def _printed(document: dict[str, Any]) -> str:
    """As ``proofwatch status --json`` prints it."""
    return json.dumps(document, indent=2, default=str)


@pytest.fixture
def db(tmp_path: Path, db_url: str) -> Iterator[Db]:
    (tmp_path / "watcher.toml").write_text(CONFIG)
    (tmp_path / ".env").write_text(
        f"BASE_RPC_URL=https://base.example.org/v2/{SECRET}\nDATABASE_URL={db_url}\n"
    )
    settings = load_settings(tmp_path / "watcher.toml")
    engine = make_engine(settings.database_url)
    migrate(engine)
    reader = make_engine(settings.database_url, readonly=True)
    yield Db(settings, engine, reader)
    engine.dispose()
    reader.dispose()


def _state(db: Db, **fields: object) -> None:
    with transaction(db.engine) as session:
        state = session.get(ChainState, fields.get("chain", "base"))
        state = state or ChainState(chain="base", chain_id=8453)
        for key, value in fields.items():
            setattr(state, key, value)
        session.add(state)


def _daemon(db: Db, **fields: object) -> None:
    with transaction(db.engine) as session:
        row = session.get(Daemon, 1) or Daemon(id=1, pid=4242, host="box", started_at=NOW)
        for key, value in fields.items():
            setattr(row, key, value)
        session.add(row)


def test_fresh_database_lists_configured_chains_as_never_polled(db: Db) -> None:
    """Before any poll, every configured chain is listed with nulls and the daemon is down."""
    doc = db.document()
    assert doc["daemon"] == {
        "running": False,
        "pid": None,
        "last_heartbeat_at": None,
        "host": None,
        "started_at": None,
        "stopped_at": None,
    }
    assert doc["chains"] == [
        {
            "name": name,
            "chain_id": chain_id,
            "head": None,
            "final_block": None,
            "cursor": None,
            "cursor_time": None,
            "lag_blocks": None,
            "last_poll_at": None,
            "rpc_ok": None,
            "last_ok_at": None,
            "degraded": False,
            "last_error": None,
            "halted_by": None,
            "last_resume": None,
            "configured": True,
        }
        for name, chain_id in (("base", 8453), ("polygon", 137))
    ]
    assert doc["outbox"] == {"pending": 0, "dead": 0}
    assert set(doc["invoices"].values()) == {0}
    assert doc["generated_at"] == "2026-11-21T15:00:00Z"


@pytest.mark.parametrize(
    ("beat_age", "stopped", "running"),
    [
        (timedelta(seconds=1), False, True),
        (RUNNING_WITHIN, False, True),
        (RUNNING_WITHIN + timedelta(seconds=1), False, False),
        (timedelta(seconds=1), True, False),
    ],
)
def test_daemon_counts_as_running_only_with_a_fresh_heartbeat_and_no_stop(
    db: Db, beat_age: timedelta, stopped: bool, running: bool
) -> None:
    """The daemon is running while its heartbeat is within 3 intervals and it has not stopped."""
    _daemon(db, last_heartbeat_at=NOW - beat_age, stopped_at=NOW if stopped else None)
    daemon = db.document()["daemon"]
    assert daemon["running"] is running
    assert daemon["pid"] == 4242
    assert daemon["last_heartbeat_at"] == (NOW - beat_age).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_chain_entry_shows_lag_rpc_state_and_a_redacted_error(db: Db) -> None:
    """A failing chain shows head, final block, cursor, lag, rpc_ok false, degraded, and its
    last error with the RPC key removed even if a writer stored it unredacted."""
    _state(
        db,
        head=1_000,
        final_block=936,
        cursor=990,
        last_poll_at=NOW - timedelta(seconds=5),
        last_ok_at=NOW - timedelta(seconds=90),
        rpc_ok=False,
        degraded=True,
        last_error=f"HTTP 503 from https://base.example.org/v2/{SECRET}",
    )
    base = db.document()["chains"][0]
    assert base["head"] == 1_000
    assert base["final_block"] == 936
    assert base["cursor"] == 990
    assert base["lag_blocks"] == 10
    assert base["last_poll_at"] == "2026-11-21T14:59:55Z"
    assert base["last_ok_at"] == "2026-11-21T14:58:30Z"
    assert base["rpc_ok"] is False
    assert base["degraded"] is True
    assert SECRET not in base["last_error"]
    assert base["last_error"].startswith("HTTP 503 from https://base.example.org/")


def test_chain_entries_equal_the_v_status_view(db: Db) -> None:
    """The JSON chain fields are the v_status columns of the same name."""
    _state(db, head=50, final_block=40, cursor=45, last_poll_at=NOW, last_ok_at=NOW, rpc_ok=True)
    with db.reader.connect() as conn:
        view = dict(conn.execute(sa.text("SELECT * FROM v_status")).mappings().one())
    entry = db.document()["chains"][0]
    for key in ("name", "chain_id", "head", "final_block", "cursor", "lag_blocks"):
        assert entry[key] == view[key]
    for key in ("last_poll_at", "last_ok_at"):
        assert entry[key] == view[key]
    assert entry["rpc_ok"] is bool(view["rpc_ok"])
    assert entry["degraded"] is bool(view["degraded"])


def test_unconfigured_chain_state_is_listed_after_the_configured_ones(db: Db) -> None:
    """A chain the database knows but the config no longer names is shown, marked so."""
    _state(db, chain="gnosis", chain_id=100, head=7, cursor=7)
    chains = db.document()["chains"]
    assert [(c["name"], c["configured"]) for c in chains] == [
        ("base", True),
        ("polygon", True),
        ("gnosis", False),
    ]


def test_invoice_counts_have_every_status(db: Db) -> None:
    """Invoices are counted by status, with every status present."""
    ctx = Context(db.settings, db.engine, lambda: NOW)
    retainer = ledger.add_retainer(ctx, client="Acme", chain="base", asset="USDC", monthly="1500")
    ledger.approve_retainer(ctx, f"RET-{retainer.id}", by="Jane")
    ledger.issue_invoice(ctx, f"RET-{retainer.id}")
    assert db.document()["invoices"] == {
        "open": 1,
        "pending": 0,
        "paid": 0,
        "paid_late": 0,
        "underpaid": 0,
        "expired": 0,
        "needs_review": 0,
        "void": 0,
    }


def test_tags_report_the_space_left_per_price(db: Db) -> None:
    """status lists, per chain, asset and price, the unique-amount tags used and left: a paid
    or voided invoice still uses its tag inside the cooling window."""
    ctx = Context(db.settings, db.engine, lambda: NOW)
    retainer = ledger.add_retainer(ctx, client="Acme", chain="base", asset="USDC", monthly="1500")
    ledger.approve_retainer(ctx, f"RET-{retainer.id}", by="Jane")
    ledger.issue_invoice(ctx, f"RET-{retainer.id}")
    ledger.issue_invoice(ctx, f"RET-{retainer.id}", kind="sprint", amount="250")
    ledger.void_invoice(ctx, "INV-2")
    assert db.document()["tags"] == [
        {"chain": "base", "chain_id": 8453, "asset": "USDC", "price": "250",
         "price_base_units": "250000000", "used": 1, "left": 999},
        {"chain": "base", "chain_id": 8453, "asset": "USDC", "price": "1500",
         "price_base_units": "1500000000", "used": 1, "left": 999},
    ]  # fmt: skip


def test_outbox_counts_pending_and_dead_deliveries_like_v_status(db: Db) -> None:
    """The outbox backlog counts pending and dead deliveries, plus events not yet handed to
    their channels, as v_status does."""
    _state(db, head=1, cursor=1)
    with transaction(db.engine) as session:
        session.add(
            OutboxEvent(id="EVT-new", type="cycle.opened", dedupe_key="new", created_at=NOW,
                        body="{}")
        )  # fmt: skip
        for n, status in enumerate(("pending", "pending", "dead", "delivered")):
            session.add(
                OutboxEvent(
                    id=f"EVT-{n}",
                    type="cycle.opened",
                    dedupe_key=str(n),
                    created_at=NOW,
                    body="{}",
                    fanned_out=True,
                )
            )
            session.flush()
            session.add(
                Delivery(
                    event_id=f"EVT-{n}", channel="webhook:0", status=status, next_attempt_at=NOW
                )
            )
    assert db.document()["outbox"] == {"pending": 3, "dead": 1}
    with db.reader.connect() as conn:
        view = conn.execute(sa.text("SELECT outbox_pending, outbox_dead FROM v_status")).one()
    assert tuple(view) == (3, 1)


def test_health_names_the_stopped_daemon_and_every_stale_or_unpolled_chain(db: Db) -> None:
    """Health problems say why: daemon stopped, a chain stale past stale_seconds, a chain
    never polled."""
    _daemon(db, last_heartbeat_at=NOW, stopped_at=NOW)
    _state(db, last_ok_at=NOW - timedelta(seconds=121), last_error="HTTP 503 from node")
    problems = health_problems(db.document(), db.settings, NOW)
    assert problems == [
        "daemon stopped at 2026-11-21T15:00:00Z",
        "chain base last polled successfully 121 s ago (stale after 120 s): HTTP 503 from node",
        "chain polygon has not polled successfully yet",
    ]


def test_health_is_clean_with_a_fresh_heartbeat_and_fresh_polls(db: Db) -> None:
    """No problems when the daemon beats and every chain polled within stale_seconds."""
    _daemon(db, last_heartbeat_at=NOW)
    _state(db, last_ok_at=NOW - timedelta(seconds=120))
    _state(db, chain="polygon", chain_id=137, last_ok_at=NOW)
    assert health_problems(db.document(), db.settings, NOW) == []


def test_status_reads_without_waiting_for_an_open_write_transaction(db: Db) -> None:
    """The read-only engine reads the last committed state while a writer holds an open write
    transaction (SQLite's write lock under WAL; a row lock on PostgreSQL)."""
    _state(db, head=10, cursor=10)
    with db.engine.connect() as writer, writer.begin():
        writer.execute(sa.text("UPDATE chain_state SET head = 99 WHERE chain = 'base'"))
        assert db.document()["chains"][0]["head"] == 10
    assert db.document()["chains"][0]["head"] == 99
