"""Reading one block range from a node: inflows to the wallet, block hashes, the wallet balance.

Everything here speaks raw JSON-RPC through an ``RpcPool`` and turns the answers into small
typed records; the scanner decides what to store. One range costs one batched round trip for
its blocks, logs, traces and balance (split into POSTs of ``pool.max_batch`` entries by the
pool), plus one more only when a block holds a candidate transaction whose receipt must be read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_abi import decode
from eth_utils import keccak, to_bytes, to_checksum_address

from watcher.chain.rpc import Call, RpcPool
from watcher.domain.finality import RangeSizer, chain_links
from watcher.errors import RangeTooLarge, RpcError, WatcherError
from watcher.settings import ChainSettings, TokenSettings

TRANSFER_TOPIC = "0x" + bytes(keccak(text="Transfer(address,address,uint256)")).hex()
NATIVE_DECIMALS = 18
GWEI = 10**9
LOCATE_FANOUT = 8  # balances read per round trip when locating an unexplained inflow
BALANCE_OF = "0x70a08231"  # balanceOf(address)


class ChainMoved(WatcherError):
    """The node's answers for one range do not fit together (it reorged while we read)."""


@dataclass(frozen=True, slots=True)
class Block:
    number: int
    hash: str
    parent_hash: str
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
    """What one block range holds for the wallet."""

    first: int
    last: int
    blocks: list[Block]
    linked: bool = True  # False: the first block is not a child of the expected parent
    inflows: list[Inflow] = field(default_factory=list)
    explained: dict[int, int] = field(default_factory=dict)  # per block: native in - out, wei
    balance_before: int | None = None  # at first - 1, when it was asked for
    balance_after: int | None = None  # at last, when the balance guard is on
    # Per guarded token (checksummed address): balanceOf(wallet) at first - 1 and at last.
    token_before: dict[str, int | None] = field(default_factory=dict)
    token_after: dict[str, int | None] = field(default_factory=dict)

    def token_inflows(self, address: str) -> int:
        """Base units of ``address`` the found inflows brought in over the chunk."""
        return sum(
            i.amount for i in self.inflows if i.token is not None and i.token.address == address
        )


# --- decoding helpers -----------------------------------------------------------------------


def quantity(value: Any) -> int:
    """A JSON-RPC quantity: 0x hex string or (some nodes, some fields) a plain int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value, 16) if value.startswith(("0x", "0X")) else int(value)
    raise RpcError(f"expected a number in the node's answer, got {value!r}")


def _hex(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcError(f"expected 0x hex in the node's answer, got {value!r}")
    return value.lower()


def _address(value: Any) -> str | None:
    return str(to_checksum_address(value)) if isinstance(value, str) and value else None


def _dict(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, BaseException):
        raise value
    if not isinstance(value, dict):
        raise RpcError(f"the node answered {what} with {type(value).__name__}, not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if isinstance(value, BaseException):
        raise value
    if not isinstance(value, list):
        raise RpcError(f"the node answered {what} with {type(value).__name__}, not a list")
    return value


def address_topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def decode_amount(data: Any) -> int | None:
    """The uint256 of an ERC-20 Transfer log's data, or None if it is not exactly one word."""
    raw = to_bytes(hexstr=_hex(data))
    if len(raw) != 32:
        return None
    (amount,) = decode(["uint256"], raw)
    return int(amount)


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


# --- request builders -----------------------------------------------------------------------


def logs_call(chain: ChainSettings, first: int, last: int) -> Call:
    flt = {
        "fromBlock": hex(first),
        "toBlock": hex(last),
        "address": [t.address for t in chain.tokens],
        "topics": [TRANSFER_TOPIC, None, address_topic(chain.receiving_address)],
    }
    return ("eth_getLogs", [flt])


def trace_filter_call(chain: ChainSettings, first: int, last: int) -> Call:
    flt = {"fromBlock": hex(first), "toBlock": hex(last), "toAddress": [chain.receiving_address]}
    return ("trace_filter", [flt])


def block_call(number: int | str, full: bool = False) -> Call:
    return ("eth_getBlockByNumber", [hex(number) if isinstance(number, int) else number, full])


