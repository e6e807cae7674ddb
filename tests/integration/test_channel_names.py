"""Channels keep their names across config edits: a pending delivery is bound to the channel it
was made for, never to whatever channel takes its old place in the list.

Real local webhook receivers and a real SQLite file; the watcher's clock is injected.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import structlog
from sqlalchemy.engine import Engine

from tests.integration.test_notify import (
    OTHER_SECRET,
    SECRET,
    Clock,
    add_event,
    clock,
    db_path,
    deliver,
    deliveries,
    engine,
    hook,
    settings_for,
)
from tests.support.receivers import WebhookReceiver
from watcher.notify.outbox import build_channels
from watcher.settings import AppriseSettings, WebhookSettings

__all__ = ["clock", "db_path", "engine"]  # fixtures used here


def test_a_removed_channels_pending_delivery_is_never_sent_to_the_channel_after_it(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """With webhooks [A, B], A failing: removing A from the config leaves A's delivery pending
    and logged, B receives the event exactly once with its own secret, and putting A back
    delivers A's delivery to A."""
    with WebhookReceiver(SECRET) as a_site, WebhookReceiver(OTHER_SECRET) as b_site:
        a_site.fail_with(503)
        a, b = hook(a_site.url("/a"), secret=SECRET), hook(b_site.url("/b"), secret=OTHER_SECRET)
        both = settings_for(tmp_path, webhooks=(a, b))
        event = add_event(engine, clock)
        first = deliver(engine, both, clock)
        assert (first.delivered, first.failed) == (1, 1)

        only_b = settings_for(tmp_path, webhooks=(b,))
        clock.advance(minutes=10)
        with structlog.testing.capture_logs() as logs:
            report = deliver(engine, only_b, clock)
        assert [r.event_id for r in b_site.accepted()] == [event.id]  # once, not twice
        assert all(r.valid_signature for r in b_site.accepted())
        assert report.unconfigured == 1 and report.delivered == 0
        (a_delivery,) = [d for d in deliveries(engine) if d.channel == a.channel_name]
        assert (a_delivery.status, a_delivery.attempts) == ("pending", 1)
        (line,) = [e for e in logs if e["event"] == "notify.channel_not_configured"]
        assert (line["channel"], line["pending"]) == (a.channel_name, 1)

        a_site.recover()
        clock.advance(minutes=10)
        back = deliver(engine, settings_for(tmp_path, webhooks=(b, a)), clock)
        assert back.delivered == 1
        assert [r.event_id for r in a_site.accepted()] == [event.id]
        assert len(b_site.accepted()) == 1
    assert {d.channel: d.status for d in deliveries(engine)} == {
        a.channel_name: "delivered",
        b.channel_name: "delivered",
    }


def test_a_named_channel_keeps_its_deliveries_when_its_url_moves(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """A webhook with `name` keeps its pending deliveries when the operator moves it to a new
    URL: the name, not the URL or the position, is what they are bound to."""
    with WebhookReceiver(SECRET) as old_site, WebhookReceiver(SECRET) as new_site:
        old_site.fail_with(503)
        named = settings_for(
            tmp_path, webhooks=(WebhookSettings(old_site.url(), SECRET, name="crm"),)
        )
        assert [c.name for c in build_channels(named)] == ["crm"]
        event = add_event(engine, clock)
        deliver(engine, named, clock)
        moved = settings_for(
            tmp_path, webhooks=(WebhookSettings(new_site.url(), SECRET, name="crm"),)
        )
        clock.advance(minutes=10)
        assert deliver(engine, moved, clock).delivered == 1
        assert [r.event_id for r in new_site.accepted()] == [event.id]
        assert old_site.accepted() == []


def test_a_named_apprise_table_gets_its_name_and_its_own_filter(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """A [[notify.apprise]] entry delivers under its `name`, only the events its `events`
    filter selects; a plain `urls` entry keeps the default Apprise filter."""
    with WebhookReceiver() as named_sink, WebhookReceiver() as plain_sink:
        named = AppriseSettings(f"json://127.0.0.1:{named_sink.port}/ops", "ops", ("watcher.*",))
        settings = settings_for(tmp_path, urls=(f"json://127.0.0.1:{plain_sink.port}/all",))
        settings = replace(settings, notify=replace(settings.notify, apprise=(named,)))
        plain_name = settings.notify.apprise_channels()[0].channel_name
        assert [c.name for c in build_channels(settings)] == [plain_name, "ops"]
        add_event(engine, clock, "watcher.degraded", {"chain": "base"}, key="d")
        add_event(engine, clock, "payment.detected", {"chain": "base"}, key="p")
        add_event(engine, clock, "cycle.opened", key="c")
        deliver(engine, settings, clock)
        assert len(named_sink.requests) == 1  # watcher.degraded only
        assert len(plain_sink.requests) == 2  # watcher.degraded and cycle.opened
    assert sorted((d.channel, d.status) for d in deliveries(engine)) == sorted(
        [("ops", "delivered"), (plain_name, "delivered"), (plain_name, "delivered")]
    )
