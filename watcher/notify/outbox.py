"""The delivery job: every outbox event to every channel that wants it, with a record per attempt.

One run of ``deliver_due``:

1. **Fan-out.** Each event not yet fanned out gets one ``Delivery`` row per configured channel
   whose event filter matches, due at once; all in one transaction with ``fanned_out = True``.
   Channels configured later receive later events only.
2. **Delivery.** Due pending deliveries are attempted in event order. Each attempt happens
   outside any transaction; its result (a ``DeliveryAttempt`` and the updated ``Delivery``) is
   committed in its own transaction right after. A crash between the two repeats that one
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
from the URL without its password (``watcher.settings.default_channel_name``). A delivery is
bound to its channel's name for good: after a config edit that removes (or changes the URL
of) a channel, its pending deliveries stay pending, untouched, counted in ``unconfigured``
and logged once per process as ``notify.channel_not_configured`` with their number; they
are never sent to another URL. Putting the channel back (or naming a channel after the old
one) resumes them. Deliveries queued before channels had names are bound to ``webhook:<i>``
/ ``apprise:<i>``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from watcher.errors import NotFound, Refused
from watcher.notify import backoff, disabled
from watcher.notify.apprise_channel import AppriseChannel, protect_library_logs
from watcher.notify.webhook import ChannelGone, WebhookChannel
from watcher.redact import redact_text
from watcher.settings import Settings
from watcher.store.db import read_session, transaction
from watcher.store.outbox import iso
from watcher.store.tables import Delivery, DeliveryAttempt, OutboxEvent

log = structlog.get_logger("watcher.notify")

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
_ANNOUNCED_UNCONFIGURED: set[str] = set()  # channels logged as not configured, this process
DETAIL_LIMIT = 200


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


def wants(patterns: Iterable[str], event_type: str) -> bool:
    """Whether an event filter (``"cycle.opened"``, ``"watcher.*"``, ``"*"``) selects a type."""
    for pattern in patterns:
        if pattern in ("*", event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


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


# --- fan-out ---------------------------------------------------------------------------------


def fan_out(
    engine: Engine, channels: Sequence[Channel], now: datetime, limit: int
) -> tuple[int, int]:
    """Create the deliveries of up to ``limit`` new events; (events, deliveries) created."""
    created = 0
    with transaction(engine) as session:
        events = session.exec(
            select(OutboxEvent)
            .where(OutboxEvent.fanned_out == False)  # noqa: E712
            .order_by(col(OutboxEvent.seq))
            .limit(limit)
        ).all()
        for event in events:
            existing = set(
                session.exec(select(Delivery.channel).where(Delivery.event_id == event.id)).all()
            )
            for channel in channels:
                if channel.name in existing or not wants(channel.events, event.type):
                    continue
                session.add(Delivery(event_id=event.id, channel=channel.name, next_attempt_at=now))
                created += 1
            event.fanned_out = True
            session.add(event)
    return len(events), created


# --- delivery --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Due:
    seq: int
    delivery_id: int
    event_id: str
    event_type: str
    created_at: datetime
    channel: str
    body: str


def _due(engine: Engine, now: datetime, channels: Iterable[str], limit: int) -> list[_Due]:
    """Up to ``limit`` due deliveries per channel, merged in event order.

    Per channel, so that a backlog on one channel never crowds another out of a run.
    """
    found: list[_Due] = []
    with read_session(engine) as session:
        for channel in channels:
            rows = session.exec(
                select(Delivery, OutboxEvent)
                .join(OutboxEvent, col(OutboxEvent.id) == col(Delivery.event_id))
                .where(
                    Delivery.channel == channel,
                    Delivery.status == PENDING,
                    col(Delivery.next_attempt_at) <= now,
                )
                .order_by(col(OutboxEvent.seq))
                .limit(limit)
            ).all()
            found += [
                _Due(e.seq or 0, d.id or 0, e.id, e.type, e.created_at, d.channel, e.body)
                for d, e in rows
            ]
    return sorted(found, key=lambda due: (due.seq, due.channel))


def _count_unconfigured(engine: Engine, now: datetime, channels: Iterable[str]) -> int:
    """Due pending deliveries whose channel is not configured (any more); a log line per such
    channel, naming it and how many wait for it, once per process (the daemon runs this every
    few seconds)."""
    with read_session(engine) as session:
        rows = session.exec(
            select(Delivery.channel, func.count())
            .where(
                Delivery.status == PENDING,
                col(Delivery.next_attempt_at) <= now,
                col(Delivery.channel).not_in(list(channels)),
            )
            .group_by(col(Delivery.channel))
            .order_by(col(Delivery.channel))
        ).all()
    for channel, count in rows:
        if channel in _ANNOUNCED_UNCONFIGURED:
            continue
        _ANNOUNCED_UNCONFIGURED.add(channel)
        log.warning(
            "notify.channel_not_configured",
            channel=channel,
            pending=count,
            hint="deliveries stay bound to this channel name and are never sent to another "
            "URL: configure a channel with this name to deliver them",
        )
    return sum(count for _, count in rows)


def _count_held(engine: Engine, now: datetime, channels: Iterable[str]) -> int:
    with read_session(engine) as session:
        return session.exec(
            select(func.count())
            .select_from(Delivery)
            .where(
                Delivery.status == PENDING,
                col(Delivery.next_attempt_at) <= now,
                col(Delivery.channel).in_(list(channels)),
            )
        ).one()


def _attempt(channel: Channel, due: _Due, secrets: Sequence[str]) -> tuple[bool, str, bool]:
    """One send, never raising: (delivered, detail, gone); the detail is redacted and short."""
    gone = False
    try:
        ok, detail = channel.send(due.event_id, due.body)
    except ChannelGone as exc:
        ok, detail, gone = False, exc.detail, True
    except Exception as exc:  # a channel bug must not stop the other deliveries
        ok, detail = False, f"channel error ({type(exc).__name__})"
    return ok, redact_text(detail, secrets)[:DETAIL_LIMIT], gone


@dataclass(frozen=True, slots=True)
class _Result:
    status: str
    attempts: int
    retry_at: datetime | None


def _record(
    engine: Engine,
    due: _Due,
    ok: bool,
    detail: str,
    at: datetime,
    rand: Callable[[], float],
) -> _Result | None:
    """Commit one attempt's result; None if the delivery left ``pending`` meanwhile."""
    with transaction(engine) as session:
        delivery = session.get(Delivery, due.delivery_id)
        if delivery is None or delivery.status != PENDING:
            return None
        session.add(DeliveryAttempt(delivery_id=due.delivery_id, at=at, ok=ok, detail=detail))
        delivery.attempts += 1
        retry_at: datetime | None = None
        if ok:
            delivery.status = DELIVERED
            delivery.delivered_at = at
            delivery.last_error = None
        else:
            delivery.last_error = detail
            retry_at = backoff.next_attempt(
                failures=delivery.attempts, failed_at=at, created_at=due.created_at, rand=rand
            )
            if retry_at is None:
                delivery.status = DEAD
            else:
                delivery.next_attempt_at = retry_at
        session.add(delivery)
        result = _Result(delivery.status, delivery.attempts, retry_at)
    fields = {"event_id": due.event_id, "type": due.event_type, "channel": due.channel}
    if ok:
        log.info("notify.delivered", **fields, attempts=result.attempts)
    elif result.status == DEAD:
        log.error("notify.dead", **fields, attempts=result.attempts, reason=detail)
    else:
        log.warning(
            "notify.failed",
            **fields,
            attempts=result.attempts,
            reason=detail,
            retry_at=iso(retry_at),
        )
    return result


