"""The HTML status page from ``templates/status.html``, rendered from a real database (a SQLite
file and a PostgreSQL database).

Stored text reaches every section of the page (chains, the warnings, retainers, invoices,
cycles, payments); the page must show it escaped, never as markup.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.notify.disabled import disable
from watcher.runtime.http import render_page
from watcher.settings import Settings, load_settings
from watcher.store.db import make_engine, migrate, transaction
from watcher.store.tables import ChainState, Cycle, Transfer

T0 = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
PAYER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
EVIL = "<img src=x onerror=alert(1)>"
EVIL_SHOWN = "&lt;img src=x onerror=alert(1)&gt;"
TX = "0x" + "ab" * 32


@pytest.fixture
def page(tmp_path: Path, db_url: str) -> Iterator[str]:
    """The page of a database (each store) whose stored text carries markup in every section."""
    config = tmp_path / "watcher.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n\n'
        '[[chains]]\nname = "local"\nchain_id = 31337\nrpc_urls = ["http://127.0.0.1:9"]\n'
        f'receiving_address = "{WALLET}"\nexplorer_url = "https://scan.example/"\n'
    )
    settings: Settings = load_settings(config)
    engine = make_engine(settings.database_url)
    reader = make_engine(settings.database_url, readonly=True)
    try:
        migrate(engine)
        ctx = Context(settings, engine, lambda: T0)
        retainer = ledger.add_retainer(
            ctx, client=f"Acme {EVIL}", chain="local", asset="ETH", monthly="0.5"
        )
        ledger.approve_retainer(ctx, f"RET-{retainer.id}", by=f"Jane {EVIL}")
        invoice = ledger.issue_invoice(ctx, f"RET-{retainer.id}")
        with transaction(engine) as session:
            session.add(
                ChainState(
                    chain="local",
                    chain_id=31337,
                    head=120,
                    final_block=100,
                    cursor=118,
                    last_poll_at=T0,
                    last_ok_at=T0,
                    rpc_ok=False,
                    last_error=f"node said {EVIL}",
                    degraded=True,
                    halted_by=f"FV-1{EVIL}",
                )
            )
            session.add(
                Transfer(
                    uid=f"31337:{TX}:native:3", chain="local", chain_id=31337, kind="native",
                    tx_hash=TX, log_index=3, block_number=110, block_hash="0x" + "cd" * 32,
                    from_address=PAYER, to_address=WALLET, asset="ETH", decimals=18,
                    amount=10**17, detected_at=T0,
                )
            )  # fmt: skip
            assert retainer.id is not None and invoice.id is not None
            session.add(
                Cycle(
                    retainer_id=retainer.id,
                    period_index=1,
                    anchor_at=T0,
                    anchor_index=1,
                    starts_at=T0,
                    ends_at=T0 + timedelta(days=30),
                    funded_by_invoice=invoice.id,
                    proof_tx_hash=f"0x{EVIL}",
                )
            )
            disable(session, "webhook:0", reason=f"HTTP 410 {EVIL}", event_id="EVT-1", now=T0)
        yield render_page(reader, settings, T0)
    finally:
        engine.dispose()
        reader.dispose()


def test_every_section_shows_stored_markup_escaped(page: str) -> None:
    """Markup stored in a client, an approver, a chain error, a halt, a disabled channel's
    reason and a proof transaction appears escaped in its section and never as a tag."""
    assert EVIL not in page and "<img" not in page
    for shown in (
        f"Acme {EVIL_SHOWN}</td>",  # retainers
        f"Jane {EVIL_SHOWN}</td>",
        f"Acme {EVIL_SHOWN}<div class='sub'>RET-1</div>",  # invoices and cycles
        f'<div class="err">node said {EVIL_SHOWN}</div>',  # chains
        f'<span class="pill bad">halted by FV-1{EVIL_SHOWN}</span>',
        f"disabled since 2026-03-14T10:00:00Z (HTTP 410 {EVIL_SHOWN} on EVT-1)",  # warnings
        f'<a href="https://scan.example/tx/0x{EVIL_SHOWN}">',  # cycles: the proof tx link
    ):
        assert shown in page, shown
    assert page.count(f"Acme {EVIL_SHOWN}") == 3


def test_payments_link_to_the_explorer_and_show_an_unassigned_inflow(page: str) -> None:
    """A payment links its transaction to the chain's explorer (shortened hash, the full one
    in the title), names its log index and, matched to no invoice, says unassigned."""
    shortened = f"{TX[:10]}…{TX[-6:]}"
    assert (
        f'<a href="https://scan.example/tx/{TX}"><code title="{TX}">{shortened}</code></a>'
        " <span class='sub'>#3</span>"
    ) in page
    assert f'<code title="{PAYER}">{PAYER[:8]}…{PAYER[-6:]}</code>' in page
    assert '<span class="warn">unassigned</span>' in page
    assert "<title>proofwatch status</title>" in page and "<script" not in page
