"""Channels disabled by a 410 Gone answer: the state, its event, and enabling them again.

A receiver that answers ``410 Gone`` says the endpoint is gone for good, so retrying is
pointless. ``disable`` records, in the caller's transaction, that the channel is disabled and
emits ``watcher.channel_disabled``; the delivery that got the answer stays ``pending``, and so
do the channel's other deliveries and those of later events: nothing is lost, nothing is
attempted. ``enable`` (``proofwatch notify enable CHANNEL``) lifts it and they go out on the
next delivery run.

Channels are named as in ``deliveries.channel`` (``webhook:0``): never a URL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from watcher.errors import Refused
from watcher.store.db import read_session, transaction
from watcher.store.outbox import emit, iso
from watcher.store.tables import Delivery, DisabledChannel

log = structlog.get_logger("watcher.notify")

EVENT_TYPE = "watcher.channel_disabled"


def disable(session: Session, channel: str, *, reason: str, event_id: str, now: datetime) -> bool:
    """Disable ``channel`` and emit ``watcher.channel_disabled`` in ``session``'s transaction.

    Returns False (and changes nothing) when the channel is already disabled.
    """
    if session.get(DisabledChannel, channel) is not None:
        return False
    session.add(DisabledChannel(channel=channel, disabled_at=now, reason=reason, event_id=event_id))
    emit(
        session,
        EVENT_TYPE,
        {"channel": channel, "reason": reason, "event_id": event_id, "disabled_at": iso(now)},
        dedupe_key=f"{EVENT_TYPE}:{channel}:{now.isoformat()}",
        now=now,
    )
    return True


def disabled_names(engine: Engine) -> set[str]:
    """The channels disabled now."""
    with read_session(engine) as session:
        return set(session.exec(select(DisabledChannel.channel)).all())


def disabled_channels(engine: Engine) -> list[dict[str, Any]]:
    """Each disabled channel with when, why, the event that got the answer, and how many
    deliveries wait for it; in the order they were disabled."""
    with read_session(engine) as session:
        rows = session.exec(
            select(DisabledChannel).order_by(col(DisabledChannel.disabled_at))
        ).all()
        waiting = dict(
            session.exec(
                select(Delivery.channel, func.count())
                .where(Delivery.status == "pending")
                .group_by(col(Delivery.channel))
            ).all()
        )
    return [
        {
            "channel": row.channel,
            "disabled_at": iso(row.disabled_at),
            "reason": row.reason,
            "event_id": row.event_id,
            "pending": int(waiting.get(row.channel, 0)),
        }
        for row in rows
    ]


def enable(engine: Engine, channel: str) -> int:
    """Enable a disabled channel again; returns how many of its deliveries are pending.

    Raises ``Refused`` when the channel is not disabled.
    """
    with transaction(engine) as session:
        row = session.get(DisabledChannel, channel)
        if row is None:
            known = sorted(session.exec(select(DisabledChannel.channel)).all())
            hint = f" (disabled: {', '.join(known)})" if known else " (none is disabled)"
            raise Refused(f"channel {channel!r} is not disabled{hint}")
        session.delete(row)
        pending = session.exec(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.channel == channel, Delivery.status == "pending")
        ).one()
    log.info("notify.channel_enabled", channel=channel, pending=pending)
    return int(pending)
