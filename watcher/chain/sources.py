"""Reading one block range from a node: inflows to the wallet, boundary headers, balances.

Cost follows the wallet, not the chain. No full block is read unless balance bisection points
at it (or the node lacks the old state to bisect):

- ERC-20: ``eth_getLogs`` over ranges the sizer allows.
- ``internal = "trace_filter"``: top-level and internal native inflows both from
  ``trace_filter`` (``toAddress`` = wallet); the wallet's own transactions from ``trace_filter``
  (``fromAddress``) only when the balance grew less than the traces bring in (it spent).
- ``internal = "debug_trace"``: ``debug_traceBlockByNumber`` (``callTracer``) and the header of
  every block (it has no address filter).
- ``internal = "off"``: balance and nonce at the range ends, then bisection
  (``watcher.chain.native``) down to the blocks where they changed, read in full.
- Native reading is skipped entirely when the caller says no native inflow matters
  (``native=False``: no retainer in the native asset and no balance guard).

One range costs one batched round trip (headers of ``first`` and ``last``, logs, traces,
balances), plus one for the receipts of the hits, plus the bisection rounds in ``off`` mode.
A hit block's time comes from the log or receipt when the node says it (``blockTimestamp``:
Anvil, geth >= 1.16, reth); its header is read only when it does not (older nodes: in the
receipts' round trip for log hits, one more for trace hits), or when the block is in the reorg
window (the last ``reorg_depth`` blocks of the range: the stored parent hash keeps a rewind
exact). The parent-hash link of
``first`` is checked against the cursor; every answer naming a block hash (log, trace,
receipt) must name the same hash as the header, or as every other answer for that block when
no header is read (finality checks each transfer's block hash again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from watcher.chain.calls import (
    GWEI,
    NATIVE_DECIMALS,
    TRANSFER_TOPIC,
    Batch,
    address_topic,
    as_dict,
    as_list,
    balance_answer,
    balance_call,
    block_call,
    checksum,
    collect_ranged,
    debug_trace_call,
    decode_amount,
    hex_value,
    logs_call,
    nonce_call,
    parse_block,
    quantity,
    ranged,
    receipt_call,
    same,
    token_balance_call,
    trace_filter_call,
    word_answer,
)
from watcher.chain.chunk import Block, ChainMoved, Chunk, Inflow
from watcher.chain.erc20 import erc20_inflows, token_outflows
from watcher.chain.native import LOCATE_FANOUT, Point, bisect, locate_jump, missing_state, point
from watcher.chain.receipts import (
    block_hashes,
    parse_receipts,
    read_receipts,
    receipt_calls,
    receipt_disagrees,
    spending,
)
from watcher.chain.rpc import RpcPool
from watcher.chain.traces import Frame, ancestors_ok, debug_block, filter_frames, sent_transactions
from watcher.domain.finality import RangeSizer, chain_links
from watcher.settings import ChainSettings

__all__ = [  # importers of the reader's parts through this module keep working
    "GWEI", "LOCATE_FANOUT", "NATIVE_DECIMALS", "TRANSFER_TOPIC", "Block", "ChainMoved", "Chunk",
    "Inflow", "address_topic", "balance_call", "block_call", "block_hashes", "chunk_width",
    "decode_amount", "fetch_chunk", "locate_jump", "logs_call", "parse_block", "quantity",
    "read_receipts", "receipt_call", "receipt_disagrees", "same", "spending",
    "token_balance_call", "token_outflows", "trace_filter_call",
]  # fmt: skip

log = structlog.get_logger("watcher.chain.sources")

SPARSE_WIDTH = 10_000  # blocks per chunk when nothing is read per block (a few POSTs each)
MAX_DENSE_WIDTH = 1000  # debug_trace: blocks per chunk at most


def chunk_width(chain: ChainSettings, entries: int) -> int:
    """Blocks per chunk: ``debug_trace`` reads two entries per block, so its chunk fills
    ``entries`` batch entries; the other modes read nothing per block, so a chunk is as wide
    as the widest log range."""
    if chain.internal != "debug_trace":
        return max(SPARSE_WIDTH, chain.max_log_range)
    extras = bool(chain.tokens) + 4 + 2 * sum(t.balance_guard for t in chain.tokens)
    return max(1, min(MAX_DENSE_WIDTH, (entries - extras) // 2))


def fetch_chunk(
    pool: RpcPool,
    chain: ChainSettings,
    first: int,
    last: int,
    sizers: Mapping[str, RangeSizer],
    *,
    parent_hash: str | None,
    balance_before: bool = True,
    native: bool = True,
    start: Chunk | None = None,
) -> Chunk:
    """Read blocks ``first..last`` and everything in them paid to the wallet.

    ``sizers`` hold the learned widths for ``eth_getLogs`` and ``trace_filter``. Returns a
    Chunk with ``linked=False`` (and only the boundary blocks) when block ``first`` is not a
    child of ``parent_hash``: the caller handles the reorg. Raises ``ChainMoved`` when the
    answers do not fit together, ``RpcError`` when a block or a receipt could not be read.
    The native balance at both ends is read whenever native reading needs it (the balance
    guard, or bisection), whatever ``balance_before`` says (kept for callers). ``start`` is the
    chunk that ended at ``first - 1`` on this chain, when there is one: the balances (and nonce)
    it read at its end are this range's start, not read again.
    """
    del balance_before
    reader = _Reader(pool, chain, first, last, sizers, native)
    if start is not None and start.last == first - 1 and start.linked:
        reader.start = start
    return reader.read(parent_hash)


class _Reader:
    """One range of one chain, read as cheaply as the node allows."""

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
        self.blocks: dict[int, Block] = {}
        self.checks: list[tuple[int, Any, str]] = []  # (block, the hash an answer names, what)
        self.no_state = ""  # why the node could not give the balance at a range end
        self.withdrawn: dict[int, int] = {}  # block -> wei the beacon chain paid the wallet
        self.start: Chunk | None = None  # the chunk ending at first - 1: its end values

    # -- the range ---------------------------------------------------------------------------

    def read(self, parent_hash: str | None) -> Chunk:
        chain, first, last, wallet = self.chain, self.first, self.last, self.wallet
        dense = self.mode == "debug_trace"
        numbers = list(range(first, last + 1)) if dense else sorted({first, last})
        log_ranges = list(self.sizers["eth_getLogs"].ranges(first, last)) if chain.tokens else []
        trace_ranges: list[tuple[int, int]] = []
        if self.mode == "trace_filter":
            trace_ranges = list(self.sizers["trace_filter"].ranges(first, last))
        guarded = [t.address for t in chain.tokens if t.balance_guard]
        batch = Batch()
        batch.add("logs", [logs_call(chain, a, b) for a, b in log_ranges])
        batch.add("traces", [trace_filter_call(chain, a, b) for a, b in trace_ranges])
        batch.add("headers", [block_call(n) for n in numbers])
        ends = (self.before_at, last)
        start = self.start
        known_lo: Point | None = None  # (balance, nonce) at first - 1 from the previous chunk
        if start is not None and None not in (start.balance_after, start.nonce_after):
            known_lo = (start.balance_after or 0, start.nonce_after or 0)
        known_tokens = {
            t: start.token_after[t]
            for t in guarded
            if start is not None and start.token_after.get(t) is not None
        }
        if self.ends:  # the nonce only for bisection: with traces the balance tells spending
            asked = ends if known_lo is None else (last,)
            batch.add("ends", [balance_call(wallet, n) for n in asked])
            off = self.mode == "off"
            batch.add("nonces", [nonce_call(wallet, n) for n in asked] if off else [])
        token_ends = {t: (last,) if t in known_tokens else ends for t in guarded}
        batch.add(
            "tokens", [token_balance_call(t, wallet, n) for t in guarded for n in token_ends[t]]
        )
        if dense:
            batch.add("debug", [debug_trace_call(n) for n in numbers])
        batch.send(self.pool)

        headers = [self._header(raw, n) for raw, n in zip(batch["headers"], numbers, strict=True)]
        self.blocks = {b.number: b for b in headers}
        links = [(b.number, b.hash, b.parent_hash) for b in headers]
        if not chain_links(links[:1], parent_hash):
            return Chunk(first, last, sorted({headers[0], headers[-1]}, key=_number), linked=False)
        if dense and not chain_links(links, None):
            raise ChainMoved(f"blocks {first}..{last} do not link: the chain moved while reading")
        chunk = Chunk(first, last, [])
        at_lo = at_hi = None
        if self.ends:
            balances = batch["ends"]
            nonces = batch["nonces"] or ["0x0"] * len(balances)  # with traces: not asked
            b1, n1 = balances[-1], nonces[-1]
            if known_lo is None:
                chunk.balance_before, at_lo = (
                    balance_answer(balances[0]),
                    point(balances[0], nonces[0]),
                )
            else:
                chunk.balance_before, at_lo = known_lo[0], known_lo
            chunk.balance_after, at_hi = balance_answer(b1), point(b1, n1)
            chunk.nonce_after = None if at_hi is None else at_hi[1]
            answers = batch["ends"] + batch["nonces"]
            self.no_state = next(filter(None, map(missing_state, answers)), "")
        words = iter(batch["tokens"])
        for token in guarded:
            if token in known_tokens:
                chunk.token_before[token] = known_tokens[token]
            else:
                chunk.token_before[token] = word_answer(next(words))
            chunk.token_after[token] = word_answer(next(words))

        if log_ranges:
            sizer = self.sizers["eth_getLogs"]
            logs = collect_ranged(
                self.pool, sizer, lambda a, b: logs_call(chain, a, b), log_ranges, batch["logs"]
            )
            chunk.inflows += erc20_inflows(chain, logs, self._in_range)
        frames: list[Frame] = []
        candidates: list[dict[str, Any]] = []  # top-level transactions to the wallet
        spent: list[dict[str, Any]] = []  # transactions the wallet sent
        if self.mode == "trace_filter":
            sizer = self.sizers["trace_filter"]
            build = lambda a, b: trace_filter_call(chain, a, b)  # noqa: E731
            traces = collect_ranged(self.pool, sizer, build, trace_ranges, batch["traces"])
            frames = filter_frames(traces, wallet)
            for f in frames:
                self.checks.append((f.block_number, f.block_hash, "a trace"))
        elif dense:
            for n, raw in zip(numbers, batch["debug"], strict=True):
                found, sent = debug_block(
                    as_list(raw, f"debug traces of block {n}"), wallet, n, self.blocks[n].hash
                )
                chunk.inflows += found
                spent += sent if chain.balance_guard else []
        elif self.mode == "off" and self.ends:
            numbers = self._changed_blocks(at_lo, at_hi)
            chunk.full_blocks = len(numbers)
            candidates, sent = self._full_blocks(numbers)
            spent += sent if chain.balance_guard else []
        self._receipts(chunk, frames, candidates, spent)
        chunk.inflows.sort(key=lambda i: (i.block_number, i.tx_hash, i.kind, i.log_index or 0))
        for inflow in chunk.inflows:
            if inflow.kind != "erc20":
                chunk.explain(inflow.block_number, inflow.amount)
        for number, wei in self.withdrawn.items():
            chunk.explain(number, wei)
        if self.mode == "trace_filter" and chain.balance_guard:
            # The wallet's own transactions matter only if its balance grew less than the
            # inflows bring in (their fees make it so): then they are read, else nothing more.
            grew = None if at_lo is None or at_hi is None else at_hi[0] - at_lo[0]
            if grew is None or grew < sum(chunk.explained.values()):
                self._receipts(chunk, [], [], self._sent_by_traces())
            if at_lo is not None and at_hi is not None:
                self._withdrawals(chunk, at_lo, at_hi)
        chunk.blocks = sorted(self.blocks.values(), key=_number)
        return chunk

    def _withdrawals(self, chunk: Chunk, at_lo: Point, at_hi: Point) -> None:
        """Traces do not show the beacon chain's withdrawals: when the balance grew more than
        the traces explain, bisect to the blocks where it changed and read their headers
        (which list withdrawals; they are added to ``chunk.explained``). Nothing is read when
        the traces explain it all."""
        if at_hi[0] - at_lo[0] <= sum(chunk.explained.values()):  # in, less spending
            return
        known = dict(self.withdrawn)
        lo = self.first - 1 if self.first > 0 else 0
        found = bisect(self.pool, self.wallet, lo, self.last, at_lo, at_hi)
        # A block known only from a receipt or log (no parent hash) may list withdrawals too.
        headed = {n for n, b in self.blocks.items() if b.parent_hash}
        wanted = [n for n in found.changed if n not in headed]
        answers = self.pool.batch([block_call(n) for n in wanted]) if wanted else []
        for n, raw in zip(wanted, answers, strict=True):
            header = self._header(raw, n)
            seen = self.blocks.get(n)
            if seen is not None and seen.hash != header.hash:
                raise ChainMoved(f"block {n} changed while reading: the chain moved")
            self.blocks[n] = header
        for number, wei in self.withdrawn.items():
            if number not in known:
                chunk.explain(number, wei)

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

    # -- the wallet's own transactions with traces -------------------------------------------

    def _sent_by_traces(self) -> list[dict[str, Any]]:
        """The transactions the wallet sent over the range (the balance says it spent, or
        cannot say)."""
        chain = self.chain
        build = lambda a, b: trace_filter_call(chain, a, b, sent=True)  # noqa: E731
        traces = ranged(self.pool, self.sizers["trace_filter"], build, self.first, self.last)
        return sent_transactions(traces, self.wallet)

    # -- without traces: bisection -----------------------------------------------------------

    def _changed_blocks(self, at_lo: Point | None, at_hi: Point | None) -> list[int]:
        """The blocks whose balance or nonce changed (all of them where the node lacks state)."""
        first, last = self.first, self.last
        lo = first - 1 if first > 0 else 0  # block 0 (genesis) holds no transaction
        if at_lo is None or at_hi is None:
            self._no_state(first, last, f"no balance at the range ends: {self.no_state}")
            return list(range(lo + 1, last + 1))
        found = bisect(self.pool, self.wallet, lo, last, at_lo, at_hi)
        if found.unreadable:
            total = sum(b - a + 1 for a, b in found.unreadable)
            self._no_state(found.unreadable[0][0], found.unreadable[-1][1], found.reason, total)
        return found.blocks()

    def _no_state(self, first: int, last: int, reason: str, count: int | None = None) -> None:
        log.warning(
            "scan.no_old_state", chain=self.chain.name, first=first, last=last,
            full_blocks=count if count is not None else last - first + 1, reason=reason,
        )  # fmt: skip

    def _full_blocks(
        self, numbers: Sequence[int]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The value transactions to the wallet and the ones it sent in the blocks ``numbers``,
        read in full one POST at a time (only what matters is kept: a range read in full on a
        busy chain is big). The blocks holding any join the chunk's blocks."""
        candidates: list[dict[str, Any]] = []
        spent: list[dict[str, Any]] = []
        step = max(1, self.pool.max_batch)
        for start in range(0, len(numbers), step):
            part = numbers[start : start + step]
            answers = self.pool.batch([block_call(n, full=True) for n in part])
            for n, raw in zip(part, answers, strict=True):
                block = self._header(raw, n)
                known = self.blocks.get(n)
                if known is not None and known.hash != block.hash:
                    raise ChainMoved(f"block {n} changed while reading: the chain moved")
                native, sent = _block_transactions([as_dict(raw, f"block {n}")], self.wallet)
                if native or sent or n in self.withdrawn:
                    self.blocks[n] = block
                candidates += native
                spent += sent
        return candidates, spent

    # -- receipts of the hits and the headers of their blocks --------------------------------

    def _receipts(
        self,
        chunk: Chunk,
        frames: list[Frame],
        candidates: list[dict[str, Any]],
        spent: list[dict[str, Any]],
    ) -> None:
        """Status of every candidate and the fees of the wallet's transactions (one batch, with
        the headers of the blocks holding hits), then every block-hash check."""
        tx_blocks: dict[str, Any] = {}  # tx hash -> the block hash its source named
        for tx in candidates + spent:
            tx_blocks[hex_value(tx["hash"])] = tx.get("blockHash")
        for f in frames:
            tx_blocks[f.tx_hash] = f.block_hash
        tx_hashes = sorted(tx_blocks)
        deep = sorted({f.tx_hash for f in frames if f.deep})
        # A hit block's header is read in the reorg window (its parent hash, stored, makes a
        # rewind land on the exact common ancestor); below it only for its time: not when a
        # log or a receipt read here names it (``blockTimestamp``), and then only if the
        # receipt did not (older nodes: one more round trip).
        floor = self.last - self.chain.reorg_depth
        covered = {f.block_number for f in frames}
        headed = {n for n, b in self.blocks.items() if b.parent_hash}
        hits = {n for n, _, _ in self.checks}
        wanted = sorted(
            n for n in hits - headed if n > floor or (n not in self.blocks and n not in covered)
        )
        calls = receipt_calls(tx_hashes, deep) + [block_call(n) for n in wanted]
        answers = self.pool.batch(calls) if calls else []
        split = len(calls) - len(wanted)
        receipts, trees = parse_receipts(tx_hashes, deep, answers[:split])
        for n, raw in zip(wanted, answers[split:], strict=True):
            self.blocks[n] = self._header(raw, n)
        for tx_hash in tx_hashes:
            receipt = receipts[tx_hash]
            if receipt is not None and same(receipt.get("blockHash"), tx_blocks[tx_hash]):
                self._stamped(receipt)
        late = sorted(hits - set(self.blocks))
        headers = self.pool.batch([block_call(n) for n in late]) if late else []
        for n, raw in zip(late, headers, strict=True):
            self.blocks[n] = self._header(raw, n)
        for number, claimed, what in self.checks:
            if not same(self.blocks[number].hash, claimed):
                raise ChainMoved(f"{what} in block {number} is from another branch")
        for tx_hash, receipt in receipts.items():
            if receipt is None:
                raise ChainMoved(f"no receipt for {tx_hash}: the chain moved while reading")
            if not same(receipt.get("blockHash"), tx_blocks[tx_hash]):
                raise ChainMoved(f"the receipt of {tx_hash} is from another branch")

        def ok(tx_hash: str) -> bool:
            return quantity(_receipt(receipts, tx_hash)["status"]) == 1

        for tx in candidates:
            if ok(tx["hash"]):
                frm, value = str(checksum(tx["from"])), quantity(tx["value"])
                at = quantity(tx["blockNumber"]), hex_value(tx["blockHash"])
                chunk.inflows.append(Inflow("native", hex_value(tx["hash"]), None, *at, frm, value))
        for tx in spent:
            number = quantity(tx["blockNumber"])
            chunk.explain(number, -spending(tx, _receipt(receipts, tx["hash"])))
        for frame in frames:
            if not ok(frame.tx_hash):
                continue
            if frame.deep and not ancestors_ok(frame, trees.get(frame.tx_hash) or []):
                continue
            chunk.inflows.append(frame.inflow())


def _number(block: Block) -> int:
    return block.number


def _receipt(receipts: Mapping[str, dict[str, Any] | None], tx_hash: Any) -> dict[str, Any]:
    receipt = receipts[hex_value(tx_hash)]
    assert receipt is not None
    return receipt


def _block_transactions(
    raw_blocks: Sequence[dict[str, Any]], wallet: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """From full blocks: value transactions to the wallet, and transactions it sent."""
    native: list[dict[str, Any]] = []
    spent: list[dict[str, Any]] = []
    for raw in raw_blocks:
        for tx in as_list(raw.get("transactions", []), "block transactions"):
            if same(tx.get("from"), wallet):
                spent.append(tx)
            elif same(tx.get("to"), wallet) and quantity(tx.get("value", "0x0")) > 0:
                native.append(tx)
    return native, spent
