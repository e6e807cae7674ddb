"""The PostgreSQL test server itself (tests/support/postgres.py): real, isolated, always stopped."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa

from tests.support.postgres import PostgresServer


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_starts_answers_and_leaves_nothing_behind_when_stopped() -> None:
    """A started server accepts password logins over TCP; stop() ends it and deletes its dir."""
    server = PostgresServer().start()
    root = server.root
    assert root is not None
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    assert _running(pid)
    with server.connect() as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None and int(str(row[0])) >= 150000
    server.stop()
    assert not root.exists()
    assert not _running(pid)


def test_a_wrong_password_is_refused(pg_server: PostgresServer) -> None:
    """TCP logins need the password, so the URLs the tests use carry a real secret."""
    assert pg_server.port is not None
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            f"postgresql://postgres:wrong@127.0.0.1:{pg_server.port}/postgres", connect_timeout=5
        )


def test_each_test_gets_its_own_database(pg_database: Callable[..., str]) -> None:
    """Two databases made for one test are distinct: a table in one is absent from the other."""
    first, second = pg_database(), pg_database()
    assert first != second
    one = sa.create_engine(first)
    two = sa.create_engine(second)
    try:
        with one.begin() as conn:
            conn.execute(sa.text("CREATE TABLE marker (id integer)"))
        assert sa.inspect(one).has_table("marker")
        assert not sa.inspect(two).has_table("marker")
    finally:
        one.dispose()
        two.dispose()


def test_a_database_from_a_template_has_the_templates_rows(
    pg_server: PostgresServer, pg_database: Callable[..., str]
) -> None:
    """CREATE DATABASE ... TEMPLATE copies the template's tables and rows."""
    name = pg_server.create_database()
    try:
        with psycopg.connect(pg_server.url(name, driver="postgresql"), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v text)")
            conn.execute("INSERT INTO t VALUES ('kept')")
        engine = sa.create_engine(pg_database(template=name))
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT v FROM t")).scalar_one() == "kept"
        finally:
            engine.dispose()
    finally:
        pg_server.drop_database(name)
