"""The link of a range to the cursor without block ``first``'s header (EIP-1898).

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
"""

from __future__ import annotations

from weakref import WeakSet

import structlog

from watcher.chain.rpc import Call, RpcPool

log = structlog.get_logger("watcher.chain.sources")

_NO_LINKS_BY_STATE: WeakSet[RpcPool] = WeakSet()


def canonical_call(wallet: str, block_hash: str) -> Call:
    """The wallet's balance at ``block_hash``, answered only while that block is canonical."""
    return ("eth_getBalance", [wallet, {"blockHash": block_hash, "requireCanonical": True}])


def links_by_state(pool: RpcPool) -> bool:
    """Whether ranges read through ``pool`` may link to the cursor by state."""
    return pool not in _NO_LINKS_BY_STATE


def stop_links_by_state(pool: RpcPool, chain: str, reason: str) -> None:
    """The node refused the state link although the cursor's block is canonical (its header
    said so): read block ``first``'s header from now on through this pool."""
    if pool not in _NO_LINKS_BY_STATE:
        _NO_LINKS_BY_STATE.add(pool)
        log.warning("scan.link_by_header", chain=chain, reason=reason)
