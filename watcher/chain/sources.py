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

One range costs one batched round trip (the header of ``last``, or for the chunk ending at
the head, whose header the poll's first request read, the end balance by the head's hash; the
link to the cursor, ``watcher.chain.links``, or ``first``'s header; logs, traces, balances at
the end), plus one for the receipts of the hits, plus the bisection rounds in ``off`` mode.
A hit block's time comes from the log or receipt when the node says it (``blockTimestamp``:
Anvil, geth >= 1.16, reth); its header is read only when it does not (older nodes: in the
receipts' round trip for log hits, one more for trace hits), or when the block is in the reorg
window (above the poll's final block and within ``reorg_depth`` of its head: the stored parent
hash keeps a rewind exact; a reorg cannot fork below the final block, and deeper blocks'
hashes are not kept). The link of ``first`` to the cursor is checked (by state, or by its
header's parent hash); every answer naming a block hash (log, trace, receipt) must name the
same hash as the header, or as every other answer for that block when no header is read
(finality checks each transfer's block hash again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from watcher.chain.balance_reads import BalanceReads
from watcher.chain.calls import (
    GWEI,
    NATIVE_DECIMALS,
    TRANSFER_TOPIC,
    Batch,
    BlockRef,
    address_topic,
    as_list,
    balance_answer,
    balance_call,
    block_call,
    collect_ranged,
    debug_trace_call,
    decode_amount,
    logs_call,
    nonce_call,
    parse_block,
    quantity,
    receipt_call,
    same,
    token_balance_call,
    trace_filter_call,
    word_answer,
)
from watcher.chain.chunk import Block, ChainMoved, Chunk, Inflow
from watcher.chain.erc20 import erc20_inflows, token_outflows
from watcher.chain.hit_reads import HitReads
from watcher.chain.links import (
    Unproven,
    canonical,
    canonical_call,
    lags,
    links_by_state,
    stop_links_by_state,
)
from watcher.chain.native import LOCATE_FANOUT, Point, locate_jump, missing_state, point
from watcher.chain.receipts import (
    block_hashes,
    read_receipts,
    receipt_disagrees,
    spending,
)
from watcher.chain.rpc import RpcPool
from watcher.chain.traces import Frame, debug_block, filter_frames
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
    points: Mapping[int, Point] | None = None,
    window: int | None = None,
    head_header: Any = None,
) -> Chunk:
    """Read blocks ``first..last`` and everything in them paid to the wallet.

    ``sizers`` hold the learned widths for ``eth_getLogs`` and ``trace_filter``. Returns a
    Chunk with ``linked=False`` (and only the boundary blocks) when block ``first`` is not a
    child of ``parent_hash``: the caller handles the reorg. Raises ``ChainMoved`` when the
    answers do not fit together, ``RpcError`` when a block or a receipt could not be read.
    The native balance at both ends is read whenever native reading needs it (the balance
    guard, or bisection), whatever ``balance_before`` says (kept for callers). ``start`` is the
    chunk that ended at ``first - 1`` on this chain, when there is one: the balances (and nonce)
    it read at its end are this range's start, not read again. Block ``last``'s header is
    asked in the range's own batch, never taken from an earlier answer: a backend behind the
    head answers it with null, where it answers logs and traces with ``[]`` (a one-block range
    needs no other header: its parent hash is the link). The exception is ``head_header``, the
    poll's own answer for the head when ``last`` is the head: when the range reads end
    balances (the wallet's, guarded tokens') the batch asks them by that block's hash instead
    (``watcher.chain.links``), and a node that does not confirm it has the range read again
    with the header. Hit blocks above ``window`` (the scanner's: its final block, or its head
    less ``reorg_depth`` if higher; default ``last - reorg_depth``) have their headers read for
    the parent hash. ``points`` are an earlier read's bisection points of the same range
    (``Chunk.points``): bisection takes them when the range's ends still give the same balance
    and nonce.
    """
    del balance_before

    def reader() -> _Reader:
        one = _Reader(pool, chain, first, last, sizers, native)
        one.window = last - chain.reorg_depth if window is None else window
        if start is not None and start.last == first - 1 and start.linked:
            one.start = start
        one.prior = dict(points or {})
        return one

    held = head_header is not None and chain.internal != "debug_trace" and links_by_state(pool)
    if not held:
        return reader().read(parent_hash, None)
    try:
        return reader().read(parent_hash, head_header)
    except Unproven as unproven:
        log.info("scan.head_unproven", chain=chain.name, block=last, reason=str(unproven.answer))
        chunk = reader().read(parent_hash, None)  # the header in the range's own batch
        end = chunk.blocks[-1] if chunk.linked else None
        refused = not lags(unproven.answer)  # not a lagging node: it refuses the form
        if refused and end is not None and same(end.hash, head_header.get("hash")):
            stop_links_by_state(pool, chain.name, str(unproven.answer))
        return chunk


class _Reader(BalanceReads, HitReads):
    """One range of one chain, read as cheaply as the node allows (its state:
    ``RangeState``; balances and full blocks: ``BalanceReads``; receipts: ``HitReads``)."""

    # -- the range ---------------------------------------------------------------------------

    def read(self, parent_hash: str | None, head_header: Any) -> Chunk:
        """The range, linked to ``parent_hash``; ``head_header`` is block ``last``'s header
        when the caller read it (the head): proven by the end balance by hash, not read again
        (``Unproven`` when the node does not confirm it)."""
        chain, first, last, wallet = self.chain, self.first, self.last, self.wallet
        dense = self.mode == "debug_trace"
        guarded = [t.address for t in chain.tokens if t.balance_guard]
        # The head's header is taken only when an end balance read anyway can prove it.
        rides = head_header is not None and (self.ends or bool(guarded))
        held = self._header(head_header, last) if rides else None
        at_end: BlockRef = last if held is None else canonical(held.hash)
        numbers = list(range(first, last + 1)) if dense else sorted({first, last})
        # The link to the cursor by state (EIP-1898) instead of block first's header, which
        # on a busy chain is mostly transaction hashes: the cursor block must be canonical.
        probe = (
            parent_hash is not None and not dense and first < last
            and links_by_state(self.pool)
        )  # fmt: skip
        if probe:
            numbers = [last]
        if held is not None:
            numbers.remove(last)
        log_ranges = list(self.sizers["eth_getLogs"].ranges(first, last)) if chain.tokens else []
        trace_ranges: list[tuple[int, int]] = []
        if self.mode == "trace_filter":
            trace_ranges = list(self.sizers["trace_filter"].ranges(first, last))
        batch = Batch()
        batch.add("logs", [logs_call(chain, a, b) for a, b in log_ranges])
        batch.add("traces", [trace_filter_call(chain, a, b) for a, b in trace_ranges])
        batch.add("headers", [block_call(n) for n in numbers])
        batch.add("link", [canonical_call(wallet, parent_hash)] if probe and parent_hash else [])
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
            end = balance_call(wallet, at_end)  # by the held head's hash: its proof
            batch.add("ends", [balance_call(wallet, n) for n in asked[:-1]] + [end])
            off = self.mode == "off"
            batch.add("nonces", [nonce_call(wallet, n) for n in asked] if off else [])
        token_ends = {t: (last,) if t in known_tokens else ends for t in guarded}
        batch.add("tokens", [
            token_balance_call(t, wallet, at_end if n == last else n)
            for t in guarded for n in token_ends[t]
        ])  # fmt: skip
        if dense:
            batch.add("debug", [debug_trace_call(n) for n in numbers])
        batch.send(self.pool)

        headers = [self._header(raw, n) for n, raw in zip(numbers, batch["headers"], strict=True)]
        headers += [] if held is None else [held]
        if held is not None:  # before any other read: an unproven batch is read again
            words = iter(batch["tokens"])
            proofs = [batch["ends"][-1]] if self.ends else []
            proofs += [[next(words) for _ in token_ends[t]][-1] for t in guarded]
            refused = [p for p in proofs if p is None or isinstance(p, BaseException)]
            if refused:
                raise Unproven(last, refused[0])
        linked_by_state = probe and self._linked_by_state(batch["link"][0])
        if probe and not linked_by_state:  # not canonical, or no answer: block first's header
            headers.insert(0, self._header(self.pool.batch([block_call(first)])[0], first))
        self.blocks = {b.number: b for b in headers}
        links = [(b.number, b.hash, b.parent_hash) for b in headers]
        if not linked_by_state and not chain_links(links[:1], parent_hash):
            return Chunk(first, last, sorted({headers[0], headers[-1]}, key=_number), linked=False)
        if probe and not linked_by_state and self.link_error:
            stop_links_by_state(self.pool, self.chain.name, self.link_error)
        if dense and not chain_links(links, None):
            raise ChainMoved(f"blocks {first}..{last} do not link: the chain moved while reading")
        linked_to = parent_hash if parent_hash is not None else headers[0].parent_hash
        chunk = Chunk(first, last, [], parent_hash=linked_to)
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
            chunk.full_blocks, chunk.points = len(numbers), self.points
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


def _number(block: Block) -> int:
    return block.number
