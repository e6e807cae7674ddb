"""Which refusals of a read by block hash mean a node lacks the block (it lags: ask it that way
again) and which mean it refuses the form (``watcher.chain.links.lags``)."""

from __future__ import annotations

import pytest

from watcher.chain.links import canonical, canonical_call, lags
from watcher.chain.rpc_errors import RpcResponseError


def refusal(message: str, code: int = -32000) -> RpcResponseError:
    return RpcResponseError(message, method="eth_getBalance", code=code)


@pytest.mark.parametrize(
    "message",
    [
        "header for hash not found",  # geth
        "Resource not found",  # Anvil
        "Block 0xab could not be found",  # Nethermind
        "block not found",  # Erigon, reth
        "unknown block",
        "hash 0xab is not currently canonical",  # requireCanonical, another branch
    ],
)
def test_a_missing_block_is_lag(message: str) -> None:
    """A node's words for a block it does not have, or not on its chain, are lag."""
    assert lags(refusal(message))


def test_no_answer_is_lag() -> None:
    """An entry left out of the batch's answer is treated as lag, not as a refusal."""
    assert lags(None)


@pytest.mark.parametrize(
    "message",
    ["invalid argument 1: hex string without 0x prefix", "invalid params", "method not found"],
)
def test_a_refused_form_is_not_lag(message: str) -> None:
    """An invalid-params style refusal says the node does not take a block by hash."""
    assert not lags(refusal(message, -32602))


def test_the_canonical_form_is_eip_1898() -> None:
    """The block reference asks the node to answer only while that block is canonical."""
    assert canonical("0xab") == {"blockHash": "0xab", "requireCanonical": True}
    assert canonical_call("0xW", "0xab") == ("eth_getBalance", ["0xW", canonical("0xab")])
