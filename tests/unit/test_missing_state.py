"""Which node answers mean "no state at that old block" (read the range in full instead)."""

from __future__ import annotations

import pytest

from watcher.chain.native import missing_state, point
from watcher.chain.rpc import RpcResponseError
from watcher.errors import RpcError


def _refusal(message: str, code: int = -32000) -> RpcResponseError:
    return RpcResponseError(
        f"chain x: eth_getBalance refused by https://node: {message} (JSON-RPC error {code})",
        method="eth_getBalance", code=code,
    )  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        "missing trie node 3f1e... (path ) state 0xabc is not available",  # geth
        "header not found",  # geth, erigon on pruned blocks
        "BlockOutOfRangeError: block height is 30 but requested was 1",  # anvil --prune-history
        "historical state not available in path scheme yet",  # geth path scheme
        "required historical state unavailable (reexec=128)",
    ],
)
def test_pruned_state_answers_are_recognised(message: str) -> None:
    """The refusals of pruned nodes (geth, erigon, Anvil) say the old state is missing."""
    assert missing_state(_refusal(message)) is not None
    assert point(_refusal(message), "0x1") is None


def test_other_refusals_are_not_missing_state_and_are_raised() -> None:
    """A refusal that is not about old state is no fallback: it is raised as it is."""
    other = _refusal("invalid argument 0: hex string without 0x prefix", -32602)
    assert missing_state(other) is None
    with pytest.raises(RpcError, match="hex string"):
        point(other, "0x1")
    assert point("0x10", "0x2") == (16, 2)