def balance_call(address: str, number: int) -> Call:
    return ("eth_getBalance", [address, hex(number)])


def token_balance_call(token: str, address: str, number: int) -> Call:
    """``balanceOf(address)`` of the ERC-20 ``token`` at block ``number``, by ``eth_call``."""
    data = BALANCE_OF + "0" * 24 + address[2:].lower()
    return ("eth_call", [{"to": token, "data": data}, hex(number)])


def outflow_logs_call(chain: ChainSettings, tokens: Sequence[str], first: int, last: int) -> Call:
    """``Transfer`` logs of ``tokens`` sent by the wallet over ``first..last``."""
    flt = {
        "fromBlock": hex(first),
        "toBlock": hex(last),
        "address": list(tokens),
        "topics": [TRANSFER_TOPIC, address_topic(chain.receiving_address)],
    }
    return ("eth_getLogs", [flt])


def receipt_call(tx_hash: str) -> Call:
    return ("eth_getTransactionReceipt", [tx_hash])


def parse_block(raw: Any, number: int) -> Block:
    """A block answer for ``number`` (-1: a tag, any number goes)."""
    if raw is None:
        raise RpcError(f"block {number} is not available from the node yet")
    block = _dict(raw, f"block {number}")
    stamp = block.get("timestamp")
    parsed = Block(
        quantity(block["number"]),
        _hex(block["hash"]),
        _hex(block["parentHash"]),
        None if stamp is None else quantity(stamp),
    )
    if number >= 0 and parsed.number != number:
        raise RpcError(f"the node answered block {parsed.number} when asked for {number}")
    return parsed


# --- ranged methods: split when refused -----------------------------------------------------


def collect_ranged(
    pool: RpcPool,
    sizer: RangeSizer,
    build: Callable[[int, int], Call],
    ranges: Sequence[tuple[int, int]],
    answers: Sequence[Any],
) -> list[Any]:
    """The items of the ``answers`` to ``build(a, b)`` over ``ranges``; a refused range is
    split at the sizer's narrowed width and asked again (``RangeTooLarge`` if one block is)."""
    items: list[Any] = []
    pending = list(zip(ranges, answers, strict=True))
    while pending:
        retry: list[tuple[int, int]] = []
        for (a, b), got in pending:
            if isinstance(got, RangeTooLarge):
                if not sizer.refused(b - a + 1):
                    raise got
                retry += sizer.ranges(a, b)
                continue
            items += _list(got, "a ranged request")
            sizer.succeeded(b - a + 1)
        again = pool.batch([build(a, b) for a, b in retry], return_errors=True) if retry else []
        pending = list(zip(retry, again, strict=True))
    return items


# --- one range ------------------------------------------------------------------------------

InRange = Callable[[Mapping[str, Any], str], int]


