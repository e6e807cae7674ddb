"""Outbox delivery to real local receivers: a signed-webhook HTTP server and an SMTP server.

The watcher's clock is injected and moved forward to make retries due; nothing here sleeps.
The database is a real SQLite file.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from standardwebhooks import Webhook, WebhookVerificationError

from tests.support.receivers import SmtpServer, WebhookReceiver, free_port, wait_for
from watcher.errors import NotFound, Refused
from watcher.notify.messages import render
from watcher.notify.outbox import Channel, DeliveryReport, deliver_due, retry_dead, wants
from watcher.notify.webhook import (
    WebhookChannel,
    signature_header,
    standard_key,
    standard_signature,
    verify_signature,
)
from watcher.settings import NotifySettings, Settings, WebhookSettings
from watcher.store.db import make_engine, migrate, read_session, transaction
from watcher.store.outbox import emit
from watcher.store.tables import Delivery, DeliveryAttempt, OutboxEvent

SECRET = "whsec-test-0123456789abcdef"
OTHER_SECRET = "whsec-other-fedcba9876543210"
#: A Standard Webhooks secret: ``whsec_`` and the base64 of a 32-byte key.
STANDARD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
SMTP_PASSWORD = "Sm7pPa55-w0rd-xyz"
T0 = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
TX = "0x" + "5e" * 32
CYCLE_DATA = {
    "retainer_id": "RET-1",
    "client": "Acme GmbH",
    "cycle_id": "CYC-2",
    "period_index": 2,
    "starts_at": "2026-03-14T09:12:00Z",
    "ends_at": "2026-04-14T09:12:00Z",
    "invoice_id": "INV-2",
    "amount": "1500.000137",
    "asset": "USDC",
    "chain": "base",
    "chain_id": 8453,
    "tx_hash": TX,
    "block_number": 22000123,
    "explorer_tx_url": f"https://basescan.org/tx/{TX}",
}


class Clock:
    """The watcher's injected clock; tests move it forward instead of waiting."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "watcher.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{db_path}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as r:
        yield r


def settings_for(
    tmp_path: Path, *, webhooks: tuple[WebhookSettings, ...] = (), urls: tuple[str, ...] = ()
) -> Settings:
    return Settings(
        config_path=tmp_path / "watcher.toml",
        database_url=f"sqlite:///{tmp_path / 'watcher.db'}",
        chains=(),
        notify=NotifySettings(urls=urls, webhooks=webhooks, timeout=5.0),
        secrets=tuple(h.secret for h in webhooks) + urls,
    )


def hook(url: str, secret: str = SECRET, events: tuple[str, ...] = ("*",)) -> WebhookSettings:
    return WebhookSettings(url=url, secret=secret, events=events)


