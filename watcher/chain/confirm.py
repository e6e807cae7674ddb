"""Confirming a transfer at finality: its receipt re-read, and with ``cross_check`` a second
provider's word.

A receipt that cannot be confirmed (null, another block hash, failed, the log moved) is never
a reason to orphan here: only the scanner's reorg path, which rewinds the cursor, orphans. A
lagging backend behind a load balancer answers null for a transaction it has not seen yet; a
genuine reorg shows as a broken parent link at the cursor and is followed there. So an
unconfirmed transfer stays ``seen`` and is asked about again on the next poll.

With ``cross_check = true`` a transfer the current URL confirms becomes final only when another
URL returns the same receipt (block hash, status, log) at or below its own final block. A
receipt it does not know yet, or a block it does not hold as final yet, is a wait; a receipt
that says something else is a disagreement, which the scanner alerts on (never a final).
"""

from __future__ import annotations

from collections.abc import Sequence

from watcher.chain import sources
from watcher.chain.findings import Pending, Verdict
from watcher.chain.rpc import RpcPool
from watcher.domain.finality import final_block, finality_tag
from watcher.errors import RpcError
from watcher.settings import ChainSettings

__all__ = ["Verdict", "confirm", "second_opinion"]


def confirm(pool: RpcPool, chain: ChainSettings, waiting: Sequence[Pending]) -> dict[int, Verdict]:
    """A verdict per transfer id. Raises ``RpcError`` when the current URL cannot be read."""
    wallet = chain.receiving_address
    receipts, _ = sources.read_receipts(pool, sorted({t.tx_hash for t in waiting}))
    verdicts: dict[int, Verdict] = {}
    for t in waiting:
        why = sources.receipt_disagrees(t, receipts[t.tx_hash], wallet)
        verdicts[t.id] = Verdict(False, why) if why else Verdict(True)
    if chain.cross_check:
        agreed = [t for t in waiting if verdicts[t.id].final]
        verdicts.update(second_opinion(pool, chain, agreed))
    return verdicts


def second_opinion(
    pool: RpcPool, chain: ChainSettings, transfers: Sequence[Pending]
) -> dict[int, Verdict]:
    """What another URL says of ``transfers`` (already confirmed by the current URL)."""
    if not transfers:
        return {}
    witness = pool.witness()
    if witness is None:
        return {t.id: Verdict(False, "cross_check needs a second RPC URL") for t in transfers}
    tag = finality_tag(chain.finality)
    hashes = sorted({t.tx_hash for t in transfers})
    calls = [sources.block_call(tag or "latest")] + [sources.receipt_call(h) for h in hashes]
    try:
        answers = witness.batch(calls)
        block = sources.parse_block(answers[0], -1)
    except RpcError as exc:
        reason = f"the second provider could not be asked: {exc}"
        return {t.id: Verdict(False, reason) for t in transfers}
    theirs = dict(zip(hashes, answers[1:], strict=True))
    final = final_block(chain.finality, block.number, block.number if tag else None)
    wallet = chain.receiving_address
    out: dict[int, Verdict] = {}
    for t in transfers:
        receipt = theirs[t.tx_hash]
        if receipt is None:
            out[t.id] = Verdict(False, "the second provider does not know it yet")
            continue
        if not isinstance(receipt, dict):
            out[t.id] = Verdict(False, "the second provider answered something else")
            continue
        why = sources.receipt_disagrees(t, receipt, wallet)
        if why:
            out[t.id] = Verdict(False, f"the second provider disagrees: {why}", True)
        elif t.block_number > final:
            out[t.id] = Verdict(False, f"not final at the second provider (final {final})")
        else:
            out[t.id] = Verdict(True)
    return out
