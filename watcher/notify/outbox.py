"""The delivery job: every outbox event to every channel that wants it, with a record per attempt.

One run of ``deliver_due``:

1. **Fan-out.** Each event not yet fanned out gets one ``Delivery`` row per configured channel
   whose event filter matches, due at once; all in one transaction with ``fanned_out = True``.
   Channels configured later receive later events only.
2. **Delivery.** Due pending deliveries are attempted in event order. On SQLite each attempt
   happens outside any transaction; its result (a ``DeliveryAttempt`` and the updated
   ``Delivery``) is committed in its own transaction right after. On PostgreSQL each delivery
   is claimed with ``FOR UPDATE SKIP LOCKED`` and its result committed in the claiming
   transaction, so daemons sharing the database never send one delivery at once
   (``watcher.notify.outbox_claims``). A crash between send and commit repeats that one
   delivery, with the same event id and body: delivery is at least once, never lost.

Channels are independent. Every delivery has its own retry schedule (``backoff``), so a
failing channel never holds back other channels, and a poisoned event (one a receiver keeps
refusing) never holds back later events on its own channel either. Within one run, once a
channel fails, its remaining due deliveries are left for the next run (no attempt recorded,
no backoff step used), so a receiver that is down gets one request per run, not one per
event. The price is ordering: after an outage a channel may receive a newer event before an
older one whose retry is not due yet. Receivers order by ``created_at`` and de-duplicate on
``id``.

A receiver that answers 410 Gone disables its channel (``watcher.notify.disabled``): that
attempt is recorded, the channel's deliveries stay pending and unattempted, and
``watcher.channel_disabled`` is emitted, all in one transaction; ``proofwatch notify enable``
resumes them.

Channel names are stable and never hold a secret: the configured ``name``, else one derived
from the URL without its password (``watcher.notify.channel_names``). A delivery is bound to
its channel's name for good: after a config edit that removes (or changes the URL
of) a channel, its pending deliveries stay pending, untouched, counted in ``unconfigured``
and logged once per process as ``notify.channel_not_configured`` with their number; they
are never sent to another URL. Putting the channel back (or naming a channel after the old
one) resumes them. Deliveries queued before channels had names are bound to ``webhook:<i>``
/ ``apprise:<i>``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import select

from watcher.errors import NotFound, Refused
from watcher.notify import disabled
from watcher.notify.apprise_channel import AppriseChannel, protect_library_logs
from watcher.notify.outbox_claims import (
    DEAD,
    DELIVERED,
    PENDING,
    attempt,
    claim_and_send,
    claims_rows,
    count_held,
    count_unconfigured,
    due,
    fan_out,
    record,
    record_gone,
    wants,
)
from watcher.notify.webhook import WebhookChannel
from watcher.settings import Settings
from watcher.store.db import transaction
from watcher.store.tables import Delivery, OutboxEvent

log = structlog.get_logger("watcher.notify")

__all__ = [
    "Channel", "DeliveryReport", "build_channels", "deliver_due", "normalise_event_id",
    "retry_dead", "wants",
]  # fmt: skip


class Channel(Protocol):
    """A destination for events: a webhook, an Apprise URL, or a test double."""

    @property
    def name(self) -> str:
        """Stable name used in ``deliveries.channel`` and in logs (never a URL)."""

    @property
    def events(self) -> tuple[str, ...]:
        """Event filter: exact types, ``"prefix.*"`` or ``"*"``."""

    def send(self, event_id: str, body: str) -> tuple[bool, str]:
        """Deliver the stored ``body`` of event ``event_id`` once.

        Returns (delivered, detail): a short reason with no URL or secret in it. Raises
        ``ChannelGone`` when the receiver is gone for good (HTTP 410): the channel is then
        disabled. Should not raise anything else; an exception counts as a failed attempt.
        """


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one ``deliver_due`` run did."""

    events_fanned_out: int = 0
    deliveries_created: int = 0
    delivered: int = 0
    failed: int = 0  # failed and scheduled again
    dead: int = 0  # failed for the last time
    deferred: int = 0  # due, but left for the next run: their channel failed earlier this run
    unconfigured: int = 0  # due, but their channel is no longer in the config: left pending
    gone: int = 0  # answered 410 Gone: their channel is now disabled, they stay pending
    held: int = 0  # due, but their channel is disabled: left pending


def build_channels(settings: Settings) -> list[Channel]:
    """The configured channels, each under its stable name: webhooks, then Apprise URLs."""
    notify = settings.notify
    secrets = _secrets(settings)
    channels: list[Channel] = [
        WebhookChannel(
            hook.channel_name, hook.url, hook.secret, events=hook.events, timeout=notify.timeout
        )
        for hook in notify.webhooks
    ]
    channels += [
        AppriseChannel(
            ap.channel_name,
            ap.url,
            events=notify.apprise_events if ap.events is None else ap.events,
            timeout=notify.timeout,
            secrets=secrets,
        )
        for ap in notify.apprise_channels()
    ]
    return channels


def _secrets(settings: Settings) -> tuple[str, ...]:
    notify = settings.notify
    hooks = [v for hook in notify.webhooks for v in (hook.url, hook.secret)]
    urls = [ap.url for ap in notify.apprise_channels()]
    return tuple(s for s in (*settings.secrets, *urls, *hooks) if s)


