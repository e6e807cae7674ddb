"""A chain's outages: consecutive failed polls, announced once as ``watcher.degraded`` and once
more as ``watcher.recovered``.

A chain whose poll fails ``DEGRADED_AFTER_FAILURES`` times in a row (or keeps failing for
``DEGRADED_AFTER``) is announced once; the next good poll announces the recovery. Each
announcement and the chain's state commit in one transaction. An outage announced before a
restart is resumed from the database, so its recovery is still announced exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.settings import ChainSettings
from watcher.store.db import read_session, transaction
from watcher.store.outbox import emit, iso
from watcher.store.tables import ChainState, OutboxEvent

log = structlog.get_logger("watcher.daemon")

DEGRADED_AFTER_FAILURES = 3
DEGRADED_AFTER = timedelta(seconds=60)


@dataclass
class Outage:
    """A chain's consecutive failed polls, and whether that outage has been announced."""

    failures: int = 0
    since: datetime | None = None  # when the first failed poll of this outage began
    announced: bool = False  # watcher.degraded written
    total_failures: int = 0  # failed polls over the life of the process (for /metrics)

    def failed(self, now: datetime, began: datetime | None = None) -> bool:
        """Count a failed poll (that ``began`` then and ended ``now``); True when the outage is
        due to be announced and has not been yet."""
        if self.since is None:
            self.since = began or now
        self.failures += 1
        self.total_failures += 1
        long = now - self.since >= DEGRADED_AFTER
        return not self.announced and (self.failures >= DEGRADED_AFTER_FAILURES or long)

    def reset(self) -> None:
        """A poll succeeded (and any announced outage was announced as over)."""
        self.failures, self.since, self.announced = 0, None, False


class ChainHealth:
    """Every configured chain's ``Outage`` and the writes that announce them."""

    def __init__(
        self, engine: Engine, chains: tuple[ChainSettings, ...], now: Callable[[], datetime]
    ) -> None:
        self.engine, self.now = engine, now
        self.outages = {chain.name: Outage() for chain in chains}

    def poll_failures(self) -> dict[str, tuple[int, int]]:
        """Per chain: (consecutive failed polls, failed polls since the daemon started)."""
        return {name: (o.failures, o.total_failures) for name, o in self.outages.items()}

    def load(self, *names: str) -> None:
        """Resume outages announced before a restart (or by the daemon this one took a
        chain over from), so their recovery is announced once; every chain, or ``names``."""
        with read_session(self.engine) as session:
            for name, outage in self.outages.items():
                if names and name not in names:
                    continue
                outage.reset()
                state = session.get(ChainState, name)
                if state is None or not state.degraded:
                    continue
                prefix = f"watcher.degraded:{name}:"
                key = session.exec(
                    select(OutboxEvent.dedupe_key)
                    .where(col(OutboxEvent.dedupe_key).startswith(prefix, autoescape=True))
                    .order_by(col(OutboxEvent.seq).desc())
                ).first()
                since = datetime.fromisoformat(key.removeprefix(prefix)) if key else None
                outage.since = since or state.last_ok_at or self.now()
                outage.announced = True

    def last_error(self, chain: ChainSettings) -> str | None:
        """The error the scanner recorded for the chain's last poll, if any."""
        with read_session(self.engine) as session:
            state = session.get(ChainState, chain.name)
        return state.last_error if state is not None else None

    def _state(self, session: Session, chain: ChainSettings) -> ChainState:
        state = session.get(ChainState, chain.name)
        return state or ChainState(chain=chain.name, chain_id=chain.chain_id)

    def record_error(self, chain: ChainSettings, error: str) -> None:
        """A failed poll the scanner could not record itself (not a ``WatcherError``)."""
        with transaction(self.engine) as session:
            state = self._state(session, chain)
            state.last_poll_at, state.last_error = self.now(), error
            session.add(state)

    def degrade(self, chain: ChainSettings, error: str, *, rpc: bool) -> None:
        """Announce the chain's outage: its state and ``watcher.degraded``, in one transaction."""
        outage = self.outages[chain.name]
        now = self.now()
        assert outage.since is not None
        data = _outage_data(chain, outage.since, failures=outage.failures, error=error)
        with transaction(self.engine) as session:
            state = self._state(session, chain)
            state.degraded, state.last_poll_at, state.last_error = True, now, error
            if rpc:
                state.rpc_ok = False
            session.add(state)
            emit(
                session,
                "watcher.degraded",
                data,
                dedupe_key=f"watcher.degraded:{chain.name}:{outage.since.isoformat()}",
                now=now,
            )
        outage.announced = True
        log.warning("chain.degraded", **data)

    def recover(self, chain: ChainSettings) -> None:
        """Announce the end of the chain's outage: ``watcher.recovered``, once."""
        outage = self.outages[chain.name]
        now = self.now()
        assert outage.since is not None
        data = _outage_data(
            chain,
            outage.since,
            recovered_at=iso(now),
            down_seconds=max(0, int((now - outage.since).total_seconds())),
        )
        with transaction(self.engine) as session:
            state = self._state(session, chain)
            state.degraded, state.rpc_ok, state.last_error = False, True, None
            session.add(state)
            emit(
                session,
                "watcher.recovered",
                data,
                dedupe_key=f"watcher.recovered:{chain.name}:{outage.since.isoformat()}",
                now=now,
            )
        log.info("chain.recovered", **data)


def _outage_data(chain: ChainSettings, since: datetime, **more: object) -> dict[str, object]:
    """The body of ``watcher.degraded`` / ``watcher.recovered``: the chain, when its outage
    began, then ``more``."""
    return {"chain": chain.name, "chain_id": chain.chain_id, "since": iso(since), **more}
