"""A 410 Gone answer disables its channel: real receivers, a real SQLite file, the real CLI.

The watcher's clock is injected; nothing sleeps. ``status`` and ``notify enable`` run as
``python -m watcher`` subprocesses on the same config and database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tests.support.receivers import WebhookReceiver
from watcher.errors import Refused
from watcher.notify.disabled import disabled_channels, enable
from watcher.notify.outbox import deliver_due
from watcher.runtime.http import render_page
from watcher.runtime.status import status_document
from watcher.settings import Settings, load_settings
from watcher.store.db import SCHEMA_VERSION, make_engine, migrate, read_session, transaction
from watcher.store.outbox import emit
from watcher.store.tables import Delivery, DeliveryAttempt, OutboxEvent

SECRET = "gone-test-secret-0123456789"
T0 = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def gone() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as r:
        yield r


@pytest.fixture
def other() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as r:
        yield r


def write_config(folder: Path, *urls: str) -> Path:
    """A config with one chain (never contacted) and one webhook per URL, secrets in .env."""
    hooks = "".join(
        f'\n[[notify.webhooks]]\nname = "webhook:{i}"\nurl = "${{HOOK_{i}}}"\n'
        'secret = "${HOOK_SECRET}"\n'
        for i in range(len(urls))
    )
    config = folder / "watcher.toml"
    config.write_text(
        '[database]\nurl = "sqlite:///watcher.db"\n\n'
        '[[chains]]\nname = "local"\nchain_id = 31337\nrpc_urls = ["http://127.0.0.1:9"]\n'
        f'receiving_address = "{WALLET}"\n\n[notify]\ntimeout = 5\n' + hooks
    )
    env = [f"HOOK_{i}={url}" for i, url in enumerate(urls)] + [f"HOOK_SECRET={SECRET}"]
    (folder / ".env").write_text("\n".join(env) + "\n")
    return config


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "PROOFWATCH_"))}
    env.update({"WATCHER_NOW": "2026-03-14T11:00:00Z", "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "watcher", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def add_event(engine: Engine, clock: Clock, n: int) -> str:
    with transaction(engine) as session:
        return emit(
            session, "transfer.unassigned", {"n": n}, dedupe_key=f"gone-test:{n}", now=clock.now
        )


def setup(tmp_path: Path, *urls: str) -> tuple[Path, Settings, Engine]:
    config = write_config(tmp_path, *urls)
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    migrate(engine)
    return config, settings, engine


def test_410_disables_the_channel_keeps_its_deliveries_and_tells_the_other_channels(
    tmp_path: Path, gone: WebhookReceiver, other: WebhookReceiver
) -> None:
    """A 410 answer is recorded, disables that webhook with a watcher.channel_disabled event
    (delivered to the other webhook), and later events wait on the disabled one, unattempted."""
    _config, settings, engine = setup(tmp_path, gone.url(), other.url())
    clock = Clock(T0)
    first = add_event(engine, clock, 1)
    second = add_event(engine, clock, 2)
    gone.fail_with(410)

    report = deliver_due(engine, settings, clock, rand=lambda: 0.0)

    assert [r.event_id for r in gone.requests] == [first]  # the second is never tried
    assert report.gone == 1 and report.deferred == 0
    with read_session(engine) as session:
        held = session.exec(
            select(Delivery).where(Delivery.channel == "webhook:0").order_by(col(Delivery.id))
        ).all()
        tried = session.exec(select(DeliveryAttempt)).all()
        events = session.exec(
            select(OutboxEvent).where(OutboxEvent.type == "watcher.channel_disabled")
        ).all()
    assert [(d.event_id, d.status, d.attempts) for d in held] == [
        (first, "pending", 1),
        (second, "pending", 0),
    ]
    assert held[0].last_error == "HTTP 410: channel disabled"
    assert ("HTTP 410", False) in [(a.detail, a.ok) for a in tried]
    (event,) = events
    assert json.loads(event.body)["data"] == {
        "channel": "webhook:0",
        "reason": "HTTP 410",
        "event_id": first,
        "disabled_at": "2026-03-14T10:00:00Z",
    }

    clock.now += timedelta(hours=1)
    later = add_event(engine, clock, 3)
    again = deliver_due(engine, settings, clock, rand=lambda: 0.0)
    assert len(gone.requests) == 1  # nothing more is sent to the disabled webhook
    assert again.held == 4  # first, second, watcher.channel_disabled itself, and later
    received = [r.event_id for r in other.accepted()]
    assert received[:2] == [first, second] and later in received and event.id in received
    assert [(c["channel"], c["pending"]) for c in disabled_channels(engine)] == [("webhook:0", 4)]


def test_enable_resumes_every_waiting_delivery_and_refuses_an_enabled_channel(
    tmp_path: Path, gone: WebhookReceiver
) -> None:
    """After ``enable`` the held deliveries (the 410'd one first) go out; enabling a channel
    that is not disabled is refused."""
    _config, settings, engine = setup(tmp_path, gone.url())
    clock = Clock(T0)
    first = add_event(engine, clock, 1)
    gone.fail_with(410, times=1)
    deliver_due(engine, settings, clock, rand=lambda: 0.0)
    assert enable(engine, "webhook:0") == 1  # watcher.channel_disabled is not fanned out yet
    report = deliver_due(engine, settings, clock, rand=lambda: 0.0)
    assert report.delivered == 2  # the first event and watcher.channel_disabled
    assert gone.accepted()[0].event_id == first
    assert disabled_channels(engine) == []
    with pytest.raises(Refused, match="'webhook:0' is not disabled"):
        enable(engine, "webhook:0")


def test_status_shows_the_disabled_channel_and_notify_enable_lifts_it(
    tmp_path: Path, gone: WebhookReceiver
) -> None:
    """``status`` names the disabled channel (text and JSON, and the status page); ``notify
    enable`` exits 0 once and 3 the second time."""
    config, settings, engine = setup(tmp_path, gone.url())
    clock = Clock(T0)
    first = add_event(engine, clock, 1)
    add_event(engine, clock, 2)
    gone.fail_with(410)
    deliver_due(engine, settings, clock, rand=lambda: 0.0)

    text = cli(config, "status")
    document = cli(config, "status", "--json")
    assert document.returncode == 0, document.stderr
    (entry,) = json.loads(document.stdout)["disabled_channels"]
    assert entry == {
        "channel": "webhook:0",
        "disabled_at": "2026-03-14T10:00:00Z",
        "reason": "HTTP 410",
        "event_id": first,
        "pending": 2,
    }
    assert entry == status_document(engine, settings, clock.now)["disabled_channels"][0]
    assert (
        "notification channel webhook:0 disabled since 2026-03-14T10:00:00Z (HTTP 410 on "
        f"{first}), 2 pending: proofwatch notify enable webhook:0"
    ) in render_page(engine, settings, clock.now)
    assert text.returncode == 0, text.stderr
    assert (
        f"channel  webhook:0 disabled since 2026-03-14T10:00:00Z (HTTP 410 on {first}), "
        "2 pending: proofwatch notify enable webhook:0"
    ) in text.stdout

    enabled = cli(config, "notify", "enable", "webhook:0")
    refused = cli(config, "notify", "enable", "webhook:0")
    assert (enabled.returncode, enabled.stdout) == (0, "webhook:0: enabled, 2 pending deliveries\n")
    assert refused.returncode == 3
    assert refused.stderr.strip().endswith("channel 'webhook:0' is not disabled (none is disabled)")
    assert json.loads(cli(config, "status", "--json").stdout)["disabled_channels"] == []


def test_migrating_a_database_without_the_table_creates_it(tmp_path: Path) -> None:
    """A database from before disabled channels existed gets the table from ``migrate``."""
    _config, _settings, engine = setup(tmp_path, "http://127.0.0.1:9/hook")
    path = tmp_path / "watcher.db"
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE disabled_channels")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    assert migrate(engine) == (2, SCHEMA_VERSION)
    assert disabled_channels(engine) == []
