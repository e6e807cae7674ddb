"""What to ask a node, and how to read its answers: JSON-RPC request builders and decoders.

Every builder returns a ``Call`` for ``RpcPool.batch``; every decoder turns one raw answer into
a Python value or raises ``RpcError`` naming what was wrong. Ranged methods (``eth_getLogs``,
``trace_filter``) go through ``collect_ranged``, which splits a refused range and asks again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from eth_hash.auto import keccak

from watcher.chain.chunk import Block
from watcher.chain.rpc import Call, RpcPool
from watcher.chain.rpc_errors import stated_range_limit
from watcher.domain.addresses import to_checksum_address
from watcher.domain.finality import RangeSizer
from watcher.errors import RangeTooLarge, RpcError
from watcher.settings import ChainSettings

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()
NATIVE_DECIMALS = 18
GWEI = 10**9
BALANCE_OF = "0x70a08231"  # balanceOf(address)


# --- decoding helpers -----------------------------------------------------------------------


def quantity(value: Any) -> int:
    """A JSON-RPC quantity: 0x hex string or (some nodes, some fields) a plain int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value, 16) if value.startswith(("0x", "0X")) else int(value)
    raise RpcError(f"expected a number in the node's answer, got {value!r}")


def hex_value(value: Any) -> str:
    """A 0x hex string from the node's answer, lower-cased."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcError(f"expected 0x hex in the node's answer, got {value!r}")
    return value.lower()


def checksum(value: Any) -> str | None:
    """A checksummed address, or None for a missing one."""
    if not isinstance(value, str) or not value:
        return None
    if not _ADDRESS.match(value):
        raise RpcError(f"expected an address in the node's answer, got {value!r}")
    return to_checksum_address(value)


def hex_bytes(value: str) -> bytes:
    """The bytes of a 0x hex string (an odd number of digits is read with a leading 0).

    Here rather than eth_utils / eth_abi, whose imports (about 0.15 s) ``proofwatch scan``
    would pay at every start."""
    body = value[2:]
    return bytes.fromhex("0" + body if len(body) % 2 else body)


def as_dict(value: Any, what: str) -> dict[str, Any]:
    """An answer that must be a JSON object (an exception in its slot is raised)."""
    if isinstance(value, BaseException):
        raise value
    if not isinstance(value, dict):
        raise RpcError(f"the node answered {what} with {type(value).__name__}, not an object")
    return value


def as_list(value: Any, what: str) -> list[Any]:
    """An answer that must be a JSON list (an exception in its slot is raised)."""
    if isinstance(value, BaseException):
        raise value
    if not isinstance(value, list):
        raise RpcError(f"the node answered {what} with {type(value).__name__}, not a list")
    return value


def address_topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def decode_amount(data: Any) -> int | None:
    """The uint256 of an ERC-20 Transfer log's data, or None if it is not exactly one word."""
    raw = hex_bytes(hex_value(data))
    if len(raw) != 32:
        return None
    return int.from_bytes(raw, "big")


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


def balance_answer(answer: Any) -> int | None:
    """A balance or nonce answer, or None when the node could not say (state pruned there)."""
    if isinstance(answer, RpcError) or answer is None:
        return None
    return quantity(answer)


def word_answer(answer: Any) -> int | None:
    """A uint256 returned by ``eth_call``, or None when the node could not say."""
    if isinstance(answer, BaseException) or not isinstance(answer, str):
        return None
    raw = hex_bytes(answer) if answer.startswith("0x") else b""
    return int.from_bytes(raw[:32], "big") if len(raw) >= 32 else None


# --- request builders -----------------------------------------------------------------------


def logs_call(chain: ChainSettings, first: int, last: int) -> Call:
    flt = {
        "fromBlock": hex(first),
        "toBlock": hex(last),
        "address": [t.address for t in chain.tokens],
        "topics": [TRANSFER_TOPIC, None, address_topic(chain.receiving_address)],
    }
    return ("eth_getLogs", [flt])


def trace_filter_call(chain: ChainSettings, first: int, last: int, *, sent: bool = False) -> Call:
    """``trace_filter`` for calls to the wallet (``sent``: calls from it) over ``first..last``."""
    key = "fromAddress" if sent else "toAddress"
    flt = {"fromBlock": hex(first), "toBlock": hex(last), key: [chain.receiving_address]}
    return ("trace_filter", [flt])


def debug_trace_call(number: int) -> Call:
    return ("debug_traceBlockByNumber", [hex(number), {"tracer": "callTracer"}])


def block_call(number: int | str, full: bool = False) -> Call:
    """A block by number or tag: its header (and transaction hashes), or in ``full``."""
    return ("eth_getBlockByNumber", [hex(number) if isinstance(number, int) else number, full])


BlockRef = int | dict[str, Any]  # a block number, or a block by hash (EIP-1898)


def _ref(at: BlockRef) -> Any:
    return hex(at) if isinstance(at, int) else at


def balance_call(address: str, at: BlockRef) -> Call:
    return ("eth_getBalance", [address, _ref(at)])


def nonce_call(address: str, number: int) -> Call:
    return ("eth_getTransactionCount", [address, hex(number)])


def token_balance_call(token: str, address: str, at: BlockRef) -> Call:
    """``balanceOf(address)`` of the ERC-20 ``token`` at block ``at``, by ``eth_call``."""
    data = BALANCE_OF + "0" * 24 + address[2:].lower()
    return ("eth_call", [{"to": token, "data": data}, _ref(at)])


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
    block = as_dict(raw, f"block {number}")
    stamp = block.get("timestamp")
    parsed = Block(
        quantity(block["number"]),
        hex_value(block["hash"]),
        hex_value(block["parentHash"]),
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
    split at the sizer's narrowed width (the node's stated limit when the refusal names one)
    and asked again (``RangeTooLarge`` if one block is)."""
    items: list[Any] = []
    pending = list(zip(ranges, answers, strict=True))
    while pending:
        retry: list[tuple[int, int]] = []
        for (a, b), got in pending:
            if isinstance(got, RangeTooLarge):
                if not sizer.refused(b - a + 1, stated_range_limit(str(got))):
                    raise got
                retry += sizer.ranges(a, b)
                continue
            items += as_list(got, "a ranged request")
            sizer.succeeded(b - a + 1)
        again = pool.batch([build(a, b) for a, b in retry], return_errors=True) if retry else []
        pending = list(zip(retry, again, strict=True))
    return items


def ranged(
    pool: RpcPool,
    sizer: RangeSizer,
    build: Callable[[int, int], Call],
    first: int,
    last: int,
) -> list[Any]:
    """Every item of ``build`` over ``first..last``, in ranges the sizer allows (own batch)."""
    ranges = list(sizer.ranges(first, last))
    answers = pool.batch([build(a, b) for a, b in ranges], return_errors=True)
    return collect_ranged(pool, sizer, build, ranges, answers)


class Batch:
    """Calls gathered under names, sent in one ``pool.batch``; answers read back by name."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.slots: dict[str, tuple[int, int]] = {}
        self.answers: list[Any] = []

    def add(self, name: str, calls: Sequence[Call]) -> None:
        self.slots[name] = (len(self.calls), len(self.calls) + len(calls))
        self.calls += calls

    def send(self, pool: RpcPool) -> None:
        self.answers = pool.batch(self.calls, return_errors=True) if self.calls else []

    def __getitem__(self, name: str) -> list[Any]:
        start, end = self.slots.get(name, (0, 0))
        return self.answers[start:end]
