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


def dump_schema(url: str) -> list[str]:
    """Every table with its columns and every view with its definition, one line each (empty
    for a database without tables)."""
    with connection(url) as conn:
        if conn.dialect.name == "postgresql":  # two catalog queries instead of reflection
            columns = conn.execute(
                sa.text(
                    "SELECT table_name, column_name, data_type, is_nullable "
                    "FROM information_schema.columns c JOIN information_schema.tables t "
                    "USING (table_schema, table_name) WHERE table_schema = 'public' "
                    "AND table_type = 'BASE TABLE' ORDER BY table_name, ordinal_position"
                )
            ).all()
            tables: dict[str, list[str]] = {}
            for table, column, kind, nullable in columns:
                tables.setdefault(table, []).append(f"{column} {kind} {nullable}")
            lines = [f"TABLE {name} ({', '.join(cols)})" for name, cols in tables.items()]
            views = conn.execute(
                sa.text(
                    "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' "
                    "ORDER BY viewname"
                )
            ).all()
            return lines + [f"CREATE VIEW {name} AS {sql}" for name, sql in views]
        inspector = sa.inspect(conn)
        lines = [
            f"TABLE {name} ("
            + ", ".join(f"{c['name']} {c['type']}" for c in inspector.get_columns(name))
            + ")"
            for name in sorted(inspector.get_table_names())
        ]
        lines += [
            f"CREATE VIEW {name} AS {inspector.get_view_definition(name)}"
            for name in sorted(inspector.get_view_names())
        ]
        return lines
