"""The read commands' DB-API reader (``watcher.store.dbapi``): read-only, at this program's
schema version, and ``Unanswered`` whenever the engine path must answer instead."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from watcher.store import db, dbapi
from watcher.store.dbapi import Unanswered, open_reader


def test_schema_version_is_the_store_s() -> None:
    """The reader knows the schema version the migrations end at (bump it with each one)."""
    assert dbapi.SCHEMA_VERSION == db.SCHEMA_VERSION


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'watcher.db'}"
    db.migrate(db.make_engine(url))
    return url


def test_sqlite_reader_reads_the_views_and_cannot_write(sqlite_url: str) -> None:
    """It reads the operator views; a write is refused (``mode=ro``) as ``Unanswered``."""
    with open_reader(sqlite_url) as reader:
        assert reader.dialect == "sqlite"
        assert reader.rows("SELECT * FROM v_status") == []
        assert reader.rows("SELECT :n AS n", {"n": 3}) == [{"n": 3}]
        with pytest.raises(Unanswered, match="readonly"):
            reader.rows("INSERT INTO meta (key, value) VALUES ('x', 'y')")


def test_missing_sqlite_file_is_unanswered_and_not_created(tmp_path: Path) -> None:
    """No database file: ``Unanswered``, and no file is left behind."""
    path = tmp_path / "none" / "watcher.db"
    with pytest.raises(Unanswered), open_reader(f"sqlite:///{path}"):
        pass
    assert not path.exists() and not path.parent.exists()


def test_other_schema_version_or_no_schema_is_unanswered(sqlite_url: str, tmp_path: Path) -> None:
    """A database at another version, or one with no tables, is left to the engine path."""
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(Unanswered, match="schema version"), open_reader(sqlite_url):
        pass
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(Unanswered, match="no such table"), open_reader(f"sqlite:///{empty}"):
        pass


def test_not_a_database_is_unanswered(tmp_path: Path) -> None:
    """A file that is not SQLite is left to the engine path, which words the error."""
    path = tmp_path / "watcher.db"
    path.write_bytes(b"not a database at all, just some bytes" * 100)
    with pytest.raises(Unanswered), open_reader(f"sqlite:///{path}"):
        pass


def test_postgres_conninfo_keeps_the_operator_options_and_adds_utc() -> None:
    """The libpq URI drops the driver name; session options are the URL's plus UTC."""
    url = (
        "postgresql+psycopg://pw:s%40cret@db.example:5433/watch?options=-c%20x%3D1&sslmode=require"
    )
    conninfo, options = dbapi._pg_conninfo(url)
    assert conninfo == "postgresql://pw:s%40cret@db.example:5433/watch?sslmode=require"
    assert options == "-c x=1 -c timezone=UTC"
    assert dbapi._pg_conninfo("postgresql+psycopg://h/d") == ("postgresql://h/d", "-c timezone=UTC")


def test_unreachable_postgres_is_unanswered() -> None:
    """A closed port: ``Unanswered`` (the engine path then names the database)."""
    with pytest.raises(Unanswered), open_reader("postgresql+psycopg://u:p@127.0.0.1:9/d"):
        pass


def test_stored_timestamps_read_as_aware_utc() -> None:
    """SQLite's text and PostgreSQL's naive UTC timestamps become aware UTC datetimes."""
    want = datetime(2026, 11, 21, 15, 21, 25, 123456, tzinfo=UTC)
    assert dbapi.utc("2026-11-21 15:21:25.123456") == want
    assert dbapi.utc(want.replace(tzinfo=None)) == want
    assert dbapi.utc("2026-11-21 15:21:25") == want.replace(microsecond=0)
    assert dbapi.utc(None) is None
