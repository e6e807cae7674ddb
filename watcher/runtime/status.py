"""The status document (CONTRACT.md "Status") and the health verdict behind ``/healthz``.

Chains are read from the ``v_status`` view, so ``proofwatch status --json`` and an operator's
``SELECT * FROM v_status`` can never disagree. The daemon row and the outbox backlog are global:
``v_status`` repeats them on every chain row and has no row at all before a chain is first
polled, so they are read from their own tables with the view's definitions. One build of the
document, ``watcher.runtime.status_read``, on a DB-API ``Reader``: here one on an engine's
connection (the daemon's status server, and the CLI when its direct reader cannot answer).
Use a read-only engine: with SQLite in WAL mode a reader never waits for the daemon's writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from watcher.runtime import status_read
from watcher.runtime.status_doc import (
    HEARTBEAT_SECONDS,
    RUNNING_WITHIN,
    Row,
    health_problems,
    parse_ts,
)
from watcher.settings import Settings
from watcher.store.dbapi import Reader

__all__ = [
    "HEARTBEAT_SECONDS",
    "RUNNING_WITHIN",
    "Row",
    "health_problems",
    "parse_ts",
    "rows",
    "status_document",
]


def rows(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
    """Every row of a read-only query, as plain dicts."""
    with engine.connect() as conn:
        return [dict(m) for m in conn.execute(sa.text(sql), params or {}).mappings()]


class _EngineReader(Reader):
    """The DB-API ``Reader`` interface on one of an engine's connections: the same SQL as the
    read commands' reader, with SQLAlchemy's errors (and the daemon's read-only engine)."""

    def __init__(self, conn: sa.Connection, dialect: str) -> None:
        self.conn, self.dialect = conn, dialect

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        return [dict(m) for m in self.conn.execute(sa.text(sql), dict(params or {})).mappings()]


def status_document(engine: Engine, settings: Settings, now: datetime) -> dict[str, Any]:
    """The ``proofwatch status --json`` document (CONTRACT.md), read at ``now``.

    Beyond the contract's fields: ``disabled_channels``, each notification channel disabled by
    a 410 Gone answer (``channel, disabled_at, reason, event_id, pending``), and ``daemons``,
    every daemon on the database with the chains it holds (``status_read.daemons_status``);
    ``daemon`` is the one that beat last.
    """
    with engine.connect() as conn:
        reader = _EngineReader(conn, engine.dialect.name)
        return status_read.status_document(reader, settings, now)
