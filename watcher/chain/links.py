"""The link of a range to the cursor, and its end at the head, without headers (EIP-1898).

A range read after the cursor must start at a child of the cursor's block. Block ``first``'s
header proves it by its parent hash, but on a busy chain that header is mostly transaction
hashes (about 10 kB for 120 transactions). A state read at the cursor's block by hash with
``requireCanonical`` proves the same thing in a few bytes: the node answers only while that
block is on its canonical chain (geth, Nethermind, Erigon, reth, Anvil), so block ``first``
of the same answer's chain is its child.

Any other answer (an error, no answer) falls back to block ``first``'s header, which decides:
a reorg, or a node that cannot say (no state that old: pruned; or it does not take a block
hash). A node whose refusal was neither missing state nor a reorg is not asked again through
that pool (one log line).

The same form proves the other end. The chunk that ends at the head need not read the head's
header again when the poll's first request read it: the range's end balances (the wallet's,
with the balance guard or without traces, and the guarded tokens') asked by the head's hash
with ``requireCanonical`` are answered only by a backend that has that block on its chain, so
the logs and traces of the same batch cover it (a backend behind the head refuses them, as it
would answer the header with null). A range that reads no end balance reads the header. A
refused proof reads the range again with the header in its batch (``watcher.chain.sources``).
"""

from __future__ import annotations

from typing import Any
from weakref import WeakSet

import structlog

from watcher.chain.rpc import Call, RpcPool

log = structlog.get_logger("watcher.chain.sources")

_NO_LINKS_BY_STATE: WeakSet[RpcPool] = WeakSet()
# A node's words for a block it does not have (geth "header for hash not found", Anvil
# "Resource not found", Nethermind "could not be found") or not on its chain ("not canonical").
_LAGS = ("not found", "not be found", "unknown", "canonical")


def canonical(block_hash: str) -> dict[str, Any]:
    """Block ``block_hash`` for a state read that is answered only while it is canonical."""
    return {"blockHash": block_hash, "requireCanonical": True}


def canonical_call(wallet: str, block_hash: str) -> Call:
    """The wallet's balance at ``block_hash``, answered only while that block is canonical."""
    return ("eth_getBalance", [wallet, canonical(block_hash)])


def links_by_state(pool: RpcPool) -> bool:
    """Whether ranges read through ``pool`` may link to the cursor by state."""
    return pool not in _NO_LINKS_BY_STATE


def stop_links_by_state(pool: RpcPool, chain: str, reason: str) -> None:
    """The node refused the state link although the cursor's block is canonical (its header
    said so): read block ``first``'s header from now on through this pool."""
    if pool not in _NO_LINKS_BY_STATE:
        _NO_LINKS_BY_STATE.add(pool)
        log.warning("scan.link_by_header", chain=chain, reason=reason)


class Unproven(Exception):
    """The range's node did not confirm the head block it was read up to (``answer``)."""

    def __init__(self, number: int, answer: object) -> None:
        super().__init__(f"block {number} not confirmed by the range's node: {answer}")
        self.answer = answer


def lags(answer: object) -> bool:
    """Whether a refused read by block hash says the node lacks that block (it is behind, or
    the block left its chain) rather than refusing the form."""
    text = "" if answer is None else str(answer).lower()
    return answer is None or ("method not found" not in text and any(w in text for w in _LAGS))
