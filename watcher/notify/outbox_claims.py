"""The delivery job's units of work: fan-out, finding and claiming due deliveries, recording
each attempt (``watcher.notify.outbox`` runs them; its docstring tells the rules).

Two ways to take a due delivery, by database:

- **SQLite** (one daemon, behind its file lock): the due deliveries are listed, each is
  attempted outside any transaction, and its result is committed in its own transaction right
  after (``record``), provided the delivery is still pending.
- **PostgreSQL** (several daemons may share the outbox): each delivery is claimed with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` in a transaction that stays open while it is sent and
  commits its result (``claim_and_send``). Two daemons never hold the same row, so they never
  send the same delivery at once; a daemon that dies mid-send leaves its transaction to roll
  back and the row pending, so another sends it later: at least once, never lost. Fan-out
  claims the new events the same way, so two daemons never fan out the same event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from watcher.notify import backoff, disabled
from watcher.notify.webhook import ChannelGone
from watcher.redact import redact_text
from watcher.store.db import read_session, transaction
from watcher.store.outbox import iso
from watcher.store.tables import Delivery, DeliveryAttempt, OutboxEvent

if TYPE_CHECKING:
    from watcher.notify.outbox import Channel

log = structlog.get_logger("watcher.notify")

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
_ANNOUNCED_UNCONFIGURED: set[str] = set()  # channels logged as not configured, this process
DETAIL_LIMIT = 200


def wants(patterns: Iterable[str], event_type: str) -> bool:
    """Whether an event filter (``"cycle.opened"``, ``"watcher.*"``, ``"*"``) selects a type."""
    for pattern in patterns:
        if pattern in ("*", event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def claims_rows(engine: Engine) -> bool:
    """Whether deliveries are claimed with row locks (PostgreSQL) rather than listed (SQLite)."""
    return engine.dialect.name == "postgresql"


# --- fan-out ---------------------------------------------------------------------------------


def fan_out(
    engine: Engine, channels: Sequence[Channel], now: datetime, limit: int
) -> tuple[int, int]:
    """Create the deliveries of up to ``limit`` new events; (events, deliveries) created."""
    created = 0
    with transaction(engine) as session:
        query = (
            select(OutboxEvent)
            .where(OutboxEvent.fanned_out == False)  # noqa: E712
            .order_by(col(OutboxEvent.seq))
            .limit(limit)
        )
        if claims_rows(engine):  # another daemon fanning out takes other events
            query = query.with_for_update(skip_locked=True)
        events = session.exec(query).all()
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


def _due_of(delivery: Delivery, event: OutboxEvent) -> _Due:
    return _Due(
        event.seq or 0, delivery.id or 0, event.id, event.type, event.created_at,
        delivery.channel, event.body,
    )  # fmt: skip


def due(engine: Engine, now: datetime, channels: Iterable[str], limit: int) -> list[_Due]:
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
            found += [_due_of(d, e) for d, e in rows]
    return sorted(found, key=lambda due: (due.seq, due.channel))


def count_unconfigured(engine: Engine, now: datetime, channels: Iterable[str]) -> int:
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


def count_held(engine: Engine, now: datetime, channels: Iterable[str]) -> int:
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


def attempt(channel: Channel, due: _Due, secrets: Sequence[str]) -> tuple[bool, str, bool]:
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


def record(
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
        result = _apply(session, delivery, due, ok, detail, at, rand)
    _log(due, ok, detail, result)
    return result


def _apply(
    session: Session,
    delivery: Delivery,
    due: _Due,
    ok: bool,
    detail: str,
    at: datetime,
    rand: Callable[[], float],
) -> _Result:
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
    return _Result(delivery.status, delivery.attempts, retry_at)


def _log(due: _Due, ok: bool, detail: str, result: _Result) -> None:
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
            retry_at=iso(result.retry_at),
        )


def record_gone(engine: Engine, due: _Due, detail: str, at: datetime) -> bool:
    """Commit a 410 answer: the attempt, the channel disabled and its event, in one transaction.

    The delivery stays pending (its backoff untouched) for when the channel is enabled again.
    Returns False if the delivery left ``pending`` meanwhile.
    """
    with transaction(engine) as session:
        delivery = session.get(Delivery, due.delivery_id)
        if delivery is None or delivery.status != PENDING:
            return False
        _apply_gone(session, delivery, due, detail, at)
    _log_gone(due, detail)
    return True


def _apply_gone(session: Session, delivery: Delivery, due: _Due, detail: str, at: datetime) -> None:
    session.add(DeliveryAttempt(delivery_id=due.delivery_id, at=at, ok=False, detail=detail))
    delivery.attempts += 1
    delivery.last_error = f"{detail}: channel disabled"
    session.add(delivery)
    disabled.disable(session, due.channel, reason=detail, event_id=due.event_id, now=at)


def _log_gone(due: _Due, detail: str) -> None:
    log.error(
        "notify.channel_disabled",
        event_id=due.event_id,
        type=due.event_type,
        channel=due.channel,
        reason=detail,
    )


@dataclass(frozen=True, slots=True)
class Sent:
    """What ``claim_and_send`` did with the delivery it claimed."""

    due: _Due
    ok: bool
    gone: bool
    result: _Result | None  # None when gone


def claim_and_send(
    engine: Engine,
    channels: dict[str, Channel],
    now: Callable[[], datetime],
    secrets: Sequence[str],
    rand: Callable[[], float],
) -> Sent | None:
    """PostgreSQL: claim the oldest due delivery of one of ``channels`` that no other
    transaction holds (``FOR UPDATE SKIP LOCKED``), send it, and commit its result in the same
    transaction; None when there is nothing left to claim."""
    with transaction(engine) as session:
        row = session.exec(
            select(Delivery, OutboxEvent)
            .join(OutboxEvent, col(OutboxEvent.id) == col(Delivery.event_id))
            .where(
                Delivery.status == PENDING,
                col(Delivery.next_attempt_at) <= now(),
                col(Delivery.channel).in_(list(channels)),
            )
            .order_by(col(OutboxEvent.seq), col(Delivery.channel))
            .limit(1)
            .with_for_update(of=Delivery, skip_locked=True)
        ).first()
        if row is None:
            return None
        delivery, event = row
        due = _due_of(delivery, event)
        ok, detail, gone = attempt(channels[due.channel], due, secrets)
        if gone:
            _apply_gone(session, delivery, due, detail, now())
            sent = Sent(due, ok=False, gone=True, result=None)
        else:
            sent = Sent(due, ok, False, _apply(session, delivery, due, ok, detail, now(), rand))
    if sent.result is None:
        _log_gone(due, detail)
    else:
        _log(due, ok, detail, sent.result)
    return sent
