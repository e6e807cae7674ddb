"""Read a proofwatch database from the test process, as an operator may, on either store.

Plain SQLAlchemy connections (no pool, so nothing stays connected: a PostgreSQL database that
is copied as a template must have no sessions), never the program's engine set-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool


@contextmanager
def connection(url: str) -> Iterator[sa.Connection]:
    """One short-lived connection to ``url`` (a SQLAlchemy URL)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def read_rows(url: str, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts."""
    with connection(url) as conn:
        return [dict(row) for row in conn.execute(sa.text(sql), params or {}).mappings()]


def dump_rows(url: str, tables: Iterable[str] | None = None) -> list[str]:
    """Every row of every table (or of ``tables``), one ``table: (values...)`` line each, in a
    stable order: equal dumps mean equal data."""
    with connection(url) as conn:
        names = sorted(tables if tables is not None else sa.inspect(conn).get_table_names())
        lines: list[str] = []
        for name in names:
            rows = conn.execute(sa.text(f'SELECT * FROM "{name}"')).all()
            lines += sorted(f"{name}: {tuple(row)!r}" for row in rows)
        return lines
