"""ERC-20 transfers of the configured tokens, to the wallet and (for the token balance guard)
from it, out of ``eth_getLogs`` answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from watcher.chain.calls import (
    TRANSFER_TOPIC,
    address_topic,
    as_dict,
    checksum,
    decode_amount,
    hex_value,
    outflow_logs_call,
    quantity,
    ranged,
)
from watcher.chain.chunk import Inflow
from watcher.chain.rpc import RpcPool
from watcher.domain.finality import RangeSizer
from watcher.settings import ChainSettings

InRange = Callable[[Mapping[str, Any], str], int]


def erc20_inflows(
    chain: ChainSettings, logs: list[Any], in_range: InRange
) -> Iterator[Inflow]:  # fmt: skip
    tokens = {t.address.lower(): t for t in chain.tokens}
    wallet_topic = address_topic(chain.receiving_address)
    for log_item in logs:
        item = as_dict(log_item, "a log")
        topics = [str(t).lower() for t in item.get("topics") or []]
        token = tokens.get(str(item.get("address", "")).lower())
        if item.get("removed") or token is None or len(topics) != 3:
            continue  # a removed log, another contract, or ERC-721 (4 topics)
        if topics[0] != TRANSFER_TOPIC or topics[2] != wallet_topic or topics[1] == wallet_topic:
            continue  # not a Transfer to the wallet, or the wallet paying itself
        amount = decode_amount(item.get("data", "0x"))
        if amount is None or amount == 0:
            continue
        at = in_range(item, "a log"), hex_value(item["blockHash"])
        frm = str(checksum("0x" + topics[1][-40:]))
        tx_hash, index = hex_value(item["transactionHash"]), quantity(item["logIndex"])
        yield Inflow("erc20", tx_hash, index, *at, frm, amount, token)


def token_outflows(
    pool: RpcPool, chain: ChainSettings, tokens: Sequence[str], first: int, last: int,
    sizer: RangeSizer,
) -> dict[str, int]:  # fmt: skip
    """Base units of each of ``tokens`` the wallet sent to others over ``first..last``."""
    wallet_topic = address_topic(chain.receiving_address)
    out = dict.fromkeys(tokens, 0)
    by_lower = {t.lower(): t for t in tokens}
    build = lambda a, b: outflow_logs_call(chain, tokens, a, b)  # noqa: E731
    for log_item in ranged(pool, sizer, build, first, last):
        item = as_dict(log_item, "a log")
        topics = [str(t).lower() for t in item.get("topics") or []]
        token = by_lower.get(str(item.get("address", "")).lower())
        if item.get("removed") or token is None or len(topics) != 3 or topics[2] == wallet_topic:
            continue  # removed, another contract, ERC-721, or the wallet paying itself
        out[token] += decode_amount(item.get("data", "0x")) or 0
    return out
