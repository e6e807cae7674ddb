"""Chain leases: on a shared database (PostgreSQL) each chain is scanned by one daemon at a time.

One ``chain_leases`` row per chain names its holder (a ``daemons`` row) and when the lease
expires. Before each poll the daemon ``hold``\\ s the chain: it renews its own lease, takes a
free or expired one, or skips the poll when another live daemon holds it. The heartbeat
renews every lease the daemon holds, so a lease outlives a long poll; a daemon that dies stops
renewing, and another daemon takes its chains over within ``[daemon] lease_seconds``, from the
committed cursor (the scanner loads it at the start of every poll).

The lease is checked again, with its row locked, as the last statement of every transaction
that commits the chain's scan (``fence``, run by ``watcher.store.db.fenced``): a daemon that
lost its lease (paused past the expiry, cut off from the database) commits nothing, and the
daemon that took the lease over waits on that row lock, so the two never both commit.

Work is spread: a daemon takes a free chain only while it holds fewer than its fair share
(the configured chains divided by the live daemons, rounded up), and gives a chain back at
the start of a poll while it holds more, so a daemon that starts beside one that holds every
chain gets some. Expiry is judged by this host's wall clock (never ``WATCHER_NOW``): the
hosts sharing a database must keep their clocks in sync (NTP), well within the lease.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.errors import WatcherError
from watcher.store.db import Fence, read_session, transaction
from watcher.store.tables import ChainLease, DaemonInstance

log = structlog.get_logger("watcher.daemon")

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """Real UTC time: leases expire by it, whatever ``WATCHER_NOW`` says."""
    return datetime.now(UTC)


def new_holder(host: str, pid: int) -> str:
    """A daemon's holder id: its host and pid, and a random part unique to this start."""
    return f"{host}/{pid}/{secrets.token_hex(4)}"


class LeaseLost(WatcherError):
    """This daemon no longer holds the chain's lease: the transaction was rolled back."""


class ChainLeases:
    """The leases of one daemon (``holder``) on the chains it is configured with."""

    def __init__(
        self,
        engine: Engine,
        holder: str,
        chains: Sequence[str],
        *,
        lease: timedelta,
        clock: Clock = wall_clock,
    ) -> None:
        self.engine, self.holder, self.chains = engine, holder, tuple(chains)
        self.lease, self.clock = lease, clock

    def hold(self, chain: str) -> bool:
        """Before a poll of ``chain``: True when this daemon holds its lease (renewed) or has
        just taken it; False when another live daemon holds it, or when this daemon holds more
        than its fair share and gives this chain back (then it is free for another)."""
        now = self.clock()
        with transaction(self.engine) as session:
            _ensure_row(session, chain)
            row = _locked(session, chain)
            if row is None:
                raise WatcherError(f"chain {chain}: its lease row could not be created")
            mine = row.holder == self.holder and _live(row, now)
            if not mine and _live(row, now):
                return False
            others = self._held(session, now, besides=chain)
            if others >= self._share(session, now):
                if mine:
                    row.holder, row.expires_at = None, now
                    session.add(row)
                    log.info("chain.lease_released", chain=chain, holder=self.holder)
                return False
            if not mine:
                log.info("chain.lease_taken", chain=chain, holder=self.holder, previous=row.holder)
                row.holder, row.acquired_at = self.holder, now
            row.expires_at = now + self.lease
            session.add(row)
        return True

    def fence(self, chain: str) -> Fence:
        """The check ``fenced`` runs in every transaction of a poll of ``chain``: raises
        ``LeaseLost`` (the transaction rolls back) unless this daemon still holds the lease."""

        def check(session: Session) -> None:
            row = _locked(session, chain)
            if row is None or row.holder != self.holder or not _live(row, self.clock()):
                holder = (row.holder if row is not None else None) or "nobody"
                raise LeaseLost(
                    f"chain {chain}: this daemon lost its lease (now held by {holder}); "
                    "nothing of this poll's transaction was committed"
                )

        return check

    def renew(self) -> list[str]:
        """Extend every unexpired lease this daemon holds (the heartbeat); the chains held."""
        now = self.clock()
        with transaction(self.engine) as session:
            session.execute(
                update(ChainLease)
                .where(col(ChainLease.holder) == self.holder, col(ChainLease.expires_at) > now)
                .values(expires_at=now + self.lease)
            )
        return self.held()

    def held(self) -> list[str]:
        """The chains whose lease this daemon holds now."""
        now = self.clock()
        with read_session(self.engine) as session:
            return sorted(
                session.exec(
                    select(ChainLease.chain).where(
                        ChainLease.holder == self.holder, col(ChainLease.expires_at) > now
                    )
                ).all()
            )

    def release_all(self) -> None:
        """Give every lease back (a clean stop): another daemon takes them at its next poll."""
        now = self.clock()
        with transaction(self.engine) as session:
            session.execute(
                update(ChainLease)
                .where(col(ChainLease.holder) == self.holder)
                .values(holder=None, expires_at=now)
            )

    def _held(self, session: Session, now: datetime, *, besides: str) -> int:
        return session.exec(
            select(func.count())
            .select_from(ChainLease)
            .where(
                ChainLease.holder == self.holder,
                col(ChainLease.expires_at) > now,
                ChainLease.chain != besides,
            )
        ).one()

    def _share(self, session: Session, now: datetime) -> int:
        """The configured chains divided by the live daemons (this one counted), rounded up."""
        live = session.exec(
            select(func.count())
            .select_from(DaemonInstance)
            .where(
                col(DaemonInstance.stopped_at).is_(None),
                col(DaemonInstance.expires_at) > now,
                DaemonInstance.holder != self.holder,
            )
        ).one()
        return math.ceil(len(self.chains) / (live + 1))


def _live(row: ChainLease, now: datetime) -> bool:
    return row.holder is not None and row.expires_at is not None and row.expires_at > now


def _ensure_row(session: Session, chain: str) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(ChainLease).values(chain=chain).on_conflict_do_nothing())


def _locked(session: Session, chain: str) -> ChainLease | None:
    """The chain's lease row, read afresh and locked (``FOR UPDATE``; on SQLite the
    transaction already holds the database's write lock)."""
    return session.exec(
        select(ChainLease)
        .where(ChainLease.chain == chain)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
