"""The scan job of each chain in ``proofwatch run``: lease, idle pacing, outages.

One ``ChainJobs`` per daemon; the scheduler calls ``run(chain)`` at the chain's
``poll_seconds``. A run polls only when the chain is due (an idle chain every
``idle_poll_seconds``: ``watcher.runtime.pacing``) and, on a shared database, only while this
daemon holds the chain's lease (``watcher.runtime.leases``), every transaction of the poll
fenced by it. Failed polls count towards the chain's outage (``watcher.runtime.outages``),
announced once as degraded and once as recovered.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import structlog

from watcher.errors import RpcError, WatcherError
from watcher.redact import redact_text
from watcher.runtime.leases import ChainLeases, LeaseLost
from watcher.runtime.outages import ChainHealth
from watcher.runtime.pacing import IdlePacer, chain_is_busy
from watcher.settings import ChainSettings, Settings
from watcher.store.db import fenced

if TYPE_CHECKING:
    from watcher.ledger.context import Context
    from watcher.runtime.daemon import Rounds

log = structlog.get_logger("watcher.daemon")


def secrets_of(settings: Settings) -> Sequence[str]:
    """What must never reach a log line: the configured secrets and every RPC URL."""
    return (*settings.secrets, *(u for c in settings.chains for u in c.rpc_urls))


class ChainJobs:
    """Each chain's scan job: held lease, idle pacing, outage bookkeeping."""

    def __init__(
        self,
        ctx: Context,
        rounds: Rounds,
        leases: ChainLeases | None,
        pacer: IdlePacer,
        *,
        error_text: Callable[[BaseException], str],
    ) -> None:
        """``leases`` is None when the daemon is alone on its database; ``error_text`` makes a
        failure's one redacted log line."""
        self.ctx = ctx
        self.rounds = rounds
        self.leases = leases
        self.pacer = pacer
        self.health = ChainHealth(ctx.engine, ctx.settings.chains, ctx.now)
        self.outages = self.health.outages
        self._error_text = error_text
        self._secrets = secrets_of(ctx.settings)
        self._held: set[str] = set()  # chains whose lease this daemon held at its last poll

    def run(self, chain: ChainSettings) -> None:
        """One run of a chain's scan job. On a shared database only while this daemon holds
        the chain's lease, asked at every run (so chains are shared out and taken over at the
        job's pace, idle or not), every transaction of the poll fenced by it."""
        if self.leases is None:
            self._paced_poll(chain)
            return
        if not self.leases.hold(chain.name):
            self._held.discard(chain.name)
            return  # another daemon scans it
        if chain.name not in self._held:  # (again) ours: its outage as the database knows it
            self.health.load(chain.name)
            self.pacer.polled(chain, 0.0, complete=False)  # and polled at once
            self._held.add(chain.name)
        try:
            with fenced(self.leases.fence(chain.name)):
                self._paced_poll(chain)
        except LeaseLost as exc:
            log.warning("chain.lease_lost", chain=chain.name, error=str(exc))

    def _paced_poll(self, chain: ChainSettings) -> None:
        """A poll, unless the chain is idle and was polled less than ``idle_poll_seconds``
        ago."""
        if not self.pacer.due(chain, partial(chain_is_busy, self.ctx.engine, chain)):
            return
        began = self.pacer.began()
        self._poll(chain)
        complete = self.outages[chain.name].failures == 0  # _poll resets it on a good poll
        self.pacer.polled(chain, began, complete=complete)

    def _poll(self, chain: ChainSettings) -> None:
        outage = self.outages[chain.name]
        began = self.ctx.now()
        try:
            report = self.rounds.scan(chain)
        except Exception as exc:
            if _lost_lease(exc):
                raise LeaseLost(str(exc)) from exc
            error = self._error_text(exc)
            if not isinstance(exc, WatcherError):  # the scanner records only its own errors
                log.error(
                    "job.crashed",
                    job=f"scan:{chain.name}",
                    error=error,
                    traceback=redact_text(traceback.format_exc(), self._secrets),
                )
            if outage.failed(self.ctx.now(), began):
                self.health.degrade(chain, error, rpc=isinstance(exc, RpcError))
            elif not isinstance(exc, WatcherError):
                self.health.record_error(chain, error)
            return
        if getattr(report, "complete", True) is False:
            # It stopped short of the head (the chain moved while it read): not a good poll.
            # The scanner recorded why; repeated, it is an outage like any other.
            if outage.failed(self.ctx.now(), began):
                why = self.health.last_error(chain)
                self.health.degrade(chain, why or "the poll stopped short of the head", rpc=False)
            return
        if outage.announced:
            self.health.recover(chain)
        outage.reset()


def _lost_lease(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was caused by, a ``LeaseLost`` (the scanner may wrap it while
    recording its own failure, which the fence refuses too)."""
    while exc is not None:
        if isinstance(exc, LeaseLost):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