def dead_url() -> str:
    """A URL on a local port where nothing listens: connection refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


def add_event(
    engine: Engine,
    clock: Clock,
    type_: str = "cycle.opened",
    data: dict[str, Any] | None = None,
    key: str = "",
) -> OutboxEvent:
    with transaction(engine) as session:
        event_id = emit(
            session,
            type_,
            CYCLE_DATA if data is None else data,
            dedupe_key=key or f"{type_}:{clock.now.isoformat()}",
            now=clock.now,
        )
        return session.exec(select(OutboxEvent).where(OutboxEvent.id == event_id)).one()


def deliver(
    engine: Engine, settings: Settings, clock: Clock, channels: Sequence[Channel] | None = None
) -> DeliveryReport:
    return deliver_due(engine, settings, clock, channels=channels, rand=lambda: 0.0)


def deliveries(engine: Engine, event_id: str | None = None) -> list[Delivery]:
    with read_session(engine) as session:
        query = select(Delivery).order_by(col(Delivery.id))
        if event_id is not None:
            query = query.where(Delivery.event_id == event_id)
        return list(session.exec(query).all())


def attempts(engine: Engine, delivery_id: int | None = None) -> list[DeliveryAttempt]:
    with read_session(engine) as session:
        query = select(DeliveryAttempt).order_by(col(DeliveryAttempt.id))
        if delivery_id is not None:
            query = query.where(DeliveryAttempt.delivery_id == delivery_id)
        return list(session.exec(query).all())


# --- signed webhooks -----------------------------------------------------------------------------


def test_event_is_delivered_once_with_valid_signature_and_exact_headers(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A new event reaches the webhook once: stored body unchanged, id header, valid signature."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    event = add_event(engine, clock)

    report = deliver(engine, settings, clock)
    clock.advance(hours=1)
    again = deliver(engine, settings, clock)

    (got,) = receiver.requests
    assert got.method == "POST" and got.path == "/hook"
    assert got.body == event.body.encode()
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Proofwatch-Event-Id"] == event.id
    assert got.valid_signature is True
    assert got.json() == {
        "id": event.id,
        "type": "cycle.opened",
        "created_at": "2026-03-14T10:00:00Z",
        "data": CYCLE_DATA,
    }
    assert (report.events_fanned_out, report.deliveries_created, report.delivered) == (1, 1, 1)
    assert again == DeliveryReport()
    (delivery,) = deliveries(engine)
    name = settings.notify.webhooks[0].channel_name  # stable, from the URL
    assert (delivery.channel, delivery.status, delivery.attempts) == (name, "delivered", 1)
    assert delivery.delivered_at == T0
    assert [(a.ok, a.detail) for a in attempts(engine)] == [(True, "HTTP 200")]


def test_whsec_secret_adds_standard_webhooks_headers_verified_by_the_library(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """With a whsec_ secret the delivery verifies with the standardwebhooks package and with
    the Proofwatch-Signature scheme, both over the same stored body and timestamp."""
    with WebhookReceiver(STANDARD_SECRET) as receiver:
        settings = settings_for(tmp_path, webhooks=(hook(receiver.url(), STANDARD_SECRET),))
        event = add_event(engine, clock)
        report = deliver(engine, settings, clock)
        (got,) = receiver.requests
    assert report.delivered == 1
    assert got.standard_valid is True
    assert got.valid_signature is True
    assert Webhook(STANDARD_SECRET).verify(got.body, got.headers) == json.loads(event.body)
    assert got.headers["webhook-id"] == event.id == got.headers["Proofwatch-Event-Id"]
    t = got.headers["webhook-timestamp"]
    assert got.headers["Proofwatch-Signature"].startswith(f"t={t},v1=")
    assert got.headers["webhook-signature"].startswith("v1,")
    other = Webhook("whsec_" + base64.b64encode(bytes(range(1, 33))).decode())
    with pytest.raises(WebhookVerificationError):
        other.verify(got.body, got.headers)


def test_plain_secret_sends_no_standard_webhooks_headers(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A secret without the whsec_ prefix gets only today's Proofwatch-* headers."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    add_event(engine, clock)
    deliver(engine, settings, clock)
    (got,) = receiver.requests
    assert got.valid_signature is True and got.standard_valid is None
    assert not {"webhook-id", "webhook-timestamp", "webhook-signature"} & {
        k.lower() for k in got.headers
    }


def test_standard_signature_matches_the_specification_example() -> None:
    """The webhook-signature of the Standard Webhooks specification's own example is reproduced."""
    key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert key == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = '{"test": 2432232314}'
    assert (
        standard_signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_standard_key_refuses_a_whsec_secret_that_is_not_a_usable_key() -> None:
    """A whsec_ secret must be base64 of 24 to 64 bytes; other secrets have no standard key."""
    assert standard_key(SECRET) is None
    assert standard_key("whsec_" + base64.b64encode(b"k" * 24).decode().rstrip("=")) == b"k" * 24
    with pytest.raises(ValueError, match="not base64"):
        standard_key("whsec_not*base64!")
    with pytest.raises(ValueError, match="24 to 64 bytes, not 12"):
        standard_key("whsec_" + base64.b64encode(b"k" * 12).decode())


def test_receiver_error_is_retried_with_backoff_and_delivered_after_recovery(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A 500 answer schedules a retry 10 s later; once the receiver recovers it gets the same
    id and body."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    event = add_event(engine, clock)
    receiver.fail_with(500)

    first = deliver(engine, settings, clock)
    (delivery,) = deliveries(engine)
    assert first.failed == 1
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, "HTTP 500")
    assert delivery.next_attempt_at == T0 + timedelta(seconds=10)

    clock.advance(seconds=9)
    assert deliver(engine, settings, clock).delivered == 0  # not due yet: no request
    assert len(receiver.requests) == 1

    receiver.recover()
    clock.advance(seconds=1)
    assert deliver(engine, settings, clock).delivered == 1

    bodies = {r.body for r in receiver.requests}
    ids = {r.event_id for r in receiver.requests}
    assert [r.status for r in receiver.requests] == [500, 200]
    assert bodies == {event.body.encode()} and ids == {event.id}
    assert all(r.valid_signature for r in receiver.requests)
    assert [(a.ok, a.detail) for a in attempts(engine)] == [(False, "HTTP 500"), (True, "HTTP 200")]


def test_receiver_down_records_attempts_and_delivers_when_it_is_back(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """Connection refused is a recorded failed attempt; after a restart the event arrives."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    event = add_event(engine, clock)
    receiver.stop()

    deliver(engine, settings, clock)
    clock.advance(seconds=10)
    deliver(engine, settings, clock)
    (delivery,) = deliveries(engine)
    assert delivery.attempts == 2
    assert [(a.ok, a.detail) for a in attempts(engine)] == [(False, "connection refused")] * 2

    receiver.restart()
    clock.advance(minutes=1)
    assert deliver(engine, settings, clock).delivered == 1
    (got,) = receiver.requests
    assert got.event_id == event.id and got.body == event.body.encode() and got.valid_signature


def test_three_days_of_failures_end_dead_and_retry_dead_requeues(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A delivery failing for 3 days is dead-lettered; ``retry_dead`` re-queues and it arrives."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    event = add_event(engine, clock)
    receiver.fail_with(503)

    for _ in range(50):
        report = deliver(engine, settings, clock)
        (delivery,) = deliveries(engine)
        if delivery.status == "dead":
            break
        clock.now = delivery.next_attempt_at
    assert report.dead == 1
    assert delivery.status == "dead" and delivery.last_error == "HTTP 503"
    assert attempts(engine)[-1].at == T0 + timedelta(days=3)
    assert len(receiver.requests) == delivery.attempts == 13

    clock.advance(days=1)
    assert deliver(engine, settings, clock).delivered == 0  # dead stays dead
    with pytest.raises(NotFound, match="EVT-nope"):
        retry_dead(engine, "EVT-nope", clock.now)

    receiver.recover()
    assert retry_dead(engine, event.id.lower(), clock.now) == 1
    with pytest.raises(Refused, match="no dead-lettered delivery"):
        retry_dead(engine, event.id, clock.now)
    assert deliver(engine, settings, clock).delivered == 1
    assert receiver.accepted()[-1].body == event.body.encode()
    assert deliveries(engine)[0].status == "delivered"


def test_failing_channel_does_not_delay_another_webhook_or_later_events(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A webhook whose URL refuses connections never holds back the other webhook's events."""
    settings = settings_for(
        tmp_path, webhooks=(hook(dead_url()), hook(receiver.url(), secret=SECRET))
    )
    first = [add_event(engine, clock, key=f"k{i}") for i in range(3)]

    report = deliver(engine, settings, clock)
    assert [r.event_id for r in receiver.accepted()] == [e.id for e in first]
    # The dead channel is tried once per run; its other deliveries wait for the next run.
    assert (report.delivered, report.failed, report.deferred) == (3, 1, 2)

    clock.advance(seconds=1)
    later = add_event(engine, clock, key="later")
    deliver(engine, settings, clock)
    assert receiver.accepted()[-1].event_id == later.id
    dead_name = settings.notify.webhooks[0].channel_name
    failing = [d for d in deliveries(engine) if d.channel == dead_name]
    assert {d.status for d in failing} == {"pending"}
    assert all(d.attempts <= 1 for d in failing)


def test_backlog_on_a_failing_channel_never_crowds_out_another_channel(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """However many deliveries a dead channel has due, each run still reaches the other one."""
    settings = settings_for(
        tmp_path,
        webhooks=(hook(dead_url()), hook(receiver.url(), events=("watcher.*",))),
    )
    for i in range(5):
        add_event(engine, clock, "cycle.opened", key=f"backlog{i}")
    wanted = add_event(engine, clock, "watcher.degraded", {"chain": "base"}, key="wanted")
    receiver.stop()
    deliver(engine, settings, clock)  # both channels fail; the backlog stays due

    receiver.restart()
    clock.advance(seconds=10)
    report = deliver_due(engine, settings, clock, max_events=2, rand=lambda: 0.0)
    assert [r.event_id for r in receiver.accepted()] == [wanted.id]
    assert report.delivered == 1


def test_poisoned_event_does_not_hold_back_later_events_on_its_channel(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """An event the receiver keeps refusing backs off alone; later events still go through."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    poisoned = add_event(engine, clock, key="poisoned")
    receiver.fail_event(poisoned.id, 400)
    deliver(engine, settings, clock)

    clock.advance(seconds=1)
    later = add_event(engine, clock, key="later")
    assert deliver(engine, settings, clock).delivered == 1
    assert [r.event_id for r in receiver.accepted()] == [later.id]
    assert deliveries(engine, poisoned.id)[0].last_error == "HTTP 400"


def test_network_io_happens_outside_database_transactions(
    tmp_path: Path, engine: Engine, db_path: Path, clock: Clock
) -> None:
    """While a channel sends, another connection can take SQLite's write lock at once."""
    probes: list[str] = []

    class LockProbe:
        name, events = "probe:0", ("*",)

        def send(self, event_id: str, body: str) -> tuple[bool, str]:
            conn = sqlite3.connect(db_path, timeout=0.2, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                probes.append("free")
            except sqlite3.OperationalError as exc:
                probes.append(str(exc))
            finally:
                conn.close()
            return True, "probe"

    add_event(engine, clock)
    deliver(engine, settings_for(tmp_path), clock, channels=[LockProbe()])
    assert probes == ["free"]


def test_crash_after_post_before_commit_repeats_identical_delivery(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A crash after the POST but before its result is stored re-sends the same id and body."""

    class Crash(BaseException):
        pass

    class CrashAfterSend:
        def __init__(self, inner: WebhookChannel) -> None:
            self.inner, self.name, self.events = inner, inner.name, inner.events

        def send(self, event_id: str, body: str) -> tuple[bool, str]:
            self.inner.send(event_id, body)
            raise Crash

    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    event = add_event(engine, clock)
    real = WebhookChannel(settings.notify.webhooks[0].channel_name, receiver.url(), SECRET)
    with pytest.raises(Crash):
        deliver(engine, settings, clock, channels=[CrashAfterSend(real)])
    assert deliveries(engine)[0].status == "pending" and attempts(engine) == []

    deliver(engine, settings, clock)
    first, second = receiver.accepted()
    assert first.event_id == second.event_id == event.id
    assert first.body == second.body == event.body.encode()
    assert len(attempts(engine)) == 1


def test_lost_commit_repeats_the_delivery_with_identical_body(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """If a delivery's recorded result is lost, the next run sends the identical request body."""
    settings = settings_for(tmp_path, webhooks=(hook(receiver.url()),))
    event = add_event(engine, clock)
    deliver(engine, settings, clock)
    with transaction(engine) as session:  # as if the commit after the POST never happened
        delivery = session.exec(select(Delivery)).one()
        for attempt in session.exec(select(DeliveryAttempt)):
            session.delete(attempt)
        delivery.status, delivery.attempts, delivery.delivered_at = "pending", 0, None
        session.add(delivery)

    deliver(engine, settings, clock)
    assert [r.body for r in receiver.accepted()] == [event.body.encode()] * 2
    assert {r.event_id for r in receiver.accepted()} == {event.id}


def test_deliveries_of_a_removed_channel_wait_untouched(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """A delivery whose channel left the config stays pending, unattempted, and is reported."""
    two = settings_for(tmp_path, webhooks=(hook(receiver.url()), hook(dead_url())))
    add_event(engine, clock)
    deliver(engine, two, clock)
    clock.advance(minutes=5)
    report = deliver(engine, settings_for(tmp_path, webhooks=(hook(receiver.url()),)), clock)
    assert report.unconfigured == 1
    (removed,) = [d for d in deliveries(engine) if d.channel == two.notify.webhooks[1].channel_name]
    assert (removed.status, removed.attempts) == ("pending", 1)


# --- routing -----------------------------------------------------------------------------------


def test_event_filters_route_events_to_the_right_channels(
    tmp_path: Path, engine: Engine, clock: Clock, receiver: WebhookReceiver
) -> None:
    """Webhooks get everything by default, a filter narrows a webhook, Apprise gets its defaults."""
    with WebhookReceiver() as apprise_sink:
        settings = settings_for(
            tmp_path,
            webhooks=(
                hook(receiver.url("/all")),
                hook(receiver.url("/pay"), events=("payment.*",)),
            ),
            urls=(f"json://127.0.0.1:{apprise_sink.port}/apprise",),
        )
        types = [
            "payment.detected",
            "cycle.opened",
            "invoice.renewal_issued",
            "watcher.degraded",
            "transfer.unassigned",
        ]
        for t in types:
            add_event(engine, clock, t, {"chain": "base"}, key=t)
        deliver(engine, settings, clock)
        routed: dict[str, set[str]] = {}
        with read_session(engine) as session:
            for d, e in session.exec(
                select(Delivery, OutboxEvent).join(
                    OutboxEvent, col(OutboxEvent.id) == col(Delivery.event_id)
                )
            ):
                routed.setdefault(d.channel, set()).add(e.type)
                assert d.status == "delivered"
        hooks, (apprise_channel,) = settings.notify.webhooks, settings.notify.apprise_channels()
        assert routed == {
            hooks[0].channel_name: set(types),
            hooks[1].channel_name: {"payment.detected"},
            apprise_channel.channel_name: {
                "cycle.opened", "watcher.degraded", "transfer.unassigned"
            },
        }  # fmt: skip
        assert len(apprise_sink.requests) == 3


def test_event_filter_patterns() -> None:
    """Exact types, ``prefix.*`` and ``*`` select events; nothing else does."""
    assert wants(["*"], "payment.detected")
    assert wants(["watcher.*"], "watcher.degraded")
    assert not wants(["watcher.*"], "watchers.degraded")
    assert wants(["cycle.opened"], "cycle.opened")
    assert not wants(["cycle.opened"], "cycle.closed")
    assert not wants([], "cycle.opened")


# --- Apprise -----------------------------------------------------------------------------------


def test_apprise_mailto_delivers_a_readable_month_funded_email(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """A ``mailto://`` URL to a local SMTP server delivers a month-funded email for a person."""
    with SmtpServer() as smtp:
        url = (
            f"mailto://{smtp.host}:{smtp.port}"
            "?from=proofwatch@example.com&to=consultant@example.com&mode=insecure"
        )
        settings = settings_for(tmp_path, urls=(url,))
        event = add_event(engine, clock)
        assert deliver(engine, settings, clock).delivered == 1
        (message,) = wait_for(lambda: smtp.messages, what="the email")

    assert message["Subject"] == "Acme GmbH: month 2 funded"
    assert message["To"] == "consultant@example.com"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    for expected in (
        "Acme GmbH paid month 2",
        "1500.000137 USDC on base",
        TX,
        f"https://basescan.org/tx/{TX}",
        "2026-03-14 09:12 UTC",
        "2026-04-14 09:12 UTC",
        event.id,
    ):
        assert expected in text
    assert "{" not in text  # prose, not JSON


def test_apprise_json_url_posts_the_message_to_a_local_receiver(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """A ``json://`` Apprise URL posts the rendered title and message to a local HTTP server."""
    with WebhookReceiver() as sink:
        settings = settings_for(tmp_path, urls=(f"json://127.0.0.1:{sink.port}/apprise",))
        add_event(engine, clock)
        assert deliver(engine, settings, clock).delivered == 1
        (got,) = sink.requests
    payload = got.json()
    assert got.path == "/apprise"
    assert payload["title"] == "Acme GmbH: month 2 funded"
    assert "1500.000137 USDC" in payload["message"] and TX in payload["message"]
    assert payload["type"] == "success"


def test_apprise_failure_is_retried_like_any_channel(
    tmp_path: Path, engine: Engine, clock: Clock
) -> None:
    """An Apprise URL whose server is down records a short failure and is retried on schedule."""
    with WebhookReceiver() as sink:
        settings = settings_for(tmp_path, urls=(f"json://127.0.0.1:{sink.port}/apprise",))
        add_event(engine, clock)
        sink.stop()
        deliver(engine, settings, clock)
        (delivery,) = deliveries(engine)
        assert delivery.status == "pending" and delivery.attempts == 1
        assert (delivery.last_error or "").startswith("apprise: failure")
        sink.restart()
        clock.advance(seconds=10)
        assert deliver(engine, settings, clock).delivered == 1
        assert len(sink.requests) == 1


def test_secrets_never_reach_logs_or_attempt_records(
    tmp_path: Path, engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Webhook secrets, Apprise passwords and URL tokens stay out of logs and attempt details."""
    token = "tok3n-in-the-path-0xDEADBEEF"
    caplog.set_level(logging.DEBUG)
    with (
        SmtpServer(username="alice", password=SMTP_PASSWORD) as smtp,
        WebhookReceiver(SECRET) as failing,
        WebhookReceiver(OTHER_SECRET) as ok,
    ):
        failing.fail_with(500)
        urls = (
            f"mailto://alice:{SMTP_PASSWORD}@{smtp.host}:{smtp.port}"
            "?from=proofwatch@example.com&to=consultant@example.com&mode=insecure",
            f"json://bob:{SMTP_PASSWORD}@127.0.0.1:{free_port()}/hooks/{token}",
            f"mailto://alice:{SMTP_PASSWORD}@127.0.0.1:{free_port()}?to=x@example.com&mode=insecure",
            f"mailto://alice:{SMTP_PASSWORD}@127.0.0.1:{free_port()}"
            "?from=proofwatch@example.com&to=x@example.com&mode=insecure",
        )
        webhooks = (
            hook(failing.url(f"/in/{token}"), secret=SECRET),
            hook(ok.url(), secret=OTHER_SECRET),
        )
        settings = settings_for(tmp_path, webhooks=webhooks, urls=urls)
        add_event(engine, clock)
        with structlog.testing.capture_logs() as logs:
            deliver(engine, settings, clock)
        assert len(wait_for(lambda: smtp.messages, what="the email")) == 1
        assert len(ok.accepted()) == 1

    statuses = {d.channel: d.status for d in deliveries(engine)}
    names = [h.channel_name for h in settings.notify.webhooks]
    names += [a.channel_name for a in settings.notify.apprise_channels()]
    assert statuses == dict(
        zip(names, ["pending", "delivered", "delivered", "pending", "pending", "pending"],
            strict=True)
    )  # fmt: skip
    assert {e["event"] for e in logs} == {"notify.delivered", "notify.failed"}
    assert all(set(e) >= {"channel", "type"} for e in logs)
    recorded = [a.detail for a in attempts(engine)] + [
        d.last_error or "" for d in deliveries(engine)
    ]
    texts = {
        "structlog": json.dumps(logs, default=str),
        "stdlib logging": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "attempt records": "\n".join(recorded),
    }
    assert "apprise" in caplog.text  # Apprise did log, and it was redacted
    for where, text in texts.items():
        for secret in (SECRET, OTHER_SECRET, SMTP_PASSWORD, token):
            assert secret not in text, f"{secret!r} leaked into {where}"


# --- signatures and messages -------------------------------------------------------------------


def test_verify_signature_accepts_the_sender_signature_only() -> None:
    """A signature verifies with the right secret, body and time; any change makes it fail."""
    body = b'{"id":"EVT-1","type":"cycle.opened","created_at":"2026-03-14T10:00:00Z","data":{}}'
    now = datetime.now(UTC)
    t = int(now.timestamp())
    header = signature_header(SECRET, t, body)
    assert header.startswith(f"t={t},v1=")
    assert verify_signature(SECRET, header, body, now)
    assert verify_signature(SECRET, f"{header},v1={'0' * 64}", body, now)  # rotation: any v1
    assert not verify_signature(OTHER_SECRET, header, body, now)
    assert not verify_signature(SECRET, header, body + b" ", now)
    assert not verify_signature(SECRET, header, body, now + timedelta(minutes=6))
    assert verify_signature(SECRET, header, body, now + timedelta(minutes=6), timedelta(minutes=10))
    for bad in (None, "", "v1=abc", f"t={t}", "t=x,v1=ab", "garbage"):
        assert not verify_signature(SECRET, bad, body, now)


def test_month_funded_message_copes_with_missing_keys() -> None:
    """A cycle.opened event with only a client still renders a sensible title and text."""
    title, text = render({"id": "EVT-1", "type": "cycle.opened", "data": {"client": "Acme"}})
    assert title == "Acme: a month is funded"
    assert text.startswith("Acme paid a month.")
    assert "None" not in text


def test_unknown_event_types_fall_back_to_listing_the_data() -> None:
    """An event type without its own wording is shown as its data, one field per line."""
    title, text = render({"id": "EVT-9", "type": "future.thing", "data": {"a": 1, "b": "x"}})
    assert title == "proofwatch: future.thing"
    assert "a: 1\nb: x" in text


def test_other_event_types_read_as_one_paragraph() -> None:
    """Lapses, unassigned transfers and chain trouble each get their own plain sentence."""
    lapsed = render(
        {
            "id": "EVT-2",
            "type": "retainer.lapsed",
            "data": {"client": "Acme", "retainer_id": "RET-1", "last_period_index": 3},
        }
    )
    assert lapsed[0] == "Acme: retainer lapsed"
    assert "Retainer RET-1 has lapsed: month 3" in lapsed[1]
    unassigned = render(
        {
            "id": "EVT-3",
            "type": "transfer.unassigned",
            "data": {"amount": "3", "asset": "ETH", "chain": "base", "from": "0xF00"},
        }
    )
    assert unassigned[0] == "Unassigned payment: 3 ETH on base"
    assert "3 ETH from 0xF00 arrived on base and matches no open invoice" in unassigned[1]
    degraded = render(
        {"id": "EVT-4", "type": "watcher.degraded", "data": {"chain": "base", "reason": "RPC down"}}
    )
    assert degraded[0] == "proofwatch: base is degraded"
    assert degraded[1].startswith("Chain base is degraded: RPC down.")


def test_channel_disabled_reads_as_an_instruction_to_the_operator() -> None:
    """watcher.channel_disabled names the channel, the answer and the command that lifts it."""
    title, text = render(
        {
            "id": "EVT-7",
            "type": "watcher.channel_disabled",
            "data": {"channel": "webhook:0", "reason": "HTTP 410", "event_id": "EVT-6"},
        }
    )
    assert title == "proofwatch: channel webhook:0 disabled"
    assert text.startswith("Notification channel webhook:0 answered HTTP 410 and is disabled.")
    assert "`proofwatch notify enable webhook:0`" in text
    assert "event_id: EVT-6" in text
