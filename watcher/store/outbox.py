"""Writing events to the outbox, inside the caller's transaction.

An event's id and body are fixed when it is written: a receiver de-duplicates on the id, and
a crash can repeat a delivery but never change what is delivered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session

from watcher.store.tables import OutboxEvent

EVENT_TYPES = frozenset(
    {
        "payment.detected",
        "payment.finalized",
        "payment.orphaned",
        "cycle.opened",
        "invoice.paid_late",
        "invoice.underpaid",
        "invoice.expired",
        "invoice.needs_review",
        "invoice.renewal_issued",
        "retainer.lapsed",
        "transfer.unassigned",
        "watcher.degraded",
        "watcher.recovered",
        "watcher.unexplained_balance",
        "watcher.finality_violation",
        "watcher.channel_disabled",
        "watcher.token_decimals_mismatch",
        "watcher.receipt_unconfirmed",
        "watcher.cross_check_mismatch",
    }
)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, to the second: the one timestamp format of the outside world."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def event_id(dedupe_key: str) -> str:
    return "EVT-" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:20]


def emit(
    session: Session, type_: str, data: dict[str, Any], *, dedupe_key: str, now: datetime
) -> str:
    """Add an event to the outbox in ``session``'s transaction; returns its id.

    ``dedupe_key`` names the fact (``"cycle.opened:CYC-3"``): writing the same fact twice
    leaves the first event unchanged (``INSERT ... ON CONFLICT DO NOTHING``).
    """
    return emit_many(session, [(type_, data, dedupe_key)], now=now)[0]


def emit_many(
    session: Session, events: Sequence[tuple[str, dict[str, Any], str]], *, now: datetime
) -> list[str]:
    """``emit`` for several ``(type, data, dedupe_key)`` facts in one statement; their ids."""
    rows: list[dict[str, Any]] = []
    for type_, data, dedupe_key in events:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        eid = event_id(dedupe_key)
        body = json.dumps(
            {"id": eid, "type": type_, "created_at": iso(now), "data": data},
            separators=(",", ":"),
        )
        rows.append(
            {"id": eid, "type": type_, "dedupe_key": dedupe_key, "created_at": now,
             "body": body, "fanned_out": False}
        )  # fmt: skip
    if rows:
        statement = _insert(session.get_bind().dialect.name)(OutboxEvent)
        statement = statement.on_conflict_do_nothing(index_elements=["dedupe_key"])
        session.execute(statement, rows)
    return [str(row["id"]) for row in rows]


def _insert(dialect: str) -> Any:
    """The dialect's ``INSERT ... ON CONFLICT`` construct, importing only that dialect: the
    PostgreSQL one (with its asyncpg support and asyncio) costs every SQLite process about
    30 ms at start-up otherwise."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
