"""What the chain reader hands over: plain frozen records, no database.

A poll of one chain produces, in order, ``Findings`` for each chunk it read (inflows, the block
hashes to keep, the balance, the new cursor, guard events), a ``Rewind`` when the chain
reorganised, ``Verdict`` per waiting transfer at finality, and one ``PollRecord`` saying what
the poll saw. ``watcher.chain.port.ScanLedger`` is what stores them (``watcher.ledger.scanning``
on the database); the reader never decides how.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from watcher.chain.sources import Block, Chunk, Inflow


def block_time(timestamp: int | None) -> datetime | None:
    """A block's unix timestamp as a UTC datetime (None when the node did not say)."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def block_times(chunk: Chunk) -> dict[int, datetime | None]:
    """Each block's time in a chunk, by number."""
    return {b.number: block_time(b.timestamp) for b in chunk.blocks}


def transfer_uid(chain_id: int, tx_hash: str, kind: str, log_index: int | None) -> str:
    """A transfer's identity on chain: the same in every branch that holds it."""
    return f"{chain_id}:{tx_hash}:{kind}:{'' if log_index is None else log_index}"


@dataclass(frozen=True, slots=True)
class Position:
    """What the ledger holds of a chain when a poll starts."""

    cursor: int  # the last block fully scanned (start_block - 1 before the first poll)
    cursor_hash: str | None
    balance: int | None  # the wallet's native balance at the cursor, when guarded
    final_seen: int = -1  # the highest final block recorded so far (-1: none)
    halted_by: str | None = None  # the finality violation that halts this chain
    resume_ack: str | None = None  # the violation the operator acknowledged


@dataclass(frozen=True, slots=True)
class GuardEvent:
    """An alert a chunk raised (``watcher.unexplained_balance``), with its dedupe key."""

    kind: str
    key: str
    data: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Findings:
    """One chunk read and checked: everything that commits together with its cursor."""

    first: int
    last: int
    inflows: tuple[Inflow, ...]
    times: Mapping[int, datetime | None]  # each block's time (the payment time of its inflows)
    hashes: tuple[Block, ...]  # the block hashes to keep (the chunk's last reorg_depth blocks)
    forget_up_to: int  # stored hashes at or below this number are dropped
    cursor_hash: str  # the hash of ``last``, the new cursor
    cursor_time: datetime | None  # the time of ``last``: the chain's clock for deadlines
    balance: int | None  # the wallet's balance at ``last`` (None: not guarded / not read)
    events: tuple[GuardEvent, ...] = ()
    # Inflows at or below this block were read from blocks already final when the poll began
    # (None: cross_check wants a second provider first): they become final at once.
    final_at_once: int | None = None


@dataclass(frozen=True, slots=True)
class Rewind:
    """Follow a reorg: cursor back to ``ancestor``; seen transfers above it are orphaned."""

    ancestor: int
    ancestor_hash: str | None  # None: re-anchored below the stored window
    spend_ack: bool = False  # the operator's acknowledgement is used up by following it


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored transfer as the reader sees it: what finality and the reorg path need."""

    id: int
    uid: str
    kind: str  # erc20 | native | internal
    tx_hash: str
    log_index: int | None
    block_number: int
    block_hash: str
    token_address: str | None
    amount: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a waiting transfer is final now; if not, why, and whether a provider contradicts
    it (``disagrees``: alert at once)."""

    final: bool
    reason: str = ""
    disagrees: bool = False


@dataclass(frozen=True, slots=True)
class PollRecord:
    """What one poll saw, for the chain's state.

    ``ok``: read to its target; ``incomplete``: stopped short (``message`` says why);
    ``failed``: an error (``message``, redacted; ``rpc_ok`` False when the node could not be
    read); ``lagging``: every URL was behind the cursor, nothing read (head/final unchanged).
    """

    outcome: Literal["ok", "incomplete", "failed", "lagging"]
    head: int | None = None
    final: int | None = None
    message: str | None = None
    rpc_ok: bool = True


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What committing one chunk did: transfers found (new or re-found) and made final."""

    found: int
    finalized: int


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