def deliver_due(
    engine: Engine,
    settings: Settings,
    now: Callable[[], datetime],
    *,
    channels: Sequence[Channel] | None = None,
    max_events: int = 100,
    rand: Callable[[], float] = random.random,
) -> DeliveryReport:
    """Fan out new events, then attempt every due delivery once (see the module docstring).

    ``channels`` defaults to ``build_channels(settings)``; ``rand`` feeds the backoff jitter;
    ``max_events`` bounds both the events fanned out and the deliveries tried per channel.
    Deliveries of channels that are no longer configured stay pending, untouched, and are
    counted in ``unconfigured``: putting the channel back in the config resumes them. Those of
    a disabled channel (410 Gone) likewise stay pending, counted in ``held``.
    """
    chans = list(build_channels(settings) if channels is None else channels)
    by_name = {c.name: c for c in chans}
    secrets = _secrets(settings)
    protect_library_logs(secrets)  # urllib3 logs webhook paths, which may hold tokens
    events, created = fan_out(engine, chans, now(), max_events)
    off = disabled.disabled_names(engine)
    run = _Run(engine, by_name, off, secrets, now, rand, max_events)
    if claims_rows(engine):
        run.claimed()
    else:
        run.listed()
    return DeliveryReport(
        events_fanned_out=events,
        deliveries_created=created,
        delivered=run.counts[DELIVERED],
        failed=run.counts[PENDING],
        dead=run.counts[DEAD],
        deferred=run.deferred,
        unconfigured=count_unconfigured(engine, now(), by_name),
        gone=run.gone,
        held=count_held(engine, now(), off & set(by_name)) if off else 0,
    )


class _Run:
    """One run's attempts and counts: a channel that failed is left for the next run, one
    that answered 410 is disabled, and each channel gets at most ``limit`` attempts."""

    def __init__(
        self,
        engine: Engine,
        channels: dict[str, Channel],
        off: set[str],
        secrets: Sequence[str],
        now: Callable[[], datetime],
        rand: Callable[[], float],
        limit: int,
    ) -> None:
        self.engine, self.channels, self.off, self.secrets = engine, channels, off, secrets
        self.now, self.rand, self.limit = now, rand, limit
        self.counts = {DELIVERED: 0, PENDING: 0, DEAD: 0}
        self.deferred = self.gone = 0
        self.failed: set[str] = set()  # channels that failed earlier in this run
        self.tried: dict[str, int] = {}

    def listed(self) -> None:
        """SQLite: list the due deliveries, send each outside a transaction, then record it."""
        for item in due(self.engine, self.now(), [n for n in self.channels if n not in self.off],
                        self.limit):  # fmt: skip
            if item.channel in self.off:  # it answered 410 earlier in this run
                continue
            if item.channel in self.failed:
                self.deferred += 1
                continue
            ok, detail, is_gone = attempt(self.channels[item.channel], item, self.secrets)
            if is_gone:
                self.gone += record_gone(self.engine, item, detail, self.now())
                self.off.add(item.channel)
                continue
            result = record(self.engine, item, ok, detail, self.now(), self.rand)
            if result is not None:
                self.counts[result.status] += 1
            if not ok:
                self.failed.add(item.channel)

    def claimed(self) -> None:
        """PostgreSQL: claim, send and record one delivery at a time until none is left for
        the channels still open in this run; a failed channel's other due deliveries count
        as deferred."""
        while True:
            open_ = {
                name: channel
                for name, channel in self.channels.items()
                if name not in self.off
                and name not in self.failed
                and self.tried.get(name, 0) < self.limit
            }
            if not open_:
                break
            sent = claim_and_send(self.engine, open_, self.now, self.secrets, self.rand)
            if sent is None:
                break
            name = sent.due.channel
            self.tried[name] = self.tried.get(name, 0) + 1
            if sent.gone:
                self.gone += 1
                self.off.add(name)
            elif sent.result is not None:
                self.counts[sent.result.status] += 1
                if not sent.ok:
                    self.failed.add(name)
        if self.failed:
            self.deferred = len(due(self.engine, self.now(), sorted(self.failed), self.limit))


# --- the operator's retry --------------------------------------------------------------------


def normalise_event_id(text: str) -> str:
    cleaned = text.strip()
    if cleaned[:4].upper() == "EVT-":
        return "EVT-" + cleaned[4:].lower()
    return cleaned


def retry_dead(engine: Engine, event_id: str, now: datetime) -> int:
    """Re-queue every dead delivery of an event, due at once; returns how many.

    The re-queued delivery starts its retry ladder again (see ``backoff``). Raises ``NotFound``
    for an unknown event and ``Refused`` when none of its deliveries is dead.
    """
    eid = normalise_event_id(event_id)
    with transaction(engine) as session:
        if session.exec(select(OutboxEvent.id).where(OutboxEvent.id == eid)).first() is None:
            raise NotFound(f"event {event_id!r} not found")
        dead = session.exec(
            select(Delivery).where(Delivery.event_id == eid, Delivery.status == DEAD)
        ).all()
        if not dead:
            raise Refused(f"event {eid} has no dead-lettered delivery to retry")
        for delivery in dead:
            delivery.status = PENDING
            delivery.attempts = 0
            delivery.next_attempt_at = now
            session.add(delivery)
        channels = sorted(d.channel for d in dead)
    log.info("notify.requeued", event_id=eid, channels=channels)
    return len(channels)
