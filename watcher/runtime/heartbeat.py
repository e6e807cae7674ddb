"""The daemon's rows: who runs on this database, and since when.

Every daemon writes its own ``daemons`` row (host, pid, heartbeat, and the wall-clock time its
leases expire), so ``status`` lists every daemon sharing the database. The single ``daemon``
row (id 1) keeps its meaning: the daemon that beat last. Alone on its data (SQLite, where a
file lock already refuses a second daemon), a daemon that finds another pid in that row lost
the database to it and stops; sharing it (PostgreSQL), the daemons take turns in it.
Rows of daemons gone for a day are dropped when a daemon starts (alone on its data: every
other row, since none can be running).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.runtime.leases import Clock, wall_clock
from watcher.store.db import transaction
from watcher.store.tables import Daemon as DaemonRow
from watcher.store.tables import DaemonInstance

FORGET_AFTER = timedelta(days=1)


class Registry:
    """One daemon's rows: ``claim`` at start, ``beat`` with every heartbeat, ``stopped``."""

    def __init__(
        self,
        engine: Engine,
        now: Callable[[], datetime],
        *,
        holder: str,
        host: str,
        pid: int,
        lease: timedelta,
        shared: bool,
        clock: Clock = wall_clock,
    ) -> None:
        self.engine, self.now, self.clock = engine, now, clock
        self.holder, self.host, self.pid = holder, host, pid
        self.lease, self.shared = lease, shared

    def claim(self) -> None:
        """Write this daemon's rows as started now; drop those of daemons long gone."""
        now = self.now()
        with transaction(self.engine) as session:
            gone = col(DaemonInstance.expires_at) < self.clock() - FORGET_AFTER
            session.execute(
                delete(DaemonInstance).where(
                    gone if self.shared else col(DaemonInstance.holder) != self.holder
                )
            )
            row = self._daemon_row(session, now)
            row.pid, row.host, row.started_at = self.pid, self.host, now
            row.last_heartbeat_at, row.stopped_at = now, None
            session.add(row)
            session.add(
                DaemonInstance(
                    holder=self.holder,
                    host=self.host,
                    pid=self.pid,
                    started_at=now,
                    last_heartbeat_at=now,
                    expires_at=self.clock() + self.lease,
                )
            )

    def beat(self) -> tuple[int | None, str | None] | None:
        """Record a heartbeat; alone on the data, the (pid, host) that took the ``daemon`` row
        over if another did (nothing is written then), else None."""
        now = self.now()
        with transaction(self.engine) as session:
            row = self._daemon_row(session, now)
            if not self.shared and (row.pid, row.host) != (self.pid, self.host):
                return row.pid, row.host
            if (row.pid, row.host) != (self.pid, self.host):
                row.pid, row.host, row.started_at = self.pid, self.host, now
            row.last_heartbeat_at, row.stopped_at = now, None
            session.add(row)
            mine = session.get(DaemonInstance, self.holder) or DaemonInstance(
                holder=self.holder, host=self.host, pid=self.pid, started_at=now,
                last_heartbeat_at=now, expires_at=now,
            )  # fmt: skip
            mine.last_heartbeat_at, mine.expires_at = now, self.clock() + self.lease
            mine.stopped_at = None
            session.add(mine)
        return None

    def _daemon_row(self, session: Session, now: datetime) -> DaemonRow:
        """The ``daemon`` row, locked; created (as this daemon's) if there is none. Daemons
        starting together on a fresh database all insert it: ``ON CONFLICT DO NOTHING`` makes
        the later ones wait for the first and then use its row, instead of failing."""
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        session.execute(
            insert(DaemonRow)
            .values(id=1, pid=self.pid, host=self.host, started_at=now, last_heartbeat_at=now)
            .on_conflict_do_nothing()
        )
        return session.exec(
            select(DaemonRow)
            .where(DaemonRow.id == 1)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()

    def stopped(self) -> None:
        """Mark this daemon's rows stopped; the ``daemon`` row only while no other daemon is
        alive to take it over."""
        now, wall = self.now(), self.clock()
        with transaction(self.engine) as session:
            mine = session.get(DaemonInstance, self.holder)
            if mine is not None:
                mine.stopped_at = now
                session.add(mine)
            others = (
                self.shared
                and session.exec(
                    select(DaemonInstance.holder).where(
                        DaemonInstance.holder != self.holder,
                        col(DaemonInstance.stopped_at).is_(None),
                        col(DaemonInstance.expires_at) > wall,
                    )
                ).first()
            )
            row = session.get(DaemonRow, 1)
            if row is not None and (row.pid, row.host) == (self.pid, self.host) and not others:
                row.stopped_at = now
                session.add(row)
