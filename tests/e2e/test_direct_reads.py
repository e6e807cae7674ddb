"""The read commands read through the DB-API (issue 11 item 5) and print what the engine path
prints: the same bytes on a populated database, the same one-line errors and exit codes when
they cannot read one. Every test runs on SQLite and on PostgreSQL.

The engine path is the same read on a read-only engine, run in-process on the same database
at the same ``WATCHER_NOW``: for ``status``, ``watcher.runtime.status.status_document`` (what
``status --json`` printed before the DB-API reader existed, and what the daemon's status
server still serves); for the others, the ``watcher.ledger`` query the command runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import NOW, Templates, Workspace
from tests.e2e.test_startup_imports import imported, run_traced
from watcher.ledger import queries
from watcher.ledger.proof import load_proof
from watcher.runtime.status import health_problems, status_document
from watcher.settings import load_settings
from watcher.store.db import SCHEMA_VERSION, make_engine, transaction
from watcher.store.tables import (
    Allocation,
    ChainLease,
    ChainResume,
    ChainState,
    Cycle,
    Daemon,
    DaemonInstance,
    Delivery,
    DisabledChannel,
    OutboxEvent,
    Proof,
    Transfer,
)

STORES = ("sqlite", "postgresql")
AT = datetime.fromisoformat(NOW.replace("Z", "+00:00"))
SECRET = "not-a-real-key"  # in the .env's BASE_RPC_URL: redacted from last_error
FAR = datetime.now(UTC) + timedelta(days=3650)  # leases expire by the wall clock


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def invoiced(template_sets: Callable[[str], Templates], store: str, tmp_path: Path) -> Workspace:
    """A private copy of the invoiced ledger on ``store``."""
    return template_sets(store).copy("invoiced", tmp_path / "ws")


def engine_path(ws: Workspace) -> str:
    """``status --json`` as the engine path prints it, on ``ws`` at ``NOW``."""
    settings = load_settings(ws.config)
    engine = make_engine(settings.database_url, readonly=True)
    try:
        document = status_document(engine, settings, AT)
    finally:
        engine.dispose()
    problems = health_problems(document, settings, AT)
    full = {**document, "health": {"ok": not problems, "reasons": problems}}
    return json.dumps(full, indent=2, default=str) + "\n"


def populate(ws: Workspace, *, shared: bool) -> None:
    """A daemon that beat 5 s ago, a chain lagging with a failing RPC (the error quoting the
    RPC key), a chain halted by a finality violation and resumed once before, one no longer
    configured, deliveries pending and dead, a disabled channel; with ``shared``, two daemon
    instances, one holding a lease."""
    settings = load_settings(ws.config)
    engine = make_engine(settings.database_url)
    beat = AT - timedelta(seconds=5)
    event = "EVT-" + "ab" * 10
    rows: list[Any] = [
        Daemon(id=1, pid=4242, host="box", started_at=AT - timedelta(hours=1),
               last_heartbeat_at=beat),
        ChainState(chain="base", chain_id=8453, cursor=900, head=1000, final_block=990,
                   cursor_time=AT - timedelta(minutes=3), last_poll_at=beat,
                   last_ok_at=AT - timedelta(minutes=10), rpc_ok=False, degraded=True,
                   last_error=f"HTTP 429 from http://127.0.0.1:9/v2/{SECRET}",
                   halted_by=event),
        ChainState(chain="gone", chain_id=10, cursor=5, head=5, final_block=5,
                   last_poll_at=beat, last_ok_at=beat),
        ChainResume(chain="base", event_id="EVT-" + "cd" * 10, resumed_by="Ops Person",
                    resumed_at=AT - timedelta(days=2), cursor=800),
        OutboxEvent(id=event, type="watcher.finality_violation", dedupe_key="k1",
                    created_at=AT, body="{}", fanned_out=True),
        OutboxEvent(id="EVT-" + "ef" * 10, type="payment.detected", dedupe_key="k2",
                    created_at=AT, body="{}", fanned_out=False),
        Delivery(event_id=event, channel="webhook:crm", status="pending", next_attempt_at=AT),
        Delivery(event_id=event, channel="apprise:ops", status="dead", next_attempt_at=AT),
        DisabledChannel(channel="webhook:crm", disabled_at=AT - timedelta(hours=2),
                        reason="HTTP 410", event_id=event),
    ]  # fmt: skip
    if shared:
        rows += [
            DaemonInstance(holder="box/4242/aa", host="box", pid=4242, started_at=AT,
                           last_heartbeat_at=beat, expires_at=FAR),
            DaemonInstance(holder="old/7/bb", host="old", pid=7,
                           started_at=AT - timedelta(days=1),
                           last_heartbeat_at=AT - timedelta(days=1),
                           expires_at=AT - timedelta(days=1), stopped_at=AT - timedelta(days=1)),
            ChainLease(chain="base", holder="box/4242/aa", acquired_at=AT, expires_at=FAR),
        ]  # fmt: skip
    try:
        with transaction(engine) as session:
            for row in rows:
                session.add(row)
                session.flush()
    finally:
        engine.dispose()


@pytest.mark.parametrize("shared", [False, True], ids=["one-daemon", "daemons-and-leases"])
def test_status_json_prints_what_the_engine_path_prints(invoiced: Workspace, shared: bool) -> None:
    """On a populated database (lagging, failing, halted, resumed and unconfigured chains,
    outbox backlog, a disabled channel, daemons and leases) ``status --json`` prints exactly
    the engine path's bytes."""
    populate(invoiced, shared=shared)
    expected = engine_path(invoiced)
    document = json.loads(expected)
    assert document["chains"][0]["halted_by"] and document["chains"][-1]["configured"] is False
    assert SECRET not in expected and document["disabled_channels"]
    assert len(document["daemons"]) == (2 if shared else 0)
    result = direct_status(invoiced)
    assert result.stdout == expected