def fetch_chunk(
    pool: RpcPool,
    chain: ChainSettings,
    first: int,
    last: int,
    sizers: Mapping[str, RangeSizer],
    *,
    parent_hash: str | None,
    balance_before: bool,
) -> Chunk:
    """Read blocks ``first..last`` and everything in them paid to the wallet.

    ``sizers`` hold the learned widths for ``eth_getLogs`` and ``trace_filter``. Returns a
    Chunk with ``linked=False`` (and nothing else) when block ``first`` is not a child of
    ``parent_hash``: the caller handles the reorg. Raises ``ChainMoved`` when the answers do
    not fit together, ``RpcError`` when a block or a receipt could not be read.
    """
    wallet = chain.receiving_address
    numbers = range(first, last + 1)
    log_ranges = list(sizers["eth_getLogs"].ranges(first, last)) if chain.tokens else []
    trace_ranges: list[tuple[int, int]] = []
    if chain.internal == "trace_filter":
        trace_ranges = list(sizers["trace_filter"].ranges(first, last))
    calls = [logs_call(chain, a, b) for a, b in log_ranges]
    calls += [trace_filter_call(chain, a, b) for a, b in trace_ranges]
    at_balance = len(calls)
    if chain.balance_guard:
        calls.append(balance_call(wallet, last))
        if balance_before:
            calls.append(balance_call(wallet, max(first - 1, 0)))
    at_tokens = len(calls)
    guarded = [t.address for t in chain.tokens if t.balance_guard]
    for token in guarded:
        calls.append(token_balance_call(token, wallet, max(first - 1, 0)))
        calls.append(token_balance_call(token, wallet, last))
    at_blocks = len(calls)
    calls += [block_call(n, full=True) for n in numbers]
    if chain.internal == "debug_trace":
        calls += [("debug_traceBlockByNumber", [hex(n), {"tracer": "callTracer"}]) for n in numbers]
    answers = pool.batch(calls, return_errors=True)

    raw_blocks: list[dict[str, Any]] = []
    for n, raw in zip(numbers, answers[at_blocks:], strict=False):
        if raw is None:
            raise RpcError(f"block {n} is not available from the node yet")
        raw_blocks.append(_dict(raw, f"block {n}"))
    blocks = [parse_block(raw, n) for raw, n in zip(raw_blocks, numbers, strict=True)]
    links = [(b.number, b.hash, b.parent_hash) for b in blocks]
    if not chain_links(links[:1], parent_hash):
        return Chunk(first, last, blocks, linked=False)
    if not chain_links(links, None):
        raise ChainMoved(f"blocks {first}..{last} do not link: the chain moved while reading")
    hashes = {b.number: b.hash for b in blocks}
    chunk = Chunk(first, last, blocks)

    def in_range(item: Mapping[str, Any], what: str) -> int:
        number = quantity(item["blockNumber"])
        if not same(hashes.get(number), item.get("blockHash")):
            raise ChainMoved(f"{what} in block {number} is from another branch")
        return number

    if log_ranges:
        logs = collect_ranged(
            pool,
            sizers["eth_getLogs"],
            lambda a, b: logs_call(chain, a, b),
            log_ranges,
            answers[: len(log_ranges)],
        )
        chunk.inflows += _erc20_inflows(chain, logs, in_range)
    frames: list[tuple[dict[str, Any], int, bool]] = []  # (trace, position, check ancestors)
    if trace_ranges:
        traces = collect_ranged(
            pool,
            sizers["trace_filter"],
            lambda a, b: trace_filter_call(chain, a, b),
            trace_ranges,
            answers[len(log_ranges) : at_balance],
        )
        frames = _filter_frames(traces, wallet, in_range)
    if chain.internal == "debug_trace":
        at_debug = at_blocks + len(numbers)
        for n, raw in zip(numbers, answers[at_debug:], strict=True):
            traces = _list(raw, f"debug traces of block {n}")
            chunk.inflows += _debug_inflows(traces, wallet, n, hashes[n])
    _read_transactions(pool, chain, chunk, raw_blocks, frames, in_range)
    chunk.inflows.sort(key=lambda i: (i.block_number, i.tx_hash, i.kind, i.log_index or 0))
    for inflow in chunk.inflows:
        if inflow.kind != "erc20":
            n = inflow.block_number
            chunk.explained[n] = chunk.explained.get(n, 0) + inflow.amount
    if chain.balance_guard:
        chunk.balance_after = _balance(answers[at_balance])
        if balance_before:
            chunk.balance_before = _balance(answers[at_balance + 1])
    for k, token in enumerate(guarded):
        chunk.token_before[token] = _word(answers[at_tokens + 2 * k])
        chunk.token_after[token] = _word(answers[at_tokens + 2 * k + 1])
    return chunk


def token_outflows(
    pool: RpcPool, chain: ChainSettings, tokens: Sequence[str], first: int, last: int,
    sizer: RangeSizer,
) -> dict[str, int]:  # fmt: skip
    """Base units of each of ``tokens`` the wallet sent to others over ``first..last``."""
    ranges = list(sizer.ranges(first, last))

    def build(a: int, b: int) -> Call:
        return outflow_logs_call(chain, tokens, a, b)

    answers = pool.batch([build(a, b) for a, b in ranges], return_errors=True)
    wallet_topic = address_topic(chain.receiving_address)
    out = dict.fromkeys(tokens, 0)
    by_lower = {t.lower(): t for t in tokens}
    for log in collect_ranged(pool, sizer, build, ranges, answers):
        item = _dict(log, "a log")
        topics = [str(t).lower() for t in item.get("topics") or []]
        token = by_lower.get(str(item.get("address", "")).lower())
        if item.get("removed") or token is None or len(topics) != 3 or topics[2] == wallet_topic:
            continue  # removed, another contract, ERC-721, or the wallet paying itself
        out[token] += decode_amount(item.get("data", "0x")) or 0
    return out


