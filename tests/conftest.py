"""Fixtures every suite can use: the real PostgreSQL test server and one database URL fixture
parametrized over the stores (SQLite file, PostgreSQL database), as APScheduler runs one
datastore suite over every backend.

The server starts once per session, on first use (a run that asks for no PostgreSQL database
starts none), and is always stopped; each test gets a fresh database on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.postgres import STORES, PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (stopped at the end, or at exit)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[Callable[..., str]]:
    """``new(template=None) -> url``: a fresh database on the session's server per call,
    dropped when the test ends."""
    made: list[str] = []

    def new(template: str | None = None) -> str:
        name = pg_server.create_database(template=template)
        made.append(name)
        return pg_server.url(name)

    yield new
    for name in made:
        pg_server.drop_database(name)


@pytest.fixture
def pg_url(pg_database: Callable[..., str]) -> str:
    """The URL of a fresh, empty PostgreSQL database (``postgresql+psycopg://``)."""
    return pg_database()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    """The store a parametrized test runs on: "sqlite" or "postgresql"."""
    return str(request.param)


@pytest.fixture
def db_url(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of the current ``store``: a SQLite file in tmp_path, or a new
    database on the session's PostgreSQL server."""
    if store == "sqlite":
        return sqlite_url(tmp_path / "watcher.db")
    new: Callable[..., str] = request.getfixturevalue("pg_database")
    return new()