def direct_status(ws: Workspace) -> subprocess.CompletedProcess[str]:
    return direct(ws, "status", "--json")


def direct(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    """A read command run as the real program, checked to have read through the DB-API
    (SQLAlchemy never imported), not through the engine path it falls back to."""
    result = run_traced(ws, args)
    names = imported(result.stderr)
    assert "watcher" in names and "sqlalchemy" not in names
    assert [line for line in result.stderr.splitlines() if "import time:" not in line] == []
    return result


def test_status_json_on_a_fresh_database_prints_what_the_engine_path_prints(
    template_sets: Callable[[str], Templates], store: str, tmp_path: Path
) -> None:
    """A database with retainers and no chain polled yet: the same bytes both ways."""
    ws = template_sets(store).copy("seeded", tmp_path / "ws")
    assert direct_status(ws).stdout == engine_path(ws)


def test_status_check_and_text_report_read_the_same_document(invoiced: Workspace) -> None:
    """``status --check`` exits 1 naming the halted chain, and the text report names it."""
    populate(invoiced, shared=False)
    check = invoiced.run("status", "--check", "--json")
    assert check.returncode == 1
    assert check.stdout == engine_path(invoiced)
    assert check.stderr.startswith("proofwatch: error: unhealthy: ")
    assert "chain base is halted by finality violation EVT-" in check.stderr
    text = invoiced.run("status")
    assert text.returncode == 0, text.stderr
    assert "halted" in text.stdout and "gone (not configured)" in text.stdout


def test_status_before_init_is_refused_as_before_and_creates_nothing(
    template_sets: Callable[[str], Templates], store: str, tmp_path: Path
) -> None:
    """No database yet: exit 1, the one line that says to run init, and no database made."""
    ws = template_sets(store).copy("bare", tmp_path / "ws")
    result = ws.run("status", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr == "proofwatch: error: database is not initialised: run `proofwatch init`\n"
    )
    assert not ws.has_database()


def test_status_on_another_schema_version_asks_for_a_migration(invoiced: Workspace) -> None:
    """A database at an older schema version: exit 1, the one line naming both versions."""
    engine = make_engine(load_settings(invoiced.config).database_url)
    try:
        with engine.begin() as conn:
            sql = "UPDATE meta SET value = :v WHERE key = 'schema_version'"
            conn.execute(sa.text(sql), {"v": str(SCHEMA_VERSION - 1)})
    finally:
        engine.dispose()
    result = invoiced.run("status", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"proofwatch: error: database schema is version {SCHEMA_VERSION - 1}, this program "
        f"needs {SCHEMA_VERSION}: run `proofwatch init` to migrate\n"
    )


def test_status_with_a_bad_config_is_refused_with_the_config_error(invoiced: Workspace) -> None:
    """A bad key: exit 2 and the same one line ``config check`` prints."""
    invoiced.config.write_text(invoiced.config.read_text().replace("due_days = 7", "due_days = 0"))
    result = invoiced.run("status", "--json")
    check = invoiced.run("config", "check")
    assert (result.returncode, check.returncode) == (2, 2)
    assert result.stdout == ""
    assert result.stderr == check.stderr
    assert "billing.due_days" in result.stderr and len(result.stderr.splitlines()) == 1


def paid_rows(ws: Workspace) -> None:
    """INV-1 paid by two final USDC transfers (one of them above 2**64 base units), with its
    cycle and frozen proof; a native transfer matched to nothing."""
    settings = load_settings(ws.config)
    engine = make_engine(settings.database_url)
    usdc = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    payer = "0x52908400098527886E0F7030069857D2E4169EE7"
    wallet = "0xB3e9568A9cbB624403743340358c85CCce130893"

    def transfer(n: int, amount: int, token: str | None) -> Transfer:
        return Transfer(
            uid=f"8453:0x{n:064x}:{'erc20' if token else 'native'}:{n}",
            chain="base",
            chain_id=8453,
            kind="erc20" if token else "native",
            tx_hash=f"0x{n:064x}",
            log_index=n if token else None,
            block_number=100 + n,
            block_hash=f"0x{n + 7:064x}",
            block_time=AT - timedelta(hours=n),
            from_address=payer,
            to_address=wallet,
            asset="USDC" if token else "ETH",
            token_address=token,
            decimals=6 if token else 18,
            amount=amount,
            status="final" if token else "seen",
            detected_at=AT,
            finalized_at=AT if token else None,
            final_block=200 if token else None,
        )

    try:
        with transaction(engine) as session:
            rows = [transfer(1, 1_000_000_000, usdc), transfer(2, 2**64 + 5, usdc),
                    transfer(3, 10**18 + 1, None)]  # fmt: skip
            for row in rows:
                session.add(row)
            session.flush()
            for row in rows[:2]:
                assert row.id is not None
                session.add(Allocation(transfer_id=row.id, invoice_id=1, rule="amount",
                                       created_at=AT))  # fmt: skip
            session.add(Cycle(retainer_id=2, period_index=1, anchor_at=AT, anchor_index=1,
                              starts_at=AT, ends_at=AT + timedelta(days=28), status="open",
                              funded_by_invoice=1, proof_tx_hash=f"0x{1:064x}"))  # fmt: skip
            bundle = {"invoice": {"id": "INV-1"}, "payments": [{"tx_hash": f"0x{1:064x}"}]}
            session.add(Proof(invoice_id=1, bundle=json.dumps(bundle), created_at=AT))
    finally:
        engine.dispose()


def _printed(value: Any) -> str:
    return json.dumps(value, indent=2, default=str) + "\n"


#: Each read command and the engine-path read it must print the same bytes as.
READS: dict[tuple[str, ...], Callable[[Any], str]] = {
    ("retainer", "list", "--json"): lambda e: _printed(queries.retainers(e)),
    ("retainer", "show", "RET-2", "--json"): lambda e: _printed(queries.retainer(e, "RET-2")),
    ("invoice", "list", "--json"): lambda e: _printed(queries.invoices(e)),
    ("invoice", "list", "--status", "open", "--retainer", "RET-2", "--json"): lambda e: _printed(
        queries.invoices(e, status="open", retainer="RET-2")
    ),
    ("invoice", "show", "INV-1", "--json"): lambda e: _printed(queries.invoice(e, "INV-1")),
    ("transfers", "--json"): lambda e: _printed(queries.payments(e)),
    ("transfers", "--unassigned", "--json"): lambda e: _printed(
        queries.payments(e, unassigned=True)
    ),
    ("cycles", "--json"): lambda e: _printed(queries.cycles(e)),
    ("proof", "INV-1"): lambda e: json.dumps(load_proof(e, "INV-1"), indent=2) + "\n",
}


def test_read_commands_print_what_the_engine_path_prints(invoiced: Workspace) -> None:
    """Retainers, invoices (filtered too), transfers, cycles and a proof: each read command
    reads without SQLAlchemy and prints exactly the engine path's bytes."""
    paid_rows(invoiced)
    engine = make_engine(load_settings(invoiced.config).database_url, readonly=True)
    try:
        expected = {args: read(engine) for args, read in READS.items()}
    finally:
        engine.dispose()
    invoice = json.loads(expected[("invoice", "show", "INV-1", "--json")])
    assert [p["amount_base_units"] for p in invoice["payments"]] == ["1000000000", str(2**64 + 5)]
    assert len(json.loads(expected[("transfers", "--unassigned", "--json")])) == 1
    for args, want in expected.items():
        assert direct(invoiced, *args).stdout == want, args


def test_read_commands_keep_their_refusals(invoiced: Workspace) -> None:
    """An unknown id (exit 2) and a proof of an unpaid invoice (exit 3): the same one line."""
    for args, code, line in [
        (("invoice", "show", "INV-9", "--json"), 2, "unknown invoice 'INV-9'"),
        (("invoice", "list", "--retainer", "RET-9", "--json"), 2, "unknown retainer 'RET-9'"),
        (("retainer", "show", "bogus"), 2, "retainer id 'bogus' is not like RET-1"),
        (("proof", "INV-2"), 3, "INV-2 is open: a proof exists only once it is paid by final"),
    ]:
        result = invoiced.run(*args)
        assert (result.returncode, result.stdout) == (code, ""), (args, result.stderr)
        assert result.stderr.startswith(f"proofwatch: error: {line}"), result.stderr
        assert len(result.stderr.splitlines()) == 1
