"""Reorgs and finality for the scanner: rewind to the common ancestor, halt on a reorg below
final data, re-read receipts at the final block.

Only the reorg path, which rewinds the cursor, orphans; finality marks transfers final or
leaves them seen for the next poll (``watcher.chain.confirm`` decides each receipt). What the
ledger stores comes from it as a ``Rewind`` or a list of verdicts; nothing here touches a
database.
"""

from __future__ import annotations

from watcher.chain import confirm, sources
from watcher.chain.findings import Rewind
from watcher.chain.scan_state import ScanState, log
from watcher.domain import finality
from watcher.errors import FinalityViolation


class Reorgs(ScanState):
    """Following the chain when it reorganises, and marking transfers final."""

    # -- reorgs ------------------------------------------------------------------------------

    def _reorg(self, head: int) -> None:
        """The block at the cursor left the chain: rewind to the common ancestor, or refuse
        (unless the operator acknowledged the violation: then follow it, see
        ``watcher.ledger.halts``)."""
        old_cursor = self.cursor
        stored = self.ledger.stored_hashes(self.cursor)
        floor = self.ledger.final_floor()
        theirs = sources.block_hashes(self.pool, [n for n in stored if n <= head])
        acked = self.resume_ack is not None  # the operator resumed after this violation
        decision = finality.decide_reorg(
            self.cursor, stored, theirs, final_floor=None if acked else floor
        )
        if not isinstance(decision, finality.Rewind) and not acked:
            raise self._violation(decision.reason, decision.ancestor)
        if isinstance(decision, finality.Rewind):
            ancestor, ancestor_hash = decision.ancestor, stored.get(decision.ancestor)
        else:  # deeper than the stored hashes: re-anchor on the node's chain below them
            ancestor, ancestor_hash = min(stored, default=self.cursor) - 1, None
        if acked:
            self.log.warning(
                "scan.resume_followed", event_id=self.resume_ack, ancestor=ancestor,
                final_floor=floor,
            )  # fmt: skip
        orphans = self.ledger.commit_rewind(Rewind(ancestor, ancestor_hash, spend_ack=acked))
        self._moved(ancestor, ancestor_hash, None)
        if acked:
            self.resume_ack = None
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
        event_id = self.ledger.record_violation(key, data)
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
        ``watcher.cross_check_mismatch`` at once (the ledger raises both, once per transfer
        and block hash).
        """
        waiting = self.ledger.waiting(final)
        if not waiting:
            return
        verdicts = confirm.confirm(self.pool, self.chain, waiting)
        pairs = [(t, verdicts[t.id]) for t in waiting if t.id in verdicts]
        for t, verdict in pairs:
            if not verdict.final:
                self.log.warning("scan.receipt_unconfirmed", tx=t.tx_hash, block=t.block_number,
                                 reason=verdict.reason)  # fmt: skip
        done = self.ledger.commit_finality(final, pairs)
        for row in done:
            self.log.info("scan.finalized", tx=row.tx_hash, kind=row.kind, block=row.block_number,
                          log_index=row.log_index, final_block=final)  # fmt: skip
        self.counts["finalized"] += len(done)
