"""What one poll of one chain keeps: its cursor, block hashes and chain state in the database.

``ScanState`` is the base of the scanner (``watcher.chain.scanner``): it loads the chain's row
at the start of a poll, moves the cursor inside the chunk's transaction and records what the
poll saw. ``watcher.chain.reorgs`` adds reorgs and finality on top of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from weakref import WeakKeyDictionary

import structlog
from sqlalchemy import ColumnElement, delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.chain.rpc import RpcPool
from watcher.chain.sources import Chunk
from watcher.domain.finality import RangeSizer
from watcher.errors import FinalityViolation, Refused, RpcError, WatcherError
from watcher.redact import redact_text
from watcher.settings import ChainSettings
from watcher.store.db import read_session, transaction
from watcher.store.tables import BlockHash, ChainState, Transfer

log = structlog.get_logger("watcher.chain.scanner")

# Range widths learned per pool (one pool per chain, living as long as the daemon).
_SIZERS: WeakKeyDictionary[RpcPool, dict[str, RangeSizer]] = WeakKeyDictionary()


class ScanHooks(Protocol):
    """What settlement does with transfers; every call runs inside the scanner's transaction,
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


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What one poll of one chain saw and did."""

    chain: str
    head: int
    final_block: int
    cursor_before: int
    cursor_after: int
    found: int
    orphaned: int
    finalized: int
    requests: int  # HTTP POSTs sent to the RPC pool during the poll
    reorgs: int = 0
    unexplained: int = 0  # watcher.unexplained_balance events raised
    complete: bool = True  # False: the poll stopped short of its target (the chain moved)
    lagging: bool = False  # every URL was behind the cursor: nothing was read this poll


def block_time(timestamp: int | None) -> datetime | None:
    """A block's unix timestamp as a UTC datetime (None when the node did not say)."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def block_times(chunk: Chunk) -> dict[int, datetime | None]:
    """Each block's time in a chunk, by number."""
    return {b.number: block_time(b.timestamp) for b in chunk.blocks}


def transfer_uid(chain_id: int, tx_hash: str, kind: str, log_index: int | None) -> str:
    return f"{chain_id}:{tx_hash}:{kind}:{'' if log_index is None else log_index}"


class ScanState:
    """One poll's state of one chain, and the rows that hold it between polls."""

    def __init__(
        self,
        chain: ChainSettings,
        pool: RpcPool,
        engine: Engine,
        now: Callable[[], datetime],
        hooks: ScanHooks,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.chain, self.pool, self.engine, self.now = chain, pool, engine, now
        self.hooks, self.progress = hooks, progress
        self.log = log.bind(chain=chain.name)
        self.sizers = _SIZERS.setdefault(pool, {})
        for method in ("eth_getLogs", "trace_filter"):
            self.sizers.setdefault(method, RangeSizer(max(1, chain.max_log_range)))
        self.cursor = -1
        self.cursor_hash: str | None = None
        self.balance: int | None = None
        self.final_at_start = -1  # the final block when this poll began
        self.final_seen = -1  # the highest final block seen so far: never moves backwards
        self.counts = {"found": 0, "orphaned": 0, "finalized": 0, "reorgs": 0, "unexplained": 0}
        self.incomplete: str | None = None  # why the poll stopped short of its target
        self.halted_by: str | None = None  # the violation that halts this chain
        self.resume_ack: str | None = None  # the violation the operator acknowledged

    def _stored_hash(self, number: int) -> str | None:
        with read_session(self.engine) as session:
            row = session.get(BlockHash, (self.chain.name, number))
            if row is not None:
                return row.hash
            child = session.get(BlockHash, (self.chain.name, number + 1))
            return child.parent_hash if child is not None else None

    def _load_state(self, from_block: int | None) -> None:
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
            self.cursor, self.cursor_hash, self.balance = (
                state.cursor, state.cursor_hash, state.balance
            )  # fmt: skip
            self.halted_by, self.resume_ack = state.halted_by, state.resume_ack
            self.final_seen = state.final_block if state.final_block is not None else -1

    def _refuse_if_halted(self) -> None:
        """A chain halted by a finality violation is not polled until the operator resumes it."""
        if self.halted_by is not None:
            name = self.chain.name
            raise FinalityViolation(
                f"chain {name}: halted by finality violation {self.halted_by}; after looking "
                f"at it: proofwatch chain resume {name} --ack {self.halted_by}"
            )

    def _waiting(self, final: int) -> list[Transfer]:
        """Seen transfers at or below the final block: due for the receipt check."""
        with read_session(self.engine) as session:
            query = select(Transfer).where(
                Transfer.chain == self.chain.name,
                Transfer.status == "seen",
                Transfer.block_number <= final,
            )
            return list(session.exec(query.order_by(col(Transfer.block_number), col(Transfer.id))))

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
        self.cursor, self.cursor_hash, self.balance = cursor, cursor_hash, balance

    def _use_ack(self, session: Session) -> None:
        """The acknowledged violation has been followed (or did not recur): forget the ack."""
        state = session.get(ChainState, self.chain.name)
        if state is not None and state.resume_ack is not None:
            state.resume_ack = None
            session.add(state)
        self.resume_ack = None

    @staticmethod
    def _load_transfers(session: Session, ids: list[int]) -> dict[int | None, Transfer]:
        """Transfers by id, read in a few IN queries rather than one query per row."""
        rows: dict[int | None, Transfer] = {}
        for start in range(0, len(ids), 500):
            query = select(Transfer).where(col(Transfer.id).in_(ids[start : start + 500]))
            rows.update((t.id, t) for t in session.exec(query))
        return rows

    # -- chain state -------------------------------------------------------------------------

    def _record_lag(self, head: int) -> None:
        """A poll that read nothing because every URL is behind the cursor: the node answered
        (``rpc_ok``), but the chain has not been read, so ``last_ok_at`` stays where it was."""
        self.log.warning("scan.all_lagging", head=head, cursor=self.cursor)
        with transaction(self.engine) as session:
            state = session.get(ChainState, self.chain.name)
            if state is None:
                return
            state.last_poll_at, state.rpc_ok = self.now(), True
            state.last_error = (
                f"every RPC URL is behind the cursor (head {head}, cursor {self.cursor})"
            )
            session.add(state)

    def _record(self, *, head: int | None, final: int | None, error: WatcherError | None) -> None:
        """What this poll saw, in ChainState; an error's message is redacted.

        A poll that stopped short of its target (``self.incomplete``) records the head but is
        not a successful poll: ``last_ok_at`` stays, the reason is the ``last_error``.
        """
        now = self.now()
        with transaction(self.engine) as session:
            state = session.get(ChainState, self.chain.name)
            if state is None:
                return
            state.last_poll_at = now
            if error is None:
                self._use_ack(session)  # a poll got through: the acknowledgement is spent
            if error is None and self.incomplete is not None:
                state.head, state.final_block, state.rpc_ok = head, final, True
                state.last_error = redact_text(self.incomplete, self.chain.rpc_urls)
            elif error is None:
                state.head, state.final_block = head, final
                state.last_ok_at, state.rpc_ok, state.last_error = now, True, None
            else:
                state.last_error = redact_text(str(error), self.chain.rpc_urls)
                state.rpc_ok = not isinstance(error, RpcError)
                self.log.error("scan.failed", error=state.last_error, kind=type(error).__name__)
            session.add(state)
