"""Read-only DB-API connections for the read commands, without SQLAlchemy (start-up, issue 11).

SQLAlchemy and SQLModel take about 0.3 s to import; a read command that only selects from the
operator views and a few tables does not need them. ``open_reader`` opens the configured
database directly, read-only: the standard ``sqlite3`` module on the SQLite file
(``mode=ro``: nothing can be written, no file is created), psycopg 3 on a PostgreSQL URL
(a read-only session in UTC, as ``make_engine``'s).

It answers only when it can answer exactly as the SQLAlchemy path would: a missing file, a
schema at another version than this program's, a driver error of any kind (the database
cannot be reached, is locked past the timeout, is not a database) raise ``Unanswered``, and
the command then takes its SQLAlchemy path, which words every such error as it always has.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

#: ``watcher.store.db.SCHEMA_VERSION``, which cannot be imported here without SQLAlchemy;
#: ``tests/unit/test_dbapi.py`` holds the two equal (bump this with every migration).
SCHEMA_VERSION = 9

BUSY_TIMEOUT_S = 10.0  # as ``watcher.store.db.BUSY_TIMEOUT_MS``
UTC_SESSION = "-c timezone=UTC"  # as ``watcher.store.db.UTC_SESSION``

Row = dict[str, Any]
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Unanswered(Exception):
    """This reader cannot answer exactly; the caller takes the SQLAlchemy path instead."""


class Reader:
    """A read-only connection: ``dialect`` is "sqlite" or "postgresql"."""

    dialect = ""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        """Every row of ``sql`` (``:name`` placeholders) as a plain dict; a driver error
        raises ``Unanswered``."""
        raise NotImplementedError


class _SqliteReader(Reader):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        try:
            cursor = self.conn.execute(sql, dict(params or {}))
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise Unanswered(str(exc)) from exc


class _PostgresReader(Reader):
    dialect = "postgresql"

    def __init__(self, conn: Any, error: type[Exception]) -> None:
        self.conn, self.error = conn, error

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        try:
            with self.conn.cursor() as cursor:
                if params:
                    cursor.execute(_NAMED.sub(r"%(\1)s", sql), dict(params))
                else:
                    cursor.execute(sql)
                names = [d.name for d in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except self.error as exc:
            raise Unanswered(str(exc)) from exc


def utc(value: datetime | str | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime, as ``UtcDateTime`` reads it: SQLite
    holds text (``2026-11-21 15:21:25.123456``), PostgreSQL a naive UTC ``timestamp``."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@contextmanager
def open_reader(url: str) -> Iterator[Reader]:
    """A read-only reader on the database at ``url`` (``database.url`` as settings resolve
    it), inside one transaction (one snapshot), at this program's schema version; raises
    ``Unanswered`` when it cannot be that."""
    if url.startswith("sqlite:///"):
        with _sqlite(url) as reader:
            yield reader
    elif url.startswith("postgresql+psycopg://"):
        with _postgres(url) as reader:
            yield reader
    else:
        raise Unanswered(f"no DB-API reader for {url.split(':')[0]!r}")


@contextmanager
def _sqlite(url: str) -> Iterator[Reader]:
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:" or not Path(path).is_file():
        raise Unanswered("no database file")
    uri = "file:" + quote(str(Path(path).resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise Unanswered(str(exc)) from exc
    try:
        reader = _SqliteReader(conn)
        reader.rows("BEGIN")
        _check_version(reader)
        yield reader
    finally:
        conn.close()


def _pg_conninfo(url: str) -> tuple[str, str]:
    """libpq's URI for a ``postgresql+psycopg://`` URL, and the session options: the
    operator's own ``options`` and UTC, as ``make_engine`` gives them."""
    parts = urlsplit("postgresql" + url.removeprefix("postgresql+psycopg"))
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [v for k, v in query if k == "options"]
    rest = [(k, v) for k, v in query if k != "options"]
    options = " ".join([*given, UTC_SESSION])
    return urlunsplit(parts._replace(query=urlencode(rest))), options


@contextmanager
def _postgres(url: str) -> Iterator[Reader]:
    try:
        import psycopg
    except ImportError as exc:
        raise Unanswered("psycopg is not installed") from exc
    conninfo, options = _pg_conninfo(url)
    try:
        conn = psycopg.connect(conninfo, options=options, connect_timeout=10)
    except psycopg.Error as exc:
        raise Unanswered(str(exc)) from exc
    try:
        conn.read_only = True
        reader = _PostgresReader(conn, psycopg.Error)
        _check_version(reader)
        yield reader
    finally:
        conn.close()


def _check_version(reader: Reader) -> None:
    found = reader.rows("SELECT value FROM meta WHERE key = 'schema_version'")
    if not found or int(found[0]["value"]) != SCHEMA_VERSION:
        raise Unanswered("not at this program's schema version")
