"""Scanning a chain into the store: the chain reader's results committed, one transaction each.

``scan_chain`` runs one poll of ``watcher.chain.scanner`` with ``StoreLedger`` as its ledger.
Each chunk's transfers, block hashes, balance, guard events and the cursor commit in one
transaction, and the settlement hooks (``ScanHooks.found/orphaned/finalized``) run inside it,
so allocations, releases and settlements commit atomically with the cursor and statuses: a
crash never leaves a gap, a half-stored block, or a transfer settlement has not seen.

Re-found transfers: a reorg marks the transfers above the common ancestor ``orphaned``; if the
same transfer (same uid: tx hash, kind, log index / trace position) shows up again in the new
branch, its row is reused: status back to ``seen``, block number and hash updated,
``detected_at`` kept from the first sighting, and ``found`` is called for it again. A transfer
that lands at another log index has another uid: a new row, the old one stays ``orphaned``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import structlog
from sqlalchemy import ColumnElement, delete, func, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.chain.findings import (
    ChunkResult,
    Findings,
    Pending,
    PollRecord,
    Position,
    Rewind,
    ScanReport,
    Verdict,
)
from watcher.chain.rpc import RpcPool
from watcher.chain.scanner import poll_chain
from watcher.errors import Refused
from watcher.ledger.scanning_rows import load_transfers, mark_final, pending, store_inflows
from watcher.settings import ChainSettings
from watcher.store.db import read_session, transaction
from watcher.store.outbox import emit
from watcher.store.tables import BlockHash, ChainState, Retainer, Transfer

__all__ = ["NoHooks", "ScanHooks", "ScanReport", "StoreLedger", "scan_chain"]

log = structlog.get_logger("watcher.ledger.scanning")


class ScanHooks(Protocol):
    """What settlement does with transfers; every call runs inside the scan's transaction,
    so allocations, releases and settlements commit atomically with the cursor and statuses."""

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        """New (or re-found after a reorg) transfers, status ``seen``."""

    def orphaned(self, session: Session, transfers: list[Transfer]) -> None:
        """Transfers that left the chain (status ``orphaned`` already set)."""

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        """Transfers whose receipt was re-read at finality (status ``final`` already set)."""


class NoHooks:
    """Hooks that do nothing (a scan without settlement)."""

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        """Nothing to do."""

    def orphaned(self, session: Session, transfers: list[Transfer]) -> None:
        """Nothing to do."""

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        """Nothing to do."""


def scan_chain(
    chain: ChainSettings,
    pool: RpcPool,
    engine: Engine,
    now: Callable[[], datetime],
    *,
    hooks: ScanHooks | None = None,
    from_block: int | None = None,
    to_block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """One poll of ``chain`` into the database (``watcher.chain.scanner.poll_chain``), with
    ``hooks`` (settlement) run inside each of its transactions."""
    ledger = StoreLedger(chain, engine, now, hooks or NoHooks())
    return poll_chain(
        chain, pool, ledger, from_block=from_block, to_block=to_block, progress=progress,
        native=chain.balance_guard or prices_native(engine, chain),
    )  # fmt: skip


def prices_native(engine: Engine, chain: ChainSettings) -> bool:
    """Whether a retainer on ``chain`` is priced in its native asset (without one, and with
    the balance guard off, the reader skips native inflows)."""
    with read_session(engine) as session:
        query = select(Retainer.id).where(
            Retainer.chain == chain.name, col(Retainer.token_address).is_(None)
        )
        return session.exec(query.limit(1)).first() is not None


class StoreLedger:
    """``watcher.chain.port.ScanLedger`` on the store: ``ChainState``, ``BlockHash`` and
    ``Transfer`` rows and the outbox, one transaction per call."""

    def __init__(
        self, chain: ChainSettings, engine: Engine, now: Callable[[], datetime], hooks: ScanHooks
    ) -> None:
        self.chain, self.engine, self.now, self.hooks = chain, engine, now, hooks
        self.log = log.bind(chain=chain.name)

    # -- reading -----------------------------------------------------------------------------

    def load(self, from_block: int | None) -> Position:
        """The chain's row, created or rewound as ``from_block`` asks (see the port)."""
        chain = self.chain
        with transaction(self.engine) as session:
            state = session.get(ChainState, chain.name)
            if state is None:
                state = ChainState(chain=chain.name, chain_id=chain.chain_id)
            elif state.chain_id != chain.chain_id:
                raise Refused(
                    f"chain {chain.name}: the database holds chain id {state.chain_id}, "
                    f"the configuration says {chain.chain_id}"
                )
            if state.cursor is None:
                state.cursor = (chain.start_block if from_block is None else from_block) - 1
            elif from_block is not None and from_block - 1 > state.cursor:
                raise Refused(
                    f"chain {chain.name}: --from {from_block} would skip blocks "
                    f"{state.cursor + 1}..{from_block - 1} (the cursor is at {state.cursor})"
                )
            elif from_block is not None and from_block - 1 < state.cursor:
                row = session.get(BlockHash, (chain.name, from_block - 1))
                state.cursor, state.cursor_hash = from_block - 1, row.hash if row else None
                state.balance = state.cursor_time = None
                self.log.info("scan.rewind", cursor=state.cursor)
            session.add(state)
            return Position(
                cursor=state.cursor,
                cursor_hash=state.cursor_hash,
                balance=state.balance,
                final_seen=state.final_block if state.final_block is not None else -1,
                halted_by=state.halted_by,
                resume_ack=state.resume_ack,
            )

    def stored_hash(self, number: int) -> str | None:
        with read_session(self.engine) as session:
            row = session.get(BlockHash, (self.chain.name, number))
            if row is not None:
                return row.hash
            child = session.get(BlockHash, (self.chain.name, number + 1))
            return child.parent_hash if child is not None and child.parent_hash else None

    def stored_hashes(self, up_to: int) -> dict[int, str]:
        with read_session(self.engine) as session:
            query = select(BlockHash).where(
                BlockHash.chain == self.chain.name, BlockHash.number <= up_to
            )
            rows = list(session.exec(query))
        stored = {b.number: b.hash for b in rows}
        for b in rows:  # each block's parent is known too (the kept blocks may be sparse)
            if b.number > 0 and b.parent_hash:  # "": known from a receipt or log, not a header
                stored.setdefault(b.number - 1, b.parent_hash)
        return stored

    def final_floor(self) -> int | None:
        with read_session(self.engine) as session:
            floor: int | None = session.exec(
                select(func.max(Transfer.block_number)).where(
                    Transfer.chain == self.chain.name, Transfer.status == "final"
                )
            ).one()
        return floor

    def waiting(self, final: int) -> list[Pending]:
        with read_session(self.engine) as session:
            query = select(Transfer).where(
                Transfer.chain == self.chain.name,
                Transfer.status == "seen",
                Transfer.block_number <= final,
            )
            rows = session.exec(query.order_by(col(Transfer.block_number), col(Transfer.id)))
            return [pending(t) for t in rows]

    # -- writing -----------------------------------------------------------------------------

    def commit_chunk(self, findings: Findings) -> ChunkResult:
        chain, f = self.chain, findings
        with transaction(self.engine) as session:
            found = store_inflows(session, chain, f.inflows, f.times, self.now(), self.log)
            if found:
                self.hooks.found(session, found)
            at_once = -1 if f.final_at_once is None else f.final_at_once
            final_now = [t for t in found if t.block_number <= at_once]
            if final_now:
                mark_final(session, final_now, self.now(), at_once)
                self.hooks.finalized(session, final_now)
            self._drop_hashes(session, col(BlockHash.number).between(f.first, f.last))
            self._drop_hashes(session, col(BlockHash.number) <= f.forget_up_to)
            session.execute(  # one executemany: no ORM objects for up to reorg_depth rows
                insert(BlockHash),
                [
                    {"chain": chain.name, "number": b.number, "hash": b.hash,
                     "parent_hash": b.parent_hash}
                    for b in f.hashes
                ],
            )  # fmt: skip
            for event in f.events:
                emit(session, event.kind, dict(event.data), dedupe_key=event.key, now=self.now())
            self._move_cursor(session, f.last, f.cursor_hash, f.balance, f.cursor_time)
        return ChunkResult(found=len(found), finalized=len(final_now))

    def commit_rewind(self, rewind: Rewind) -> list[Pending]:
        with transaction(self.engine) as session:
            query = select(Transfer).where(
                Transfer.chain == self.chain.name,
                Transfer.status == "seen",
                Transfer.block_number > rewind.ancestor,
            )
            orphans = list(session.exec(query))
            for transfer in orphans:
                transfer.status = "orphaned"
                session.add(transfer)
            if orphans:
                self.hooks.orphaned(session, orphans)
            self._drop_hashes(session, col(BlockHash.number) > rewind.ancestor)
            self._move_cursor(session, rewind.ancestor, rewind.ancestor_hash, None)
            if rewind.spend_ack:
                self._use_ack(session)
        return [pending(t) for t in orphans]

    def commit_finality(
        self, final: int, verdicts: Sequence[tuple[Pending, Verdict]]
    ) -> list[Pending]:
        now = self.now()
        alert_after = timedelta(seconds=self.chain.unconfirmed_alert_seconds)
        done: list[Transfer] = []
        with transaction(self.engine) as session:
            rows = load_transfers(session, [t.id for t, _ in verdicts])
            for t, verdict in verdicts:
                row = rows.get(t.id)
                if row is None or row.status != "seen":
                    continue
                if verdict.final:
                    row.status, row.finalized_at, row.final_block = "final", now, final
                    row.unconfirmed_since = None
                    done.append(row)
                else:
                    row.unconfirmed_since = since = row.unconfirmed_since or now
                    self._unconfirmed(session, row, verdict, since, alert_after)
                session.add(row)
            session.flush()
            if done:
                self.hooks.finalized(session, done)
        return [pending(t) for t in done]

    def _unconfirmed(
        self,
        session: Session,
        row: Transfer,
        verdict: Verdict,
        since: datetime,
        alert_after: timedelta,
    ) -> None:
        """Alert on a disagreement, or once a transfer waited too long."""
        chain, now = self.chain, self.now()
        data: dict[str, object] = {
            "chain": chain.name, "chain_id": chain.chain_id, "tx_hash": row.tx_hash,
            "kind": row.kind, "log_index": row.log_index, "block_number": row.block_number,
            "block_hash": row.block_hash, "asset": row.asset, "amount_base_units": str(row.amount),
            "reason": verdict.reason, "unconfirmed_since": since.isoformat(),
        }  # fmt: skip
        kinds = ["watcher.cross_check_mismatch"] if verdict.disagrees else []
        if now - since >= alert_after:
            kinds.append("watcher.receipt_unconfirmed")
        for kind in kinds:
            key = f"{kind}:{row.uid}:{row.block_hash}"
            emit(session, kind, data, dedupe_key=key, now=now)

    def record_poll(self, record: PollRecord) -> None:
        now = self.now()
        with transaction(self.engine) as session:
            state = session.get(ChainState, self.chain.name)
            if state is None:
                return
            state.last_poll_at = now
            if record.outcome == "lagging":
                state.rpc_ok, state.last_error = True, record.message
            elif record.outcome == "failed":
                state.last_error, state.rpc_ok = record.message, record.rpc_ok
            else:
                self._use_ack(session)  # a poll got through: the acknowledgement is spent
                state.head, state.final_block, state.rpc_ok = record.head, record.final, True
                state.last_error = record.message
                if record.outcome == "ok":
                    state.last_ok_at = now
            session.add(state)

    def record_violation(self, key: str, data: Mapping[str, object]) -> str:
        with transaction(self.engine) as session:
            event_id = emit(
                session, "watcher.finality_violation", dict(data), dedupe_key=key, now=self.now()
            )
            state = session.get(ChainState, self.chain.name)
            if state is not None:  # halted until `proofwatch chain resume` acknowledges it
                state.halted_by, state.resume_ack = event_id, None
                session.add(state)
        return event_id

    # -- helpers -----------------------------------------------------------------------------

    def _drop_hashes(self, session: Session, where: ColumnElement[bool]) -> None:
        session.execute(delete(BlockHash).where(col(BlockHash.chain) == self.chain.name, where))

    def _move_cursor(
        self,
        session: Session,
        cursor: int,
        cursor_hash: str | None,
        balance: int | None,
        cursor_time: datetime | None = None,
    ) -> None:
        """``cursor_time``: the cursor block's timestamp, the chain's clock for deadlines (None
        after a rewind, until the next chunk: no deadline passes meanwhile)."""
        state = session.get(ChainState, self.chain.name)
        assert state is not None
        state.cursor, state.cursor_hash, state.balance = cursor, cursor_hash, balance
        state.cursor_time = cursor_time
        session.add(state)

    def _use_ack(self, session: Session) -> None:
        """The acknowledged violation has been followed (or did not recur): forget the ack."""
        state = session.get(ChainState, self.chain.name)
        if state is not None and state.resume_ack is not None:
            state.resume_ack = None
            session.add(state)
