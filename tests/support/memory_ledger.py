"""An in-memory ``ScanLedger`` (``watcher.chain.port``): the scanner without any database.

It keeps what the reader handed over, as it was handed over (``findings``, ``rewinds``,
``verdicts``, ``polls``, ``violations``), and just enough state to answer the reader's
questions on the next poll: the position, block hashes, and transfers by uid with a status.
Like dramatiq's ``StubBroker``: a real implementation of the port, for tests of ``chain/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from watcher.chain import findings as rec
from watcher.errors import Refused


@dataclass
class Kept:
    """A transfer as the memory ledger holds it."""

    pending: rec.Pending
    status: str = "seen"  # seen | final | orphaned


@dataclass
class MemoryLedger:
    """One chain's scan state in memory."""

    chain_id: int
    start_block: int = 0
    position: rec.Position | None = None
    hashes: dict[int, tuple[str, str]] = field(default_factory=dict)  # number: (hash, parent)
    transfers: dict[str, Kept] = field(default_factory=dict)
    findings: list[rec.Findings] = field(default_factory=list)
    rewinds: list[rec.Rewind] = field(default_factory=list)
    verdicts: list[tuple[int, list[tuple[rec.Pending, rec.Verdict]]]] = field(default_factory=list)
    polls: list[rec.PollRecord] = field(default_factory=list)
    violations: list[tuple[str, Mapping[str, object]]] = field(default_factory=list)

    def status(self, tx_hash: str) -> list[str]:
        """The statuses of the transfers of ``tx_hash``."""
        return [k.status for k in self.transfers.values() if k.pending.tx_hash == tx_hash]

    # -- the port --------------------------------------------------------------------------

    def load(self, from_block: int | None) -> rec.Position:
        if self.position is None:
            start = self.start_block if from_block is None else from_block
            self.position = rec.Position(cursor=start - 1, cursor_hash=None, balance=None)
        elif from_block is not None and from_block - 1 > self.position.cursor:
            raise Refused(f"--from {from_block} would skip blocks")
        elif from_block is not None and from_block - 1 < self.position.cursor:
            kept = self.hashes.get(from_block - 1)
            cursor_hash = kept[0] if kept else None
            self.position = replace(
                self.position, cursor=from_block - 1, cursor_hash=cursor_hash, balance=None
            )
        return self.position

    def stored_hash(self, number: int) -> str | None:
        if number in self.hashes:
            return self.hashes[number][0]
        child = self.hashes.get(number + 1)
        return child[1] if child and child[1] else None

    def stored_hashes(self, up_to: int) -> dict[int, str]:
        stored = {n: h for n, (h, _) in self.hashes.items() if n <= up_to}
        for n in list(stored):  # each block's parent is known too (kept blocks may be sparse)
            if n > 0 and self.hashes[n][1]:  # "": the parent is unknown
                stored.setdefault(n - 1, self.hashes[n][1])
        return stored

    def final_floor(self) -> int | None:
        final = [k.pending.block_number for k in self.transfers.values() if k.status == "final"]
        return max(final, default=None)

    def waiting(self, final: int) -> list[rec.Pending]:
        due = [
            k.pending
            for k in self.transfers.values()
            if k.status == "seen" and k.pending.block_number <= final
        ]
        return sorted(due, key=lambda p: (p.block_number, p.id))

    def commit_chunk(self, findings: rec.Findings) -> rec.ChunkResult:
        self.findings.append(findings)
        found = finalized = 0
        at_once_up_to = -1 if findings.final_at_once is None else findings.final_at_once
        for i in findings.inflows:
            uid = rec.transfer_uid(self.chain_id, i.tx_hash, i.kind, i.log_index)
            kept = self.transfers.get(uid)
            if kept is not None and kept.status != "orphaned":
                continue
            token = i.token.address if i.token else None
            pending = rec.Pending(
                id=kept.pending.id if kept else len(self.transfers) + 1, uid=uid, kind=i.kind,
                tx_hash=i.tx_hash, log_index=i.log_index, block_number=i.block_number,
                block_hash=i.block_hash, token_address=token, amount=i.amount,
            )  # fmt: skip
            at_once = i.block_number <= at_once_up_to
            self.transfers[uid] = Kept(pending, "final" if at_once else "seen")
            found += 1
            finalized += at_once
        self.hashes = {
            n: h for n, h in self.hashes.items()
            if not findings.first <= n <= findings.last and n > findings.forget_up_to
        }  # fmt: skip
        self.hashes.update({b.number: (b.hash, b.parent_hash) for b in findings.hashes})
        assert self.position is not None
        self.position = replace(
            self.position, cursor=findings.last, cursor_hash=findings.cursor_hash,
            balance=findings.balance,
        )  # fmt: skip
        return rec.ChunkResult(found, finalized)

    def commit_rewind(self, rewind: rec.Rewind) -> list[rec.Pending]:
        self.rewinds.append(rewind)
        orphans = [
            k for k in self.transfers.values()
            if k.status == "seen" and k.pending.block_number > rewind.ancestor
        ]  # fmt: skip
        for k in orphans:
            k.status = "orphaned"
        self.hashes = {n: h for n, h in self.hashes.items() if n <= rewind.ancestor}
        assert self.position is not None
        self.position = replace(
            self.position, cursor=rewind.ancestor, cursor_hash=rewind.ancestor_hash, balance=None
        )
        return [k.pending for k in orphans]

    def commit_finality(
        self, final: int, verdicts: Sequence[tuple[rec.Pending, rec.Verdict]]
    ) -> list[rec.Pending]:
        self.verdicts.append((final, list(verdicts)))
        done: list[rec.Pending] = []
        for pending, verdict in verdicts:
            kept = self.transfers.get(pending.uid)
            if kept is not None and kept.status == "seen" and verdict.final:
                kept.status = "final"
                done.append(pending)
        return done

    def record_poll(self, record: rec.PollRecord) -> None:
        self.polls.append(record)
        if self.position is not None and record.outcome in ("ok", "incomplete"):
            final = self.position.final_seen if record.final is None else record.final
            self.position = replace(self.position, final_seen=final, resume_ack=None)

    def record_violation(self, key: str, data: Mapping[str, object]) -> str:
        self.violations.append((key, data))
        event_id = f"EVT-{len(self.violations)}"
        assert self.position is not None
        self.position = replace(self.position, halted_by=event_id, resume_ack=None)
        return event_id
