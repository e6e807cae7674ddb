"""Delivery by several daemons sharing one PostgreSQL database: each delivery is claimed with
``FOR UPDATE SKIP LOCKED``, so no event is sent by two daemons at once, none is left behind,
and a daemon that dies while sending leaves its delivery for another."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from tests.support.receivers import WebhookReceiver, wait_for
from watcher.notify.outbox import deliver_due
from watcher.notify.webhook import WebhookChannel
from watcher.settings import NotifySettings, Settings, WebhookSettings
from watcher.store.db import make_engine, migrate, read_session, transaction
from watcher.store.outbox import emit
from watcher.store.tables import Delivery

SECRET = "SECRETKEY0123456789"
EVENTS = 40
DAEMONS = 3


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def settings_for(tmp_path: Path, url: str) -> Settings:
    return Settings(
        config_path=tmp_path / "watcher.toml",
        database_url="postgresql+psycopg://unused",
        chains=(),
        notify=NotifySettings(
            webhooks=(WebhookSettings(url=url, secret=SECRET, name="webhook:0"),), timeout=5.0
        ),
        secrets=(SECRET,),
    )


def add_events(engine: Engine, count: int) -> list[str]:
    with transaction(engine) as session:
        return [
            emit(session, "cycle.opened", {"n": i}, dedupe_key=f"cycle.opened:{i}", now=now())
            for i in range(count)
        ]


def statuses(engine: Engine) -> dict[str, str]:
    with read_session(engine) as session:
        return {d.event_id: d.status for d in session.exec(select(Delivery))}


def test_three_daemons_deliver_every_event_once_and_never_one_at_once(
    tmp_path: Path, engine: Engine
) -> None:
    """Three delivery jobs started together on the same outbox fan out each event once and
    send each delivery exactly once, never two of them at the same time (the receiver
    counts requests in flight per event)."""
    ids = add_events(engine, EVENTS)
    with WebhookReceiver(SECRET, latency=0.02) as receiver:
        settings = settings_for(tmp_path, receiver.url())
        start, errors = threading.Barrier(DAEMONS), []

        def daemon() -> None:
            try:
                start.wait()
                for _ in range(5):
                    deliver_due(engine, settings, now, max_events=EVENTS)
            except Exception as exc:  # reported below, with the others
                errors.append(exc)

        threads = [threading.Thread(target=daemon) for _ in range(DAEMONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert statuses(engine) == dict.fromkeys(ids, "delivered")
        sent = [r.event_id for r in receiver.accepted()]
        assert sorted(sent) == sorted(ids)  # each exactly once
        assert set(receiver.max_in_flight().values()) == {1}


class Crashing(WebhookChannel):
    """A webhook channel that, for one event, stops until told and then dies mid-send as a
    killed daemon would (an exception no delivery code catches)."""

    def __init__(self, url: str, event_id: str) -> None:
        super().__init__("webhook:0", url, SECRET, events=("*",), timeout=5.0)
        self.target, self.sending, self.die = event_id, threading.Event(), threading.Event()

    def send(self, event_id: str, body: str) -> tuple[bool, str]:
        if event_id == self.target:
            self.sending.set()
            self.die.wait(30)
            raise KeyboardInterrupt  # not an Exception: nothing records this attempt
        return super().send(event_id, body)


def test_a_daemon_that_dies_while_sending_leaves_the_delivery_to_another(
    tmp_path: Path, engine: Engine
) -> None:
    """While one daemon holds a delivery (sending it), another skips it and delivers the rest;
    when the first dies its transaction rolls back, and the other then delivers it once."""
    first, *rest = add_events(engine, 3)
    with WebhookReceiver(SECRET) as receiver:
        settings = settings_for(tmp_path, receiver.url())
        crashing = Crashing(receiver.url(), first)
        died: list[BaseException] = []

        def doomed() -> None:
            try:
                deliver_due(engine, settings, now, channels=[crashing])
            except BaseException as exc:  # the "crash"
                died.append(exc)

        thread = threading.Thread(target=doomed)
        thread.start()
        wait_for(crashing.sending.is_set, what="the first daemon to claim the first event")
        report = deliver_due(engine, settings, now)
        assert report.delivered == len(rest)
        assert sorted(r.event_id for r in receiver.accepted()) == sorted(rest)
        crashing.die.set()
        thread.join(30)
        assert died and isinstance(died[0], KeyboardInterrupt)
        assert statuses(engine)[first] == "pending"
        assert deliver_due(engine, settings, now).delivered == 1
        assert sorted(r.event_id for r in receiver.accepted()) == sorted([first, *rest])
        assert statuses(engine) == dict.fromkeys([first, *rest], "delivered")
