"""Engine, schema version, ordered migrations and the operator views.

A fresh database is created at the newest schema; an older one is brought forward by the
ordered ``MIGRATIONS`` (each a list of SQL statements), all in one transaction. Views are
dropped and recreated every time, so they always match the code.

The same code runs on SQLite (the embedded default) and PostgreSQL (``postgresql+psycopg://``):
one ordered list of migrations, a statement given per dialect only where the SQL must differ,
and SQLite's engine setup (pragmas, ``BEGIN IMMEDIATE``) only on SQLite.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlmodel import Session, SQLModel

from watcher.errors import WatcherError
from watcher.redact import database_secrets, redact_database_url, redact_text
from watcher.store import tables  # noqa: F401  (registers the tables)
from watcher.store.views import views

BUSY_TIMEOUT_MS = 10_000
UTC_SESSION = "-c timezone=UTC"  # PostgreSQL sessions: CURRENT_TIMESTAMP and casts in UTC

#: One migration statement: SQL both stores accept, or one text per dialect name
#: ("sqlite", "postgresql") where they differ.
Statement = str | Mapping[str, str]

#: (version, statements). Append only; never edit a released entry.
MIGRATIONS: list[tuple[int, list[Statement]]] = [
    (1, []),  # the initial schema, created from the table definitions
    (
        2,  # a transfer funds at most one invoice, also under concurrent writers (PostgreSQL)
        [
            "CREATE UNIQUE INDEX IF NOT EXISTS uq_allocations_active_transfer "
            "ON allocations (transfer_id) WHERE active"
        ],
    ),
    (
        3,  # review reasons per transfer: clearing one transfer's review keeps another's
        [
            "CREATE TABLE IF NOT EXISTS reviews ("
            "transfer_id INTEGER NOT NULL REFERENCES transfers (id), "
            "invoice_id INTEGER NOT NULL REFERENCES invoices (id), "
            "reason VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, cleared_at TIMESTAMP, "
            "PRIMARY KEY (transfer_id, invoice_id))",
            "CREATE INDEX IF NOT EXISTS ix_reviews_invoice_id ON reviews (invoice_id)",
            "INSERT INTO reviews (transfer_id, invoice_id, reason, created_at) "
            "SELECT t.id, i.id, i.review_reason, CURRENT_TIMESTAMP FROM invoices i "
            "JOIN transfers t ON i.review_reason LIKE 'transfer ' || t.uid || ' %' "
            "WHERE i.review_reason IS NOT NULL",
        ],
    ),
    (
        4,  # deadlines by the chain's clock: block timestamps of payments and of the cursor
        [
            "ALTER TABLE transfers ADD COLUMN block_time TIMESTAMP",
            "ALTER TABLE chain_state ADD COLUMN cursor_time TIMESTAMP",
            "ALTER TABLE transfers ADD COLUMN attribution VARCHAR",
            {
                "sqlite": "CREATE TABLE IF NOT EXISTS token_decimals (chain VARCHAR NOT NULL, "
                "token_address VARCHAR NOT NULL, chain_id INTEGER NOT NULL, decimals INTEGER NOT "
                "NULL, read_at TIMESTAMP NOT NULL, PRIMARY KEY (chain, token_address))",
                "postgresql": "CREATE TABLE IF NOT EXISTS token_decimals (chain VARCHAR NOT NULL, "
                "token_address VARCHAR NOT NULL, chain_id BIGINT NOT NULL, decimals INTEGER NOT "
                "NULL, read_at TIMESTAMP NOT NULL, PRIMARY KEY (chain, token_address))",
            },
        ],
    ),
    (
        6,  # a chain halted by a finality violation, and the operator's acknowledged resumes
        [
            "ALTER TABLE chain_state ADD COLUMN halted_by VARCHAR",
            "ALTER TABLE chain_state ADD COLUMN resume_ack VARCHAR",
            {  # PostgreSQL numbers the rows with a sequence; SQLite's INTEGER PRIMARY KEY does
                "sqlite": "CREATE TABLE IF NOT EXISTS chain_resumes (id INTEGER NOT NULL "
                "PRIMARY KEY, chain VARCHAR NOT NULL, event_id VARCHAR NOT NULL, resumed_by "
                "VARCHAR NOT NULL, resumed_at TIMESTAMP NOT NULL, cursor INTEGER)",
                "postgresql": "CREATE TABLE IF NOT EXISTS chain_resumes (id SERIAL NOT NULL "
                "PRIMARY KEY, chain VARCHAR NOT NULL, event_id VARCHAR NOT NULL, resumed_by "
                "VARCHAR NOT NULL, resumed_at TIMESTAMP NOT NULL, cursor BIGINT)",
            },
            "CREATE INDEX IF NOT EXISTS ix_chain_resumes_chain ON chain_resumes (chain)",
        ],
    ),
    (
        8,  # a channel whose receiver answered 410 Gone is disabled until the operator enables it
        [
            "CREATE TABLE IF NOT EXISTS disabled_channels ("
            "channel VARCHAR NOT NULL PRIMARY KEY, "
            "disabled_at TIMESTAMP NOT NULL, "
            "reason VARCHAR NOT NULL, "
            "event_id VARCHAR NOT NULL)"
        ],
    ),
    (
        5,  # a final-block receipt that cannot be confirmed is retried, and alerted after a time
        ["ALTER TABLE transfers ADD COLUMN unconfirmed_since TIMESTAMP"],
    ),
    (
        9,  # several daemons on one database: who runs, and which daemon scans which chain
        [
            "CREATE TABLE IF NOT EXISTS daemons (holder VARCHAR NOT NULL PRIMARY KEY, "
            "host VARCHAR NOT NULL, pid INTEGER NOT NULL, started_at TIMESTAMP NOT NULL, "
            "last_heartbeat_at TIMESTAMP NOT NULL, expires_at TIMESTAMP NOT NULL, "
            "stopped_at TIMESTAMP)",
            "CREATE TABLE IF NOT EXISTS chain_leases (chain VARCHAR NOT NULL PRIMARY KEY, "
            "holder VARCHAR, acquired_at TIMESTAMP, expires_at TIMESTAMP)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL with ``synchronous = NORMAL``: a commit is written to the WAL before it returns and
    survives the process being killed (kill -9, OOM): that is the crash safety the scanner
    relies on (a chunk's findings, hooks and cursor in one transaction). What NORMAL gives up
    against FULL is only on power loss or an OS crash: the transactions since the WAL was last
    synced may roll back (the database stays consistent, never half a transaction); the
    scanner then rescans from the older cursor and writes the same facts again (same event
    ids). FULL would sync the WAL at every commit, a disk flush per chunk."""
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys.

    Writers take SQLite's write lock at ``BEGIN IMMEDIATE`` so they queue on the busy timeout
    instead of failing on a lock upgrade; a ``readonly`` engine uses plain deferred
    transactions and never waits for a writer (WAL). PostgreSQL sessions run in UTC (the
    timestamps are stored as UTC without a zone, and ``CURRENT_TIMESTAMP`` must agree).
    """
    engine = _make_engine(url, readonly=readonly)
    _engines.add(engine)
    return engine


# Every engine ``make_engine`` made and not yet garbage: the CLI disposes them when it ends its
# process without the interpreter's teardown (``watcher.cli.app._end_process``).
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def dispose_engines() -> None:
    """Close the pooled connections of every engine still alive (SQLite then checkpoints and
    removes its WAL file, as when the interpreter frees the engine at exit)."""
    for engine in list(_engines):
        engine.dispose()


def _make_engine(url: str, *, readonly: bool) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None}
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine
    try:
        given = sa.engine.make_url(url).query.get("options")  # the operator's own, kept
        options = " ".join([*([given] if isinstance(given, str) else given or ()), UTC_SESSION])
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"options": options})
    except (ArgumentError, ImportError, ValueError):
        raise WatcherError(f"cannot use database {redact_database_url(url)}") from None


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return Path(path) if path and path != ":memory:" else None
    return None


def database_exists(url: str) -> bool:
    path = sqlite_path(url)
    return path is None or path.exists()


def current_version(conn: sa.Connection) -> int | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table("meta"):
        return None
    row = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).first()
    return int(row[0]) if row else None


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


def _column_exists(conn: sa.Connection, statement: str) -> bool:
    """Whether ``statement`` adds a column the table already has (SQLite has no
    ``ADD COLUMN IF NOT EXISTS``), so that re-running a step changes nothing."""
    match = _ADD_COLUMN.match(statement.strip())
    if match is None:
        return False
    table, column = match.groups()
    return any(c["name"] == column for c in sa.inspect(conn).get_columns(table))


def dialect_sql(statement: Statement, dialect: str) -> str:
    """The text of ``statement`` for ``dialect``."""
    if isinstance(statement, str):
        return statement
    return statement[dialect]


def migrate(engine: Engine) -> tuple[int | None, int]:
    """Create or migrate the schema and recreate the views; returns (old, new) versions."""
    dialect = engine.dialect.name
    try:
        with engine.begin() as conn:
            old = current_version(conn)
            if old is None:
                SQLModel.metadata.create_all(conn)
            elif old > SCHEMA_VERSION:
                raise WatcherError(
                    f"database schema version {old} is newer than this program ({SCHEMA_VERSION})"
                )
            else:
                for version, statements in MIGRATIONS:
                    if version > old:
                        for statement in statements:
                            sql = dialect_sql(statement, dialect)
                            if not _column_exists(conn, sql):
                                conn.execute(sa.text(sql))
            operator_views = views(dialect)
            for name in operator_views:
                conn.execute(sa.text(f"DROP VIEW IF EXISTS {name}"))
            for sql in operator_views.values():
                conn.execute(sa.text(sql))
            conn.execute(
                sa.text(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', :v) "
                    "ON CONFLICT(key) DO UPDATE SET value = :v"
                ),
                {"v": str(SCHEMA_VERSION)},
            )
    except OperationalError as exc:
        raise database_error(engine, exc, during="init") from None
    return old, SCHEMA_VERSION


def database_error(engine: Engine, exc: OperationalError, during: str = "") -> WatcherError:
    """One line naming the database (password redacted) and the driver's first line."""
    url = engine.url.render_as_string(hide_password=False)
    reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc).__name__
    reason = redact_text(reason, database_secrets(url))
    what = f"database error during {during} on" if during else "cannot use the database"
    return WatcherError(f"{what} {redact_database_url(url)}: {reason}")