def _read_transactions(
    pool: RpcPool,
    chain: ChainSettings,
    chunk: Chunk,
    raw_blocks: list[dict[str, Any]],
    frames: list[tuple[dict[str, Any], int, bool]],
    in_range: InRange,
) -> None:
    """Native inflows, the wallet's own spending and internal inflows from ``trace_filter``,
    decided by the receipts of the candidate transactions (read in one batch)."""
    wallet, explained = chain.receiving_address, chunk.explained
    native: list[dict[str, Any]] = []
    spent: list[dict[str, Any]] = []
    for raw in raw_blocks:
        for tx in _list(raw.get("transactions", []), "block transactions"):
            if same(tx.get("from"), wallet):
                if chain.balance_guard:
                    spent.append(tx)
            elif same(tx.get("to"), wallet) and quantity(tx.get("value", "0x0")) > 0:
                native.append(tx)
        for w in raw.get("withdrawals") or []:
            if same(w.get("address"), wallet):
                number = quantity(raw["number"])
                explained[number] = explained.get(number, 0) + quantity(w["amount"]) * GWEI

    tx_hashes = {_hex(tx["hash"]) for tx in native + spent}
    tx_hashes |= {_hex(f["transactionHash"]) for f, _, _ in frames}
    deep = sorted({_hex(f["transactionHash"]) for f, _, d in frames if d})
    receipts, trees = read_receipts(pool, sorted(tx_hashes), deep)
    for tx_hash, receipt in receipts.items():
        if receipt is None:
            raise ChainMoved(f"no receipt for {tx_hash}: the chain moved while reading")
        in_range(receipt, f"the receipt of {tx_hash}")

    for tx in native:
        if quantity(_get(receipts, tx["hash"])["status"]) == 1:
            frm, value = str(_address(tx["from"])), quantity(tx["value"])
            at = quantity(tx["blockNumber"]), _hex(tx["blockHash"])
            chunk.inflows.append(Inflow("native", _hex(tx["hash"]), None, *at, frm, value))
    for tx in spent:
        number = quantity(tx["blockNumber"])
        explained[number] = explained.get(number, 0) - spending(tx, _get(receipts, tx["hash"]))
    for frame, position, needs_tree in frames:
        tx_hash = _hex(frame["transactionHash"])
        if quantity(_get(receipts, tx_hash)["status"]) != 1:
            continue
        if needs_tree and not _ancestors_ok(frame, trees.get(tx_hash) or []):
            continue
        frm, value = str(_address(frame["action"]["from"])), quantity(frame["action"]["value"])
        at = quantity(frame["blockNumber"]), _hex(frame["blockHash"])
        chunk.inflows.append(Inflow("internal", tx_hash, position, *at, frm, value))


def _get(receipts: Mapping[str, dict[str, Any] | None], tx_hash: Any) -> dict[str, Any]:
    receipt = receipts[_hex(tx_hash)]
    assert receipt is not None
    return receipt


def _balance(answer: Any) -> int | None:
    """A balance answer, or None when the node could not say (state pruned at that block)."""
    if isinstance(answer, RpcError) or answer is None:
        return None
    return quantity(answer)


def _word(answer: Any) -> int | None:
    """A uint256 returned by ``eth_call``, or None when the node could not say."""
    if isinstance(answer, BaseException) or not isinstance(answer, str):
        return None
    raw = to_bytes(hexstr=answer) if answer.startswith("0x") else b""
    return int.from_bytes(raw[:32], "big") if len(raw) >= 32 else None


