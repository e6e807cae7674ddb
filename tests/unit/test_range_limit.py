"""Reading the widest block range a node's range refusal states (``stated_range_limit``)."""

from __future__ import annotations

import pytest

from watcher.chain.rpc_errors import stated_range_limit

PREFIX = "chain x: trace_filter refused by http://node/: "


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        ("block range too large, currently limited to 300 (JSON-RPC error -32602)", 300),
        ("block range exceeds maximum of 100 blocks", 100),
        ("exceed maximum block range: 50000", 50000),
        ("eth_getLogs is limited to a 10,000 range", 10000),
    ],
)
def test_a_refusal_stating_a_block_limit_gives_it(message: str, limit: int) -> None:
    """A refusal naming how many blocks the node allows gives that number."""
    assert stated_range_limit(PREFIX + message) == limit


@pytest.mark.parametrize(
    "message",
    [
        "range too large (JSON-RPC error -32005)",
        "query returned more than 10000 results",
        "Log response size exceeded. up to a 2K block range",
        "too many logs in block range, max 10000 logs",
    ],
)
def test_a_refusal_without_a_block_limit_gives_none(message: str) -> None:
    """No number, or a number about results or sizes, is not a block limit."""
    assert stated_range_limit(PREFIX + message) is None
