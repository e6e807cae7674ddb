"""Reorgs and finality for the scanner: rewind to the common ancestor, halt on a reorg below
final data, re-read receipts at the final block.

Only the reorg path, which rewinds the cursor, orphans; finality marks transfers final or
leaves them seen for the next poll (``watcher.chain.confirm`` decides each receipt).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from watcher.chain import confirm, sources
from watcher.chain.scan_state import ScanState, log
from watcher.domain.finality import Rewind, decide_reorg
from watcher.errors import FinalityViolation
from watcher.store.db import read_session, transaction
from watcher.store.outbox import emit
from watcher.store.tables import BlockHash, ChainState, Transfer


class Reorgs(ScanState):
    """Following the chain when it reorganises, and marking transfers final."""

    # -- reorgs ------------------------------------------------------------------------------

    def _reorg(self, head: int) -> None:
        """The block at the cursor left the chain: rewind to the common ancestor, or refuse
        (unless the operator acknowledged the violation: then follow it, see
        ``watcher.ledger.halts``)."""
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