def _record_gone(engine: Engine, due: _Due, detail: str, at: datetime) -> bool:
    """Commit a 410 answer: the attempt, the channel disabled and its event, in one transaction.

    The delivery stays pending (its backoff untouched) for when the channel is enabled again.
    Returns False if the delivery left ``pending`` meanwhile.
    """
    with transaction(engine) as session:
        delivery = session.get(Delivery, due.delivery_id)
        if delivery is None or delivery.status != PENDING:
            return False
        session.add(DeliveryAttempt(delivery_id=due.delivery_id, at=at, ok=False, detail=detail))
        delivery.attempts += 1
        delivery.last_error = f"{detail}: channel disabled"
        session.add(delivery)
        disabled.disable(session, due.channel, reason=detail, event_id=due.event_id, now=at)
    log.error(
        "notify.channel_disabled",
        event_id=due.event_id,
        type=due.event_type,
        channel=due.channel,
        reason=detail,
    )
    return True


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
    counts = {DELIVERED: 0, PENDING: 0, DEAD: 0}
    deferred = gone = 0
    failed_this_run: set[str] = set()
    off = disabled.disabled_names(engine)
    for due in _due(engine, now(), [n for n in by_name if n not in off], max_events):
        if due.channel in off:  # it answered 410 earlier in this run
            continue
        if due.channel in failed_this_run:
            deferred += 1
            continue
        ok, detail, is_gone = _attempt(by_name[due.channel], due, secrets)
        if is_gone:
            gone += _record_gone(engine, due, detail, now())
            off.add(due.channel)
            continue
        result = _record(engine, due, ok, detail, now(), rand)
        if result is not None:
            counts[result.status] += 1
        if not ok:
            failed_this_run.add(due.channel)
    return DeliveryReport(
        events_fanned_out=events,
        deliveries_created=created,
        delivered=counts[DELIVERED],
        failed=counts[PENDING],
        dead=counts[DEAD],
        deferred=deferred,
        unconfigured=_count_unconfigured(engine, now(), by_name),
        gone=gone,
        held=_count_held(engine, now(), off & set(by_name)) if off else 0,
    )


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