def require_schema(engine: Engine) -> None:
    """Refuse to work on a database that was never initialised or needs a migration; a
    database that cannot be reached is one error line (exit 1)."""
    try:
        with engine.connect() as conn:
            version = current_version(conn)
    except OperationalError as exc:
        raise database_error(engine, exc) from None
    if version is None:
        raise WatcherError("database is not initialised: run `proofwatch init`")
    if version != SCHEMA_VERSION:
        raise WatcherError(
            f"database schema is version {version}, this program needs {SCHEMA_VERSION}: "
            "run `proofwatch init` to migrate"
        )


Fence = Callable[[Session], None]
_FENCES: ContextVar[tuple[Fence, ...]] = ContextVar("proofwatch_fences", default=())


@contextmanager
def fenced(check: Fence) -> Iterator[None]:
    """Within the block, every ``transaction`` of this thread (context) runs ``check(session)``
    as its last statement before it commits: a check that raises rolls the whole unit back.
    The daemon fences a chain's scan with its lease (``watcher.runtime.leases``)."""
    token = _FENCES.set((*_FENCES.get(), check))
    try:
        yield
    finally:
        _FENCES.reset(token)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: everything inside commits together or not at all (after the fences
    of ``fenced`` blocks, if any, have passed in the same transaction)."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            for check in _FENCES.get():
                check(session)
            session.commit()
        except OperationalError as exc:
            session.rollback()
            if "locked" in str(exc.orig):
                raise WatcherError("database is locked by another writer past the timeout") from exc
            raise WatcherError(f"database error: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            session.rollback()
            raise WatcherError(f"database error: {exc}") from exc
        except BaseException:
            session.rollback()
            raise


def read_session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
