"""The state of one block range being read, shared by the reader's parts
(``watcher.chain.sources``): what was asked, the headers read, the hashes answers named.

``RangeState`` holds it and reads a header or a log's block the one way every part must:
withdrawals to the wallet counted, every named block hash kept for the final check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.chain.calls import GWEI, as_dict, hex_value, parse_block, quantity, same
from watcher.chain.chunk import Block, ChainMoved, Chunk
from watcher.chain.native import Point, missing_state
from watcher.chain.rpc import RpcPool
from watcher.domain.finality import RangeSizer
from watcher.settings import ChainSettings


class RangeState:
    """One range of one chain: its bounds, the node, and what was learned reading it."""

    def __init__(
        self,
        pool: RpcPool,
        chain: ChainSettings,
        first: int,
        last: int,
        sizers: Mapping[str, RangeSizer],
        native: bool,
    ) -> None:
        self.pool, self.chain, self.first, self.last, self.sizers = pool, chain, first, last, sizers
        self.wallet = chain.receiving_address
        self.mode = chain.internal if native else "none"
        self.ends = native and (chain.balance_guard or self.mode == "off")
        self.before_at = max(first - 1, 0)
        self.window = last - chain.reorg_depth  # hit blocks above it: their parent hash kept
        self.blocks: dict[int, Block] = {}
        self.checks: list[tuple[int, Any, str]] = []  # (block, the hash an answer names, what)
        self.no_state = ""  # why the node could not give the balance at a range end
        self.withdrawn: dict[int, int] = {}  # block -> wei the beacon chain paid the wallet
        self.start: Chunk | None = None  # the chunk ending at first - 1: its end values
        self.prior: dict[int, Point] = {}  # an earlier read's bisection points of this range
        self.points: dict[int, Point] = {}  # this read's bisection points
        self.link_error = ""  # why the state link was refused, when not for missing state

    def _header(self, raw: Any, number: int) -> Block:
        """A block answer (header or full) for ``number``; the withdrawals to the wallet it
        lists (a header lists them too) explain balance growth."""
        block = parse_block(raw, number)
        wei = sum(
            quantity(w["amount"]) * GWEI
            for w in as_dict(raw, f"block {number}").get("withdrawals") or []
            if same(w.get("address"), self.wallet)
        )
        if wei:
            self.withdrawn[number] = wei
        return block

    def _in_range(self, item: Mapping[str, Any], what: str) -> int:
        """The block number of an answer in the range; its block hash is checked against the
        block's header once every header is read."""
        number = quantity(item["blockNumber"])
        if not self.first <= number <= self.last:
            raise ChainMoved(f"{what} in block {number} is outside {self.first}..{self.last}")
        self.checks.append((number, item.get("blockHash"), what))
        self._stamped(item)
        return number

    def _stamped(self, item: Mapping[str, Any]) -> None:
        """The block of a log or receipt that names its block's time (``blockTimestamp``:
        Anvil, geth >= 1.16, reth): known without its header (``parent_hash`` "")."""
        stamp = item.get("blockTimestamp")
        if stamp is None or item.get("blockHash") is None:
            return
        number = quantity(item["blockNumber"])
        if number not in self.blocks:
            self.blocks[number] = Block(number, hex_value(item["blockHash"]), "", quantity(stamp))

    def _linked_by_state(self, answer: Any) -> bool:
        """Whether the state link's ``answer`` proves the cursor's block canonical (a balance);
        else ``link_error`` says why, unless the node only lacks that old state."""
        if answer is not None and not isinstance(answer, BaseException):
            quantity(answer)  # a malformed answer raises
            return True
        self.link_error = "" if missing_state(answer) else str(answer)
        return False
