"""The port between the chain reader and whatever keeps its results (``ScanLedger``).

The reader (``watcher.chain.scanner``) reads the stored state it needs through these methods
and hands each result over as one call; each ``commit_*`` / ``record_*`` call is one atomic
unit: either all of it is kept or none of it (the database implementation runs each in one
transaction, settlement included). ``watcher.ledger.scanning.StoreLedger`` implements it on
the store; tests may use an in-memory one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from watcher.chain import findings as found


class ScanLedger(Protocol):
    """What one chain's scan reads and writes between polls."""

    def load(self, from_block: int | None) -> found.Position:
        """The chain's position at the start of a poll, created at ``start_block - 1`` (or
        ``from_block - 1``) the first time. ``from_block`` below the cursor rewinds it there
        (balance and cursor time forgotten). Raises ``Refused`` when the stored chain id is
        not the configured one, or when ``from_block`` would skip blocks past the cursor."""

    def stored_hash(self, number: int) -> str | None:
        """The kept hash of block ``number`` (or its child's parent hash), None if unknown."""

    def stored_hashes(self, up_to: int) -> dict[int, str]:
        """Every kept hash at or below ``up_to``, plus each kept block's parent (the hash of
        the block before it: the kept blocks are sparse, the reorg walk needs the nearest
        common block)."""

    def final_floor(self) -> int | None:
        """The highest block holding a final transfer of this chain (None: none)."""

    def waiting(self, final: int) -> list[found.Pending]:
        """Seen transfers at or below ``final``, by block then id: due for the receipt check."""

    def commit_chunk(self, findings: found.Findings) -> found.ChunkResult:
        """Store a chunk's inflows (new rows, or orphaned ones found again), block hashes,
        balance, guard events and the new cursor together; found transfers at or below
        ``findings.final_at_once`` become final in the same unit."""

    def commit_rewind(self, rewind: found.Rewind) -> list[found.Pending]:
        """Orphan the seen transfers above the ancestor, drop the hashes above it and move
        the cursor there, together; returns the orphaned transfers."""

    def commit_finality(
        self, final: int, verdicts: Sequence[tuple[found.Pending, found.Verdict]]
    ) -> list[found.Pending]:
        """Mark final the transfers whose verdict says so (if still seen); the others wait
        (and are alerted on per the chain's settings); returns the ones made final."""

    def record_poll(self, record: found.PollRecord) -> None:
        """What the poll saw, in the chain's state; a poll that got through (``ok`` or
        ``incomplete``) uses up the operator's acknowledgement."""

    def record_violation(self, key: str, data: Mapping[str, object]) -> str:
        """Raise ``watcher.finality_violation`` (deduplicated by ``key``) and halt the chain
        until the operator resumes it; returns the event id."""
