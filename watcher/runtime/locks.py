"""Single instance: no two daemons, and no ``tick`` or ``scan`` beside one, on the same data.

An exclusive ``flock`` on ``<database>.lock`` for SQLite (the kernel drops it when the process
dies, even on ``kill -9``). A shared database (PostgreSQL) takes several daemons: they share
the chains through leases (``watcher.runtime.leases``) and take no single-instance lock
(``Shared``); a one-off ``tick`` or ``scan`` is refused while any of them is alive
(``LeaseCheck``). ``LeaseLock`` (a lease on the one ``daemon`` row) makes a daemon alone on
such a database, for whoever wants that.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from watcher.errors import WatcherError
from watcher.runtime.status_doc import RUNNING_WITHIN
from watcher.settings import Settings
from watcher.store.db import read_session, sqlite_path, transaction
from watcher.store.outbox import iso
from watcher.store.tables import Daemon as DaemonRow
from watcher.store.tables import DaemonInstance


class DaemonLocked(WatcherError):
    """Another daemon holds the single-instance lock on this database (exit 1)."""


class InstanceLock(Protocol):
    """Refuses a second daemon on the same data."""

    def acquire(self) -> None:
        """Take the lock, or raise ``DaemonLocked`` with a message naming the holder's pid."""

    def release(self) -> None:
        """Give the lock back; safe to call when it is not held."""


class FileLock:
    """An exclusive ``flock`` on a file beside the SQLite database; the file holds the pid.

    ``role`` says who holds it: the daemon (``"daemon"``, the file holds ``<pid>``) or a
    one-off command that must not run beside it (``"tick"``, ``"scan"``: ``<pid> <role>``).
    """

    def __init__(self, path: Path, *, pid: int, role: str = "daemon") -> None:
        self.path = path
        self.pid = pid
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise WatcherError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").split()
            os.close(fd)
            holder = text[0] if text else "unknown"
            who = "daemon" if len(text) < 2 or text[1] == "daemon" else f"`{text[1]}`"
            raise DaemonLocked(
                f"another proofwatch {who} (pid {holder}) is already running on this "
                f"database (lock file {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        label = "" if self.role == "daemon" else f" {self.role}"
        os.pwrite(fd, f"{self.pid}{label}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


class LeaseLock:
    """A lease on the ``daemon`` row, for databases without a shared file (PostgreSQL).

    The holder renews it with every heartbeat (``Daemon`` does); it expires ``ttl`` after the
    last one, so a crashed daemon's successor waits at most that long.
    """

    def __init__(
        self,
        engine: Engine,
        now: Callable[[], datetime],
        *,
        pid: int,
        host: str,
        ttl: timedelta = RUNNING_WITHIN,
    ) -> None:
        self.engine, self.now, self.pid, self.host, self.ttl = engine, now, pid, host, ttl

    def acquire(self) -> None:
        now = self.now()
        with transaction(self.engine) as session:
            row = session.get(DaemonRow, 1, with_for_update=True)
            if row is not None and _held_by_other(row, self.pid, self.host, now, self.ttl):
                raise DaemonLocked(
                    f"another proofwatch daemon (pid {row.pid} on {row.host}) holds the lease "
                    f"on this database (last heartbeat {iso(row.last_heartbeat_at)})"
                )
            row = row or DaemonRow(id=1)
            row.pid, row.host, row.started_at = self.pid, self.host, now
            row.last_heartbeat_at, row.stopped_at = now, None
            session.add(row)

    def release(self) -> None:
        """Nothing to do: the daemon marks its row stopped, which frees the lease."""


def _held_by_other(row: DaemonRow, pid: int, host: str, now: datetime, ttl: timedelta) -> bool:
    if (row.pid, row.host) == (pid, host) or row.pid is None or row.stopped_at is not None:
        return False
    return row.last_heartbeat_at is not None and now - row.last_heartbeat_at <= ttl


class Shared:
    """No single-instance lock: the daemons sharing a database claim their work instead."""

    def acquire(self) -> None:
        """Nothing to take."""

    def release(self) -> None:
        """Nothing was taken."""


def make_lock(settings: Settings, engine: Engine, now: Callable[[], datetime]) -> InstanceLock:
    """A file lock beside a SQLite database; none on a shared one (``Shared``)."""
    path = sqlite_path(settings.database_url)
    if path is not None:
        return FileLock(lock_path(path), pid=os.getpid())
    return Shared()


def lock_path(database: Path) -> Path:
    """``<database>.lock`` beside a SQLite file."""
    return database.resolve().with_name(database.name + ".lock")


class LeaseCheck:
    """For one-off commands on a shared database: refuse while a daemon is alive on it (its
    row's lease unexpired by the wall clock, or the ``daemon`` row's heartbeat fresh), without
    taking anything (the command writes no heartbeat)."""

    def __init__(self, engine: Engine, now: Callable[[], datetime], *, role: str) -> None:
        self.engine, self.now, self.role = engine, now, role

    def acquire(self) -> None:
        with read_session(self.engine) as session:
            row = session.get(DaemonRow, 1)
            live = session.exec(
                select(DaemonInstance).where(
                    col(DaemonInstance.stopped_at).is_(None),
                    col(DaemonInstance.expires_at) > datetime.now(UTC),
                )
            ).first()
        if live is not None:
            row = DaemonRow(pid=live.pid, host=live.host, last_heartbeat_at=live.last_heartbeat_at)
        elif row is None or not _held_by_other(row, -1, "", self.now(), RUNNING_WITHIN):
            return
        raise DaemonLocked(
            f"a proofwatch daemon (pid {row.pid} on {row.host}) holds the lease on this "
            f"database: `{self.role}` would scan and deliver beside it"
        )

    def release(self) -> None:
        """Nothing was taken."""


@contextlib.contextmanager
def command_lock(
    settings: Settings, engine: Engine, now: Callable[[], datetime], role: str
) -> Iterator[None]:
    """Hold the daemon's single-instance lock while a one-off ``tick`` or ``scan`` runs, so it
    never scans or delivers beside a daemon (or another such command); ``DaemonLocked``
    (exit 1, naming the holder's pid) when it is held."""
    path = sqlite_path(settings.database_url)
    lock: InstanceLock = (
        FileLock(lock_path(path), pid=os.getpid(), role=role)
        if path is not None
        else LeaseCheck(engine, now, role=role)
    )
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