def spending(tx: Mapping[str, Any], receipt: Mapping[str, Any]) -> int:
    """Wei a transaction sent by the wallet took from it: the fees, plus the value if it
    succeeded and went elsewhere."""
    fee = quantity(receipt.get("gasUsed", 0)) * quantity(
        receipt.get("effectiveGasPrice") or tx.get("gasPrice") or 0
    )
    if receipt.get("blobGasUsed"):
        fee += quantity(receipt["blobGasUsed"]) * quantity(receipt.get("blobGasPrice") or 0)
    if receipt.get("l1Fee"):
        fee += quantity(receipt["l1Fee"])  # OP-stack chains charge the L1 data fee on top
    sent = quantity(receipt["status"]) == 1 and not same(tx.get("to"), tx.get("from"))
    return fee + (quantity(tx.get("value", "0x0")) if sent else 0)


def _erc20_inflows(chain: ChainSettings, logs: list[Any], in_range: InRange) -> Iterator[Inflow]:
    tokens = {t.address.lower(): t for t in chain.tokens}
    wallet_topic = address_topic(chain.receiving_address)
    for log in logs:
        item = _dict(log, "a log")
        topics = [str(t).lower() for t in item.get("topics") or []]
        token = tokens.get(str(item.get("address", "")).lower())
        if item.get("removed") or token is None or len(topics) != 3:
            continue  # a removed log, another contract, or ERC-721 (4 topics)
        if topics[0] != TRANSFER_TOPIC or topics[2] != wallet_topic or topics[1] == wallet_topic:
            continue  # not a Transfer to the wallet, or the wallet paying itself
        amount = decode_amount(item.get("data", "0x"))
        if amount is None or amount == 0:
            continue
        at = in_range(item, "a log"), _hex(item["blockHash"])
        frm = str(_address("0x" + topics[1][-40:]))
        tx_hash, index = _hex(item["transactionHash"]), quantity(item["logIndex"])
        yield Inflow("erc20", tx_hash, index, *at, frm, amount, token)


def _filter_frames(
    traces: list[Any], wallet: str, in_range: InRange
) -> list[tuple[dict[str, Any], int, bool]]:
    """Value-carrying internal calls to the wallet from ``trace_filter``: (frame, position,
    whether its ancestors must be checked). Position = the frame's rank among the value calls
    to the wallet in its transaction, in execution order (the same rank ``_debug_inflows``
    gives). Errored frames keep their rank but are dropped."""
    per_tx: dict[str, list[dict[str, Any]]] = {}
    for trace in traces:
        item = _dict(trace, "a trace")
        action = item.get("action") or {}
        path = item.get("traceAddress") or []
        if item.get("type") != "call" or action.get("callType") != "call" or not path:
            continue
        if not same(action.get("to"), wallet) or quantity(action.get("value", "0x0")) <= 0:
            continue
        in_range(item, "a trace")
        per_tx.setdefault(_hex(item["transactionHash"]), []).append(item)
    out: list[tuple[dict[str, Any], int, bool]] = []
    for items in per_tx.values():
        items.sort(key=lambda t: list(t["traceAddress"]))
        for position, item in enumerate(items):
            if not item.get("error"):
                out.append((item, position, len(item["traceAddress"]) > 1))
    return out


def _ancestors_ok(frame: Mapping[str, Any], tree: Sequence[Any]) -> bool:
    """Whether no enclosing call of ``frame`` failed (a reverted parent undoes the transfer)."""
    path = list(frame["traceAddress"])
    prefixes = {tuple(path[:i]) for i in range(len(path))}
    return not any(
        tuple(t.get("traceAddress") or []) in prefixes and t.get("error")
        for t in tree
        if isinstance(t, dict)
    )


def _debug_inflows(traces: list[Any], wallet: str, number: int, block_hash: str) -> list[Inflow]:
    """Internal value calls to the wallet in one block's ``callTracer`` output that took effect
    (no error on the call or any enclosing call, which includes the transaction itself)."""
    out: list[Inflow] = []
    for entry in traces:
        item = _dict(entry, "a transaction trace")
        tx_hash = _hex(item.get("txHash"))
        position = 0
        stack: list[tuple[dict[str, Any], int, bool]] = [(_dict(item["result"], "a call"), 0, True)]
        while stack:  # depth-first, in execution order
            call, depth, ok = stack.pop()
            ok = ok and not call.get("error")
            value = quantity(call.get("value") or "0x0")
            paid = call.get("type") == "CALL" and same(call.get("to"), wallet) and value > 0
            if depth > 0 and paid:
                if ok:
                    frm = str(_address(call["from"]))
                    out.append(
                        Inflow("internal", tx_hash, position, number, block_hash, frm, value)
                    )
                position += 1
            children = call.get("calls") or []
            stack += [(c, depth + 1, ok) for c in reversed(children) if isinstance(c, dict)]
    return out


