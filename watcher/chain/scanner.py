"""One poll of one chain: detect inflows up to the head, follow reorgs, mark transfers final.

The cursor is the last block fully scanned. Each chunk's transfers, block hashes, balance and
the new cursor commit in one transaction (``ScanHooks.found`` runs inside it), so a crash never
leaves a gap or a half-stored block. The scanner never reads invoices: a poll's cost depends on
the chain, not on how many invoices are open.

Re-found transfers: a reorg marks the transfers above the common ancestor ``orphaned``; if the
same transfer (same uid: tx hash, kind, log index / trace position) shows up again in the new
branch, its row is reused: status back to ``seen``, block number and hash updated,
``detected_at`` kept from the first sighting, and ``found`` is called for it again. A transfer
that lands at another log index has another uid: a new row, the old one stays ``orphaned``.

No single answer is trusted to lose a payment: a head below the cursor whose hash matches the
stored hash at that height is a node lagging, not a reorg (the poll moves to the next URL or
waits); only the reorg path, which rewinds the cursor, orphans; a receipt that cannot be
confirmed at finality is retried (``watcher.chain.confirm``); balance growth the found inflows
do not explain rescans the chunk before it alerts (``watcher.chain.guards``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from weakref import WeakKeyDictionary

import structlog
from sqlalchemy import ColumnElement, delete, func, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from watcher.chain import confirm, guards, sources
from watcher.chain.rpc import RpcPool
from watcher.chain.sources import Chunk, Inflow
from watcher.domain.finality import (
    RangeSizer,
    Rewind,
    decide_reorg,
    final_block,
    finality_tag,
)
from watcher.errors import FinalityViolation, Refused, RpcError, WatcherError
from watcher.redact import redact_text
from watcher.settings import ChainSettings
from watcher.store.db import read_session, transaction
from watcher.store.outbox import emit
from watcher.store.tables import BlockHash, ChainState, Transfer

log = structlog.get_logger("watcher.chain.scanner")

POSTS_PER_CHUNK = 2  # a chunk's blocks fill this many batches of pool.max_batch entries
MAX_CHUNK_BLOCKS = 1000
MAX_REORGS_PER_POLL = 3

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


class _NoHooks:
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
    """One poll: head and final block, reorg check, scan up to the head (or ``to_block``),
    balance guard, finality. Idle (no new block, nothing awaiting finality) it costs 1 request.

    ``from_block`` starts a new cursor there, or rewinds an existing one to rescan (transfers
    already stored are not duplicated); it may not skip blocks past the cursor (``Refused``).
    ``progress(cursor, target)`` is called after each chunk. Raises ``RpcError`` when the node
    cannot be read (the cursor stays at the last complete chunk) and ``FinalityViolation``
    when a reorg reaches below a final transfer; both are recorded in ``ChainState``.
    """
    scan = _ChainScan(chain, pool, engine, now, hooks or _NoHooks(), progress)
    return scan.run(from_block, to_block)


class _ChainScan:
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

    # -- the poll ----------------------------------------------------------------------------

    def run(self, from_block: int | None, to_block: int | None) -> ScanReport:
        requests_before = self.pool.request_count
        self._load_state(from_block)
        cursor_before = self.cursor
        lagging = False
        try:
            self._refuse_if_halted()
            head, head_hash, final, lagging = self._trusted_head()
            if lagging:
                self._record_lag(head)
            else:
                final = self._poll(head, head_hash, final, to_block)
        except WatcherError as exc:
            self._record(head=None, final=None, error=exc)
            raise
        report = ScanReport(
            chain=self.chain.name,
            head=head,
            final_block=final,
            cursor_before=cursor_before,
            cursor_after=self.cursor,
            requests=self.pool.request_count - requests_before,
            complete=self.incomplete is None,
            lagging=lagging,
            **self.counts,
        )
        log.info("scan.done", **asdict(report))
        return report

    def _poll(self, head: int, head_hash: str, final: int, to_block: int | None) -> int:
        """Reorg check, scan to the head, finality; the final block used (never lower than
        one seen before)."""
        if final < self.final_seen:  # a lagging backend's tag: never a reorg by itself
            self.log.info("scan.final_behind", final=final, final_seen=self.final_seen)
            final = self.final_seen
        self.final_at_start = final
        target = head if to_block is None else min(head, to_block)
        if self.cursor_hash is not None and (
            head < self.cursor or (head == self.cursor and head_hash != self.cursor_hash)
        ):
            self._reorg(head)
        if self.cursor < target or self._waiting(final):
            self._scan_to(target)
            self._finalize(final)
        else:
            self.log.debug("scan.idle", head=head, cursor=self.cursor)
        self._record(head=head, final=final, error=None)
        return final

    def _trusted_head(self) -> tuple[int, str, int, bool]:
        """Head, its hash, the final block, and whether every URL is behind the cursor.

        A head below the cursor is lag when the node's hash at its own head equals the stored
        hash at that height (or that height is older than the stored window: a reorg that deep
        still shows, as a broken parent link, once the node passes the cursor): the next URL is
        asked, and if all lag the poll reads nothing. A mismatch there is a reorg.
        """
        head, head_hash, final = self._head()
        for _ in range(len(self.pool.urls_redacted)):
            if self.cursor_hash is None or head >= self.cursor:
                return head, head_hash, final, False
            stored = self._stored_hash(head)
            if stored is not None and not sources.same(stored, head_hash):
                return head, head_hash, final, False  # not our block at its own head: a reorg
            self.log.warning(
                "scan.lagging", url=self.pool.current_url_redacted, head=head, cursor=self.cursor
            )
            if not self.pool.fail_over(f"head {head} is behind the cursor {self.cursor}"):
                break
            head, head_hash, final = self._head()
        if self.cursor_hash is None or head >= self.cursor:
            return head, head_hash, final, False
        return head, head_hash, final, True

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

    def _head(self) -> tuple[int, str, int]:
        """Head number and hash and the final block, in one request."""
        tag = finality_tag(self.chain.finality)
        calls = [sources.block_call("latest")] + ([sources.block_call(tag)] if tag else [])
        answers = self.pool.batch(calls)
        head = sources.parse_block(answers[0], -1)
        tag_number = sources.parse_block(answers[1], -1).number if tag else None
        return head.number, head.hash, final_block(self.chain.finality, head.number, tag_number)

    def _waiting(self, final: int) -> list[Transfer]:
        """Seen transfers at or below the final block: due for the receipt check."""
        with read_session(self.engine) as session:
            query = select(Transfer).where(
                Transfer.chain == self.chain.name,
                Transfer.status == "seen",
                Transfer.block_number <= final,
            )
            return list(session.exec(query.order_by(col(Transfer.block_number), col(Transfer.id))))

    # -- scanning ----------------------------------------------------------------------------

    def _chunk_width(self) -> int:
        """Blocks per chunk: enough to fill POSTS_PER_CHUNK batches of the pool."""
        chain = self.chain
        extras = bool(chain.tokens) + (chain.internal == "trace_filter") + 2 * chain.balance_guard
        extras += 2 * sum(t.balance_guard for t in chain.tokens)
        per_block = 2 if chain.internal == "debug_trace" else 1
        width = (self.pool.max_batch * POSTS_PER_CHUNK - extras) // per_block
        return max(1, min(MAX_CHUNK_BLOCKS, width))

    def _scan_to(self, target: int) -> None:
        """Fetch and commit chunks up to ``target``.

        Pipelined: while one chunk is committed to the database, the next is fetched in a
        worker thread (the link to the previous block hash is known as soon as a chunk is
        fetched). A chunk that does not link is a reorg: nothing is prefetched past it.
        """
        width = self._chunk_width()
        if self.progress is not None:
            self.progress(self.cursor, target)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-prefetch") as worker:
            pending: Future[Chunk] | None = None
            while self.cursor < target:
                first, last = self.cursor + 1, min(target, self.cursor + width)
                if pending is None:
                    pending = worker.submit(
                        self._fetch, first, last, self.cursor_hash, self.balance is None
                    )
                try:
                    chunk = pending.result()
                    pending = None
                    chunk, events = self._guarded(chunk) if chunk.linked else (chunk, [])
                except sources.ChainMoved as exc:
                    self.log.warning("scan.chain_moved", first=first, last=last, reason=str(exc))
                    self.incomplete = f"poll incomplete at blocks {first}..{last}: {exc}"
                    return  # the next poll sees where the chain settled; not a healthy poll
                if not chunk.linked:
                    if self.counts["reorgs"] >= MAX_REORGS_PER_POLL:
                        raise WatcherError(f"chain {self.chain.name}: the chain keeps reorganising")
                    self._reorg(chunk.last)
                    continue
                if chunk.last < target:
                    nxt = min(target, chunk.last + width)
                    needs_balance = not self.chain.balance_guard or chunk.balance_after is None
                    pending = worker.submit(
                        self._fetch, chunk.last + 1, nxt, chunk.blocks[-1].hash, needs_balance
                    )
                try:
                    self._commit(chunk, events)
                except BaseException:
                    if pending is not None:
                        pending.cancel()
                    raise
                if self.progress is not None:
                    self.progress(self.cursor, target)

    def _fetch(self, first: int, last: int, parent_hash: str | None, balance_before: bool) -> Chunk:
        return sources.fetch_chunk(
            self.pool, self.chain, first, last, self.sizers,
            parent_hash=parent_hash, balance_before=balance_before,
        )  # fmt: skip

    def _commit(self, chunk: Chunk, events: list[tuple[str, dict[str, object]]]) -> None:
        """The chunk's transfers, block hashes, balance, guard events and the cursor, in one
        transaction."""
        chain, last_hash = self.chain, chunk.blocks[-1].hash
        if chain.balance_guard:
            self.balance = chunk.balance_after
        with transaction(self.engine) as session:
            found = self._store(session, chunk.inflows, block_times(chunk))
            if found:
                self.hooks.found(session, found)
            # Read in this poll from blocks already final when it began: these came from the
            # final chain itself (logs, receipts checked for status), so re-reading their
            # receipts later would prove nothing new. They become final in this transaction,
            # unless a second provider must confirm each receipt (cross_check).
            final_now = [
                t for t in found
                if t.block_number <= self.final_at_start and not chain.cross_check
            ]  # fmt: skip
            for t in final_now:
                t.status, t.finalized_at, t.final_block = "final", self.now(), self.final_at_start
                session.add(t)
            if final_now:
                session.flush()
                self.hooks.finalized(session, final_now)
            self._drop_hashes(session, col(BlockHash.number).between(chunk.first, chunk.last))
            self._drop_hashes(session, col(BlockHash.number) <= chunk.last - chain.reorg_depth)
            session.execute(  # one executemany: no ORM objects for up to reorg_depth rows
                insert(BlockHash),
                [
                    {"chain": chain.name, "number": b.number, "hash": b.hash,
                     "parent_hash": b.parent_hash}
                    for b in chunk.blocks[-chain.reorg_depth :]
                ],
            )  # fmt: skip
            for key, event in events:
                emit(session, "watcher.unexplained_balance", event, dedupe_key=key, now=self.now())
            self._move_cursor(
                session, chunk.last, last_hash, self.balance, block_time(chunk.blocks[-1].timestamp)
            )
        self.counts["found"] += len(found)
        self.counts["finalized"] += len(final_now)
        self.log.info("scan.chunk", first=chunk.first, last=chunk.last, found=len(found))

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

    def _store(
        self, session: Session, inflows: Sequence[Inflow], times: Mapping[int, datetime | None]
    ) -> list[Transfer]:
        """Insert new transfers and revive orphaned ones found again; returns both.
        ``times`` holds each block's timestamp (the payment's time for every deadline)."""
        chain, now = self.chain, self.now()
        uids = {transfer_uid(chain.chain_id, i.tx_hash, i.kind, i.log_index): i for i in inflows}
        existing: dict[str, Transfer] = {}
        keys = list(uids)
        for start in range(0, len(keys), 500):  # far below SQLite's bound-parameter limit
            query = select(Transfer).where(col(Transfer.uid).in_(keys[start : start + 500]))
            existing.update((t.uid, t) for t in session.exec(query))
        found: list[Transfer] = []
        fresh: list[dict[str, object]] = []
        for uid, i in uids.items():
            row = existing.get(uid)
            if row is None:
                token = i.token
                fresh.append({
                    "uid": uid, "chain": chain.name, "chain_id": chain.chain_id, "kind": i.kind,
                    "tx_hash": i.tx_hash, "log_index": i.log_index, "block_number": i.block_number,
                    "block_hash": i.block_hash, "block_time": times.get(i.block_number),
                    "from_address": i.from_address,
                    "to_address": chain.receiving_address, "amount": i.amount, "detected_at": now,
                    "asset": token.symbol if token else chain.native_symbol,
                    "token_address": token.address if token else None,
                    "decimals": token.decimals if token else sources.NATIVE_DECIMALS,
                    "status": "seen",
                })  # fmt: skip
                continue
            if row.status == "final" or (row.status == "seen" and row.block_hash == i.block_hash):
                continue  # known as it is (a rescan); a final row is never rewritten
            # orphaned and found again, or (rescan) seen on a branch since replaced
            refound = row.status == "orphaned"
            row.status, row.block_number, row.block_hash = "seen", i.block_number, i.block_hash
            row.unconfirmed_since = None
            row.block_time = times.get(i.block_number)
            row.from_address, row.amount = i.from_address, i.amount
            session.add(row)
            if refound:
                found.append(row)
        if fresh:  # one executemany, then load the rows back (cheaper than ORM construction)
            session.execute(insert(Transfer), fresh)
            new_uids = [str(r["uid"]) for r in fresh]
            for start in range(0, len(new_uids), 500):
                part = select(Transfer).where(col(Transfer.uid).in_(new_uids[start : start + 500]))
                found.extend(session.exec(part))
        session.flush()
        found.sort(key=lambda t: (t.block_number, t.tx_hash, t.kind, t.log_index or 0))
        for row in found:
            self.log.info(
                "scan.found", kind=row.kind, tx=row.tx_hash, log_index=row.log_index,
                block=row.block_number, asset=row.asset, amount=str(row.amount),
                refound=row.uid in existing,
            )  # fmt: skip
        return found

    # -- reorgs ------------------------------------------------------------------------------

    def _reorg(self, head: int) -> None:
        """The block at the cursor left the chain: rewind to the common ancestor, or refuse
        (unless the operator acknowledged the violation: then follow it, see ``watcher.ledger.halts``)."""
        chain, old_cursor = self.chain, self.cursor
        with read_session(self.engine) as session:
            hashes = select(BlockHash).where(
                BlockHash.chain == chain.name, BlockHash.number <= self.cursor
            )
            rows = list(session.exec(hashes))
            stored = {b.number: b.hash for b in rows}
            if rows:  # the lowest block's parent is known too: a reorg may replace every row
                lowest = min(rows, key=lambda b: b.number)
                if lowest.number > 0:
                    stored.setdefault(lowest.number - 1, lowest.parent_hash)
            floor = session.exec(
                select(func.max(Transfer.block_number)).where(
                    Transfer.chain == chain.name, Transfer.status == "final"
                )
            ).one()
        theirs = sources.block_hashes(self.pool, [n for n in stored if n <= head])
        acked = self.resume_ack is not None  # the operator resumed after this violation
        decision = decide_reorg(self.cursor, stored, theirs, final_floor=None if acked else floor)
        if not isinstance(decision, Rewind) and not acked:
            raise self._violation(decision.reason, decision.ancestor)
        if isinstance(decision, Rewind):
            ancestor, ancestor_hash = decision.ancestor, stored.get(decision.ancestor)
        else:  # deeper than the stored hashes: re-anchor on the node's chain below them
            ancestor, ancestor_hash = min(stored, default=self.cursor) - 1, None
        if acked:
            self.log.warning(
                "scan.resume_followed", event_id=self.resume_ack, ancestor=ancestor,
                final_floor=floor,
            )  # fmt: skip
        with transaction(self.engine) as session:
            query = select(Transfer).where(
                Transfer.chain == chain.name,
                Transfer.status == "seen",
                Transfer.block_number > ancestor,
            )
            orphans = list(session.exec(query))
            for transfer in orphans:
                transfer.status = "orphaned"
                session.add(transfer)
            if orphans:
                self.hooks.orphaned(session, orphans)
            self._drop_hashes(session, col(BlockHash.number) > ancestor)
            self._move_cursor(session, ancestor, ancestor_hash, None)
            if acked:
                self._use_ack(session)
        self.log.warning(
            "scan.reorg", ancestor=ancestor, depth=old_cursor - ancestor,
            orphaned=len(orphans),
        )  # fmt: skip
        for t in orphans:
            self.log.warning("scan.orphaned", tx=t.tx_hash, kind=t.kind, block=t.block_number)
        self.counts["orphaned"] += len(orphans)
        self.counts["reorgs"] += 1

    def _violation(self, reason: str, ancestor: int | None) -> FinalityViolation:
        """Record and shout about a reorg below final data; the error to raise."""
        chain = self.chain
        data = {
            "chain": chain.name, "chain_id": chain.chain_id, "cursor": self.cursor,
            "cursor_hash": self.cursor_hash, "ancestor": ancestor, "reason": reason,
        }  # fmt: skip
        key = f"watcher.finality_violation:{chain.name}:{self.cursor}:{self.cursor_hash}"
        with transaction(self.engine) as session:
            event_id = emit(
                session, "watcher.finality_violation", data, dedupe_key=key, now=self.now()
            )
            state = session.get(ChainState, chain.name)
            if state is not None:  # halted until `proofwatch chain resume` acknowledges it
                state.halted_by, state.resume_ack = event_id, None
                session.add(state)
        log.error("scan.finality_violation", **data)
        return FinalityViolation(
            f"chain {chain.name}: finality violation {event_id}: {reason}; final transfers are "
            "kept as they are and this chain's scan stops until an operator looks "
            f"(proofwatch chain resume {chain.name} --ack {event_id})"
        )

    def _use_ack(self, session: Session) -> None:
        """The acknowledged violation has been followed (or did not recur): forget the ack."""
        state = session.get(ChainState, self.chain.name)
        if state is not None and state.resume_ack is not None:
            state.resume_ack = None
            session.add(state)
        self.resume_ack = None

    # -- balance guard -----------------------------------------------------------------------

    def _guarded(self, chunk: Chunk) -> tuple[Chunk, list[tuple[str, dict[str, object]]]]:
        """The chunk to commit and its ``watcher.unexplained_balance`` events (key, body).

        Growth the found inflows do not explain first rescans the chunk (from the next URL
        when there are several): a backend that answered ``eth_getLogs`` with ``[]`` for blocks
        it did not have yet then gives the payments. Still unexplained: one event per asset.
        """
        chain, sizer = self.chain, self.sizers["eth_getLogs"]
        native_before = self.balance if self.balance is not None else chunk.balance_before
        if chain.balance_guard and (native_before is None or chunk.balance_after is None):
            self.log.warning("scan.balance_unavailable", first=chunk.first, last=chunk.last)
        found = guards.unexplained(self.pool, chain, chunk, native_before, sizer)
        if not found:
            return chunk, []
        self.log.warning("scan.balance_rescan", first=chunk.first, last=chunk.last,
                         assets=[u.asset for u in found])  # fmt: skip
        parent = chunk.blocks[0].parent_hash
        moved = self.pool.fail_over("balance growth not explained: rescanning from another URL")
        try:
            again = self._fetch(chunk.first, chunk.last, parent, True)
        except RpcError:
            if not moved:
                raise
            self.pool.fail_over("the other URL could not give the rescan")  # e.g. it lags
            again = self._fetch(chunk.first, chunk.last, parent, True)
        if not again.linked or again.blocks[-1].hash != chunk.blocks[-1].hash:
            raise sources.ChainMoved(f"blocks {chunk.first}..{chunk.last} changed on a rescan")
        native_before = self.balance if self.balance is not None else again.balance_before
        found = guards.unexplained(self.pool, chain, again, native_before, sizer)
        events: list[tuple[str, dict[str, object]]] = []
        for u in found:
            block: int | None = None
            key = f"watcher.unexplained_balance:{chain.name}:{again.first}:{again.last}"
            if u.token_address is None:
                try:
                    block = sources.locate_jump(
                        self.pool,
                        chain.receiving_address,
                        again.first,
                        again.last,
                        u.before,
                        again.explained,
                    )
                except RpcError as exc:
                    self.log.warning("scan.balance_locate_failed", reason=str(exc))
            else:
                key += f":{u.token_address}"
            data = guards.event_data(chain, again, u, block)
            log.warning("scan.unexplained_balance", **data)
            events.append((key, data))
        self.counts["unexplained"] += len(events)
        return again, events

    # -- finality ----------------------------------------------------------------------------

    def _finalize(self, final: int) -> None:
        """Re-read the receipts of seen transfers at or below the final block (and with
        ``cross_check`` ask a second URL): mark them final, or leave them seen for the next poll.

        Nothing is orphaned here: only the reorg path, which rewinds the cursor, orphans. A
        receipt that stays unconfirmed ``unconfirmed_alert_seconds`` raises
        ``watcher.receipt_unconfirmed``; a second provider that disagrees raises
        ``watcher.cross_check_mismatch`` at once. Each alert once per transfer and block hash.
        """
        waiting = self._waiting(final)
        if not waiting:
            return
        verdicts = confirm.confirm(self.pool, self.chain, waiting)
        now = self.now()
        alert_after = timedelta(seconds=self.chain.unconfirmed_alert_seconds)
        done: list[Transfer] = []
        with transaction(self.engine) as session:
            rows = self._load_transfers(session, [t.id for t in waiting if t.id is not None])
            for t in waiting:
                row = rows.get(t.id)
                verdict = verdicts.get(t.id or 0)
                if row is None or row.status != "seen" or verdict is None:
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
        for row in done:
            self.log.info("scan.finalized", tx=row.tx_hash, kind=row.kind, block=row.block_number,
                          log_index=row.log_index, final_block=final)  # fmt: skip
        self.counts["finalized"] += len(done)

    def _unconfirmed(
        self,
        session: Session,
        row: Transfer,
        verdict: confirm.Verdict,
        since: datetime,
        alert_after: timedelta,
    ) -> None:
        """Log a transfer left waiting; alert on a disagreement, or once it waited too long."""
        self.log.warning("scan.receipt_unconfirmed", tx=row.tx_hash, block=row.block_number,
                         reason=verdict.reason)  # fmt: skip
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
