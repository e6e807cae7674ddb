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
from sqlalchemy.engine import Engine
from sqlmodel import col, select

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
            row = session.get(DaemonRow, 1) or DaemonRow(id=1)
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
            row = session.get(DaemonRow, 1, with_for_update=True)
            if not self.shared and row is not None and (row.pid, row.host) != (self.pid, self.host):
                return row.pid, row.host
            if row is None or (row.pid, row.host) != (self.pid, self.host):
                row = row or DaemonRow(id=1)
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
