"""``proofwatch run``: the scheduler, the single-instance lock, signals, heartbeat, outages.

One APScheduler 3 ``BlockingScheduler`` (UTC) runs these jobs, each in a worker thread of its
own, all with ``max_instances=1`` and ``coalesce=True`` and their first run at once:

- ``scan:<chain>``, one per chain, every ``poll_seconds`` (an idle chain polls every
  ``idle_poll_seconds``: ``watcher.runtime.pacing``);
- ``renew`` (renewals, expiries, lapses) every minute;
- ``deliver`` (the outbox) every few seconds;
- ``heartbeat`` (the ``daemon`` row) every ``HEARTBEAT_SECONDS``.

A job never raises into the scheduler: failures are logged with fixed event names. A chain
whose poll fails ``DEGRADED_AFTER_FAILURES`` times in a row (or keeps failing for
``DEGRADED_AFTER``) is announced once with ``watcher.degraded`` and once more with
``watcher.recovered`` when a poll succeeds again; the other chains keep their own schedule.

Alone or shared: on SQLite ``watcher.runtime.locks`` refuses a second daemon (a ``flock``
beside the file). On a shared database (PostgreSQL) several daemons run side by side: each
poll of a chain first holds that chain's lease (``watcher.runtime.leases``), and every
transaction of the poll is fenced by it, so a chain is scanned by one daemon at a time and one
that lost its lease commits nothing. Delivery and renewals claim their own work (see
``watcher.notify`` and ``watcher.ledger.renewals``). Every daemon has its row
(``watcher.runtime.heartbeat``). Stopping (SIGTERM, SIGINT or ``request_stop()``): no new job
starts, running jobs finish, the scheduler shuts down, the ``daemon`` row is marked stopped.
The signal handler only writes a byte to a pipe (no lock, no logging); a stopper thread does
the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from types import FrameType
from typing import Any, Protocol

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_SCHEDULER_STARTED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import STATE_STOPPED, SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler

from watcher.errors import WatcherError
from watcher.ledger.context import Context
from watcher.redact import redact_text
from watcher.runtime.chain_jobs import ChainJobs, secrets_of
from watcher.runtime.heartbeat import Registry
from watcher.runtime.leases import ChainLeases, Clock, new_holder, wall_clock
from watcher.runtime.locks import DaemonLocked, InstanceLock, make_lock
from watcher.runtime.outages import DEGRADED_AFTER, DEGRADED_AFTER_FAILURES, Outage
from watcher.runtime.pacing import IdlePacer
from watcher.runtime.status import HEARTBEAT_SECONDS
from watcher.settings import ChainSettings
from watcher.store.db import make_engine, sqlite_path

log = structlog.get_logger("watcher.daemon")

__all__ = ["DEGRADED_AFTER", "DEGRADED_AFTER_FAILURES", "Daemon", "Intervals", "Outage", "Rounds"]


class Rounds(Protocol):
    """The work the daemon schedules: ``watcher.runtime.service.Watcher``, or a test double."""

    def scan(self, chain: ChainSettings) -> object:
        """One poll of one chain (scan, settle what became final); raises when it fails."""

    def renew(self) -> object:
        """Close ended months, issue renewals, expire invoices, lapse retainers."""

    def deliver(self) -> object:
        """Deliver the due outbox events to their channels."""


# --- the daemon ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intervals:
    """Seconds between runs of the jobs that are not per chain."""

    heartbeat: float = HEARTBEAT_SECONDS
    deliver: float = 5.0
    renew: float = 60.0


class Daemon:
    """``proofwatch run`` for one configuration: ``start()`` blocks until ``request_stop()``,
    SIGTERM or SIGINT. Single use."""

    def __init__(
        self,
        ctx: Context,
        *,
        rounds: Rounds | None = None,
        intervals: Intervals | None = None,
        lock: InstanceLock | None = None,
        listen: str | None = None,
        install_signals: bool | None = None,
        shared: bool | None = None,
        clock: Clock = wall_clock,
        pacer: IdlePacer | None = None,
    ) -> None:
        """``rounds`` defaults to a ``Watcher``; ``listen`` to ``[status] listen``; signal
        handlers are installed only when ``start()`` runs in the main thread (unless told).
        ``shared`` (default: the database is not SQLite) makes the daemon share the database
        with others through chain leases, which expire by ``clock``; ``pacer`` (idle pacing of
        the scan jobs) defaults to one on the monotonic clock."""
        self.ctx = ctx
        self.settings = ctx.settings
        if rounds is None:
            from watcher.runtime.service import (
                Watcher,  # the chain adapter: only when really running
            )

            rounds = Watcher(ctx)
        self.rounds = rounds
        self.intervals = intervals or Intervals()
        self.lock = lock if lock is not None else make_lock(ctx.settings, ctx.engine, ctx.now)
        self.listen = listen if listen is not None else ctx.settings.status.listen
        self.install_signals = install_signals
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.holder = new_holder(self.host, self.pid)
        self.shared = sqlite_path(ctx.settings.database_url) is None if shared is None else shared
        lease = timedelta(seconds=ctx.settings.daemon.lease_seconds)
        self.registry = Registry(
            ctx.engine, ctx.now, holder=self.holder, host=self.host, pid=self.pid,
            lease=lease, shared=self.shared, clock=clock,
        )  # fmt: skip
        names = [c.name for c in ctx.settings.chains]
        self.leases = (
            ChainLeases(ctx.engine, self.holder, names, lease=lease, clock=clock)
            if self.shared
            else None
        )
        self.chain_jobs = ChainJobs(
            ctx, self.rounds, self.leases, pacer or IdlePacer(), error_text=self._error_text
        )
        self.health = self.chain_jobs.health
        self.started = threading.Event()  # the scheduler is running
        self.http_url: str | None = None
        self._stop = threading.Event()  # set by the stopper: jobs starting now do nothing
        self._stop_reason = ""
        self._wake_r, self._wake_w = os.pipe()
        self._lost_to: tuple[int | None, str | None] | None = None
        self._secrets = secrets_of(ctx.settings)

    # -- control ------------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the daemon to stop (from any thread, or a signal handler): no new job starts,
        the running ones finish, then ``start()`` returns."""
        self._stop_reason = self._stop_reason or reason
        with contextlib.suppress(OSError):  # already stopped and closed
            os.write(self._wake_w, b"x")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    def start(self) -> None:
        """Take the lock, run the scheduler until asked to stop, then mark the row stopped.

        Raises ``DaemonLocked`` when another daemon holds the lock (nothing was started), or
        after a clean stop when the lease was lost to another daemon.
        """
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # we log job events ourselves
        with self._signals():
            self.lock.acquire()
            try:
                self._run()
            finally:
                self.lock.release()
                for fd in (self._wake_r, self._wake_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if self._lost_to is not None:
            pid, host = self._lost_to
            raise DaemonLocked(
                f"stopped: another daemon (pid {pid} on {host}) took over this database"
            )

    def _run(self) -> None:
        from watcher.runtime.http import StatusServer  # the listener is optional

        self.registry.claim()
        self.health.load()
        scheduler = self._scheduler()
        stopper = threading.Thread(
            target=self._stopper, args=(scheduler,), name="proofwatch-stopper", daemon=True
        )
        server = None
        reader = make_engine(self.settings.database_url, readonly=True)
        try:
            if self.listen:
                server = StatusServer(
                    self.listen,
                    reader,
                    self.settings,
                    self.ctx.now,
                    poll_failures=self.poll_failures,
                ).start()
                self.http_url = server.url
            stopper.start()
            log.info(
                "daemon.started",
                pid=self.pid,
                host=self.host,
                chains=[c.name for c in self.settings.chains],
                listen=self.http_url,
                shared=self.shared,
                holder=self.holder,
            )
            scheduler.start()  # blocks until the stopper has shut it down
        finally:
            self.started.set()  # release the stopper if the scheduler never started
            self.request_stop("exiting")
            if stopper.is_alive():
                stopper.join()
            if server is not None:
                server.stop()
            reader.dispose()
            if self.leases is not None:
                self.leases.release_all()
            self.registry.stopped()
            log.info("daemon.stopped", pid=self.pid, reason=self._stop_reason)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        install = self.install_signals
        if install is None:
            install = threading.current_thread() is threading.main_thread()
        if not install:
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stopper(self, scheduler: Any) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 1)  # blocks until request_stop()
        self._stop.set()
        self.started.wait()
        if scheduler.state == STATE_STOPPED:
            return  # never started
        log.info("daemon.stopping", reason=self._stop_reason)
        with contextlib.suppress(SchedulerNotRunningError):
            scheduler.pause()
            scheduler.shutdown(wait=True)  # running jobs finish first

    # -- scheduling ---------------------------------------------------------------------------

    def _scheduler(self) -> Any:
        chains = self.settings.chains
        scheduler = BlockingScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=len(chains) + 3)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        # The scheduler's own timing is wall-clock time; ctx.now (maybe $WATCHER_NOW) is for data.
        first = datetime.now(UTC)
        jobs: list[tuple[str, Callable[[], object], float]] = [
            ("heartbeat", self._heartbeat, self.intervals.heartbeat),
            *((f"scan:{c.name}", partial(self.chain_jobs.run, c), c.poll_seconds) for c in chains),
            ("renew", self.rounds.renew, self.intervals.renew),
            ("deliver", self.rounds.deliver, self.intervals.deliver),
        ]
        for job_id, fn, seconds in jobs:
            scheduler.add_job(
                partial(self._guarded, job_id, fn),
                "interval",
                seconds=seconds,
                id=job_id,
                name=job_id,
                next_run_time=first,
            )
        scheduler.add_listener(self._on_event, EVENT_SCHEDULER_STARTED | EVENT_JOB_MAX_INSTANCES)
        return scheduler

    def _on_event(self, event: Any) -> None:
        if event.code == EVENT_SCHEDULER_STARTED:
            self.started.set()
        else:
            log.debug("job.still_running", job=event.job_id)  # this run is skipped

    def _guarded(self, job: str, fn: Callable[[], object]) -> None:
        """Run one job; log its failure, never raise into the scheduler."""
        if self._stop.is_set():
            return
        try:
            fn()
        except WatcherError as exc:
            log.error("job.failed", job=job, error=self._error_text(exc))
        except Exception as exc:
            log.error(
                "job.crashed",
                job=job,
                error=self._error_text(exc),
                traceback=redact_text(traceback.format_exc(), self._secrets),
            )

    def _error_text(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        if not isinstance(exc, WatcherError):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return redact_text(text, self._secrets)[:500]

    def poll_failures(self) -> dict[str, tuple[int, int]]:
        """Per chain: (consecutive failed polls, failed polls since the daemon started)."""
        return self.chain_jobs.health.poll_failures()

    # -- the daemon's rows --------------------------------------------------------------------

    def _heartbeat(self) -> None:
        lost_to = self.registry.beat()
        if self.leases is not None:
            self.leases.renew()
        if lost_to is not None:
            self._lost_to = lost_to
            log.error("daemon.lock_lost", holder_pid=lost_to[0], holder=lost_to[1])
            self.request_stop("lock lost")


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
