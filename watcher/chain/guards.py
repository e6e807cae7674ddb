"""Balance guards: did a chunk's found inflows explain how the wallet's balances moved?

Native: the balance at the chunk's ends against native inflows less the wallet's own spending.
ERC-20 (per token with ``balance_guard``): ``balanceOf(wallet)`` at the chunk's ends against
the found ``Transfer`` inflows less the wallet's own outgoing ``Transfer`` logs (read only
when the inflows alone do not add up, so a quiet wallet costs nothing more). Growth the found
inflows do not explain means a payment was missed (a lagging backend answering ``eth_getLogs``
with ``[]``, an internal transfer without traces): the scanner rescans, then alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from watcher.chain import sources
from watcher.chain.rpc import RpcPool
from watcher.chain.sources import Chunk
from watcher.domain.finality import RangeSizer, unexplained_growth
from watcher.settings import ChainSettings


@dataclass(frozen=True, slots=True)
class Unexplained:
    """One asset whose balance grew over a chunk more than its found inflows explain."""

    asset: str
    token_address: str | None  # None: the native coin
    before: int
    after: int
    explained: int  # inflows less known outflows
    excess: int


def unexplained(
    pool: RpcPool,
    chain: ChainSettings,
    chunk: Chunk,
    native_before: int | None,
    sizer: RangeSizer,
) -> list[Unexplained]:
    """Every asset of ``chunk`` with unexplained growth (native first, then tokens).

    ``native_before`` is the native balance at ``chunk.first - 1`` (carried from the previous
    chunk, or read with this one). A balance the node could not give is not judged.
    """
    out: list[Unexplained] = []
    after = chunk.balance_after
    if chain.balance_guard and native_before is not None and after is not None:
        explained = sum(chunk.explained.values())
        excess = unexplained_growth(native_before, after, explained)
        if excess > 0:
            out.append(
                Unexplained(chain.native_symbol, None, native_before, after, explained, excess)
            )
    out += _tokens(pool, chain, chunk, sizer)
    return out


def _tokens(
    pool: RpcPool, chain: ChainSettings, chunk: Chunk, sizer: RangeSizer
) -> list[Unexplained]:
    sums: dict[str, tuple[int, int, int]] = {}  # address -> (before, after, inflows)
    for token, before in chunk.token_before.items():
        after = chunk.token_after.get(token)
        if before is not None and after is not None:
            sums[token] = (before, after, chunk.token_inflows(token))
    unsure = [t for t, (before, after, inflow) in sums.items() if after - before != inflow]
    if not unsure:
        return []
    outflows: Mapping[str, int] = sources.token_outflows(
        pool, chain, unsure, chunk.first, chunk.last, sizer
    )
    symbols = {t.address: t.symbol for t in chain.tokens}
    out: list[Unexplained] = []
    for token in unsure:
        before, after, inflow = sums[token]
        explained = inflow - outflows.get(token, 0)
        excess = unexplained_growth(before, after, explained)
        if excess > 0:
            out.append(Unexplained(symbols[token], token, before, after, explained, excess))
    return out


def event_data(
    chain: ChainSettings, chunk: Chunk, found: Unexplained, block: int | None
) -> dict[str, object]:
    """The body of ``watcher.unexplained_balance`` for one asset of one chunk."""
    return {
        "chain": chain.name, "chain_id": chain.chain_id, "address": chain.receiving_address,
        "asset": found.asset, "token_address": found.token_address,
        "from_block": chunk.first, "to_block": chunk.last, "block": block,
        "expected_growth": str(found.explained), "actual_growth": str(found.after - found.before),
        "unexplained": str(found.excess),
    }  # fmt: skip