def read_receipts(
    pool: RpcPool, tx_hashes: Sequence[str], deep: Sequence[str] = ()
) -> tuple[dict[str, dict[str, Any] | None], dict[str, list[Any]]]:
    """Receipts by tx hash (None: the node does not know the transaction any more), and the
    ``trace_transaction`` trees of the ``deep`` ones, in one batch."""
    if not tx_hashes:
        return {}, {}
    calls = [receipt_call(h) for h in tx_hashes] + [("trace_transaction", [h]) for h in deep]
    answers = pool.batch(calls)
    split_at = len(tx_hashes)
    receipts = {
        h: (None if a is None else _dict(a, "a receipt"))
        for h, a in zip(tx_hashes, answers[:split_at], strict=True)
    }
    trees = {h: _list(a, "a trace") for h, a in zip(deep, answers[split_at:], strict=True)}
    return receipts, trees


# --- reorgs, finality and the balance guard -------------------------------------------------


def block_hashes(pool: RpcPool, numbers: Sequence[int]) -> dict[int, str | None]:
    """The node's hash for each block number (None: it has no such block any more)."""
    wanted = sorted(set(numbers))
    answers = pool.batch([block_call(n) for n in wanted]) if wanted else []
    return {
        n: None if raw is None else parse_block(raw, n).hash
        for n, raw in zip(wanted, answers, strict=True)
    }


class StoredTransfer(Protocol):
    """What a receipt is checked against: the fields of a transfer as it was stored."""

    @property
    def kind(self) -> str: ...
    @property
    def block_hash(self) -> str: ...
    @property
    def log_index(self) -> int | None: ...
    @property
    def token_address(self) -> str | None: ...
    @property
    def amount(self) -> int: ...


def receipt_disagrees(
    transfer: StoredTransfer, receipt: Mapping[str, Any] | None, wallet: str
) -> str:
    """Why ``receipt`` does not confirm ``transfer`` as stored ("" when it does)."""
    if receipt is None:
        return "transaction not found"
    if not same(receipt.get("blockHash"), transfer.block_hash):
        return f"now in block {receipt.get('blockHash')}"
    if quantity(receipt.get("status", "0x0")) != 1:
        return "transaction failed"
    if transfer.kind != "erc20":
        return ""
    log = next(
        (lg for lg in receipt.get("logs") or [] if quantity(lg["logIndex"]) == transfer.log_index),
        None,
    )
    if log is None:
        return f"no log at index {transfer.log_index}"
    topics = [str(t).lower() for t in log.get("topics") or []]
    if (
        not same(log.get("address"), transfer.token_address)
        or topics[:1] != [TRANSFER_TOPIC]
        or topics[2:3] != [address_topic(wallet)]
        or decode_amount(log.get("data", "0x")) != transfer.amount
    ):
        return f"log {transfer.log_index} is not the same transfer"
    return ""


def locate_jump(
    pool: RpcPool,
    wallet: str,
    first: int,
    last: int,
    before: int,
    explained: Mapping[int, int],
) -> int:
    """The first block in ``first..last`` at which the wallet's balance exceeds ``before`` plus
    what the found inflows explain up to that block (searched over historical balances,
    ``LOCATE_FANOUT`` per round trip). ``last`` is assumed to exceed it."""
    prefix: dict[int, int] = {}
    total = 0
    for n in range(first, last + 1):
        total += explained.get(n, 0)
        prefix[n] = total
    lo, hi = first - 1, last  # the excess is not there at lo (by definition), there at hi
    while hi - lo > 1:
        step = max(1, (hi - lo) // (LOCATE_FANOUT + 1))
        points = list(range(lo + step, hi, step))[:LOCATE_FANOUT]
        balances = pool.batch([balance_call(wallet, p) for p in points])
        for point, raw in zip(points, balances, strict=True):
            if quantity(raw) - before > prefix[point]:
                hi = point
                break
            lo = point
    return hi
