"""What the reader hands the scanner for one block range: the Chunk and its parts.

The Chunk contract (what ``watcher.chain.scanner`` relies on):

- ``first``/``last``: the range read; ``linked`` False when block ``first`` is not a child of
  the expected parent (then only the boundary blocks are set, the caller handles the reorg).
- ``blocks``: sparse, ascending, by number: the boundary headers (``first`` and ``last``),
  every block holding an inflow (its timestamp is the payment's time), and any other block the
  reader happened to read in full. ``blocks[-1]`` is block ``last``; ``blocks[0]`` is block
  ``first`` (its ``parent_hash`` links to the cursor) unless the link was proven by state
  (``watcher.chain.links``: then block ``first`` is there only if read for another reason).
  ``parent_hash`` is the hash the range was linked to. In ``debug_trace`` mode every block is there.
  A block known from a log's or receipt's ``blockTimestamp`` and ``blockHash`` instead of its
  header has ``parent_hash`` "" (unknown): its hash and time are as sure as the answers that
  named them (all must agree), and the ledger stores its hash but no parent for it. Blocks in
  the reorg window (``number > last - reorg_depth``) always come from headers, so the hashes
  the scanner keeps there (``scanner._window``) have their parents and a rewind lands on the
  exact common ancestor.
- ``inflows``: every successful transfer to the wallet found in the range, sorted.
- ``explained``: per block, native wei in less wei the wallet spent (for the balance guard).
- balances: the native balance at ``first - 1`` and ``last`` when read, token balances of
  guarded tokens at both ends. The values at ``first - 1`` are the previous chunk's values at
  its ``last`` when the scanner hands that chunk over (``fetch_chunk(start=...)``), read
  otherwise; ``nonce_after`` goes with ``balance_after`` for the next chunk's bisection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watcher.errors import WatcherError
from watcher.settings import TokenSettings


class ChainMoved(WatcherError):
    """The node's answers for one range do not fit together (it reorged while we read)."""


@dataclass(frozen=True, slots=True)
class Block:
    number: int
    hash: str
    parent_hash: str  # "" when not read: the block is known from a log or receipt
    timestamp: int | None = None  # unix seconds, as the node reports the block's time


@dataclass(frozen=True, slots=True)
class Inflow:
    """A transfer to the wallet that succeeded on chain, before it is stored."""

    kind: str  # erc20 | native | internal
    tx_hash: str
    log_index: int | None  # log index (erc20), None (native), trace position (internal)
    block_number: int
    block_hash: str
    from_address: str
    amount: int
    token: TokenSettings | None = None


@dataclass(slots=True)
class Chunk:
    """What one block range holds for the wallet (the contract: module docstring)."""

    first: int
    last: int
    blocks: list[Block]
    linked: bool = True  # False: the first block is not a child of the expected parent
    parent_hash: str | None = None  # the hash of block first - 1 it was linked to
    inflows: list[Inflow] = field(default_factory=list)
    explained: dict[int, int] = field(default_factory=dict)  # per block: native in - out, wei
    balance_before: int | None = None  # at first - 1, when it was read
    balance_after: int | None = None  # at last, when it was read
    nonce_after: int | None = None  # at last, when read with the balance (0: not asked, traces)
    # Per guarded token (checksummed address): balanceOf(wallet) at first - 1 and at last.
    token_before: dict[str, int | None] = field(default_factory=dict)
    token_after: dict[str, int | None] = field(default_factory=dict)
    full_blocks: int = 0  # blocks read in full for this chunk (balance bisection, fallback)
    # (balance, nonce) of the wallet at the blocks balance bisection asked (off mode): a rescan
    # of the same range and the guard's locate take them instead of asking again.
    points: dict[int, tuple[int, int]] = field(default_factory=dict)

    def token_inflows(self, address: str) -> int:
        """Base units of ``address`` the found inflows brought in over the chunk."""
        return sum(
            i.amount for i in self.inflows if i.token is not None and i.token.address == address
        )

    def explain(self, number: int, wei: int) -> None:
        """Add ``wei`` (negative: spent) to what block ``number`` explains."""
        self.explained[number] = self.explained.get(number, 0) + wei
