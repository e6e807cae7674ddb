"""RpcPool's batch size learns a provider's limit: it shrinks on HTTP 413, a "batch too large"
error or a timeout, and grows back after successes. A tiny fake node behind the proxy; the
batch limit is a fault of this file's own proxy subclass (``BatchLimitProxy``), so
``tests/support/rpcproxy.py`` is untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.rpcproxy import RpcProxy
from tests.unit.test_rpc_pool import FakeNode
from watcher.chain.online import make_pool
from watcher.chain.rpc import RpcPool
from watcher.errors import RpcError
from watcher.settings import ChainSettings

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


class BatchLimitProxy(RpcProxy):
    """A proxy whose provider takes at most ``limit`` entries per batch: larger batches get
    ``mode`` = "413" (HTTP 413), "error" (one JSON-RPC error for the batch), "entries" (an
    error in each entry past the limit) or "stall" (no answer until the proxy stops)."""

    def __init__(self, upstream: Any, *, limit: int, mode: str) -> None:
        super().__init__(upstream)
        self.limit, self.mode = limit, mode
        self.sizes: list[int] = []  # entries per POST, as received

    def _serve(self, handler: Any, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        size = len(payload) if isinstance(payload, list) else 1
        self.sizes.append(size)
        if size <= self.limit or payload is None:
            super()._serve(handler, body)
            return
        message = f"batch too large: at most {self.limit} requests per batch"
        if self.mode == "413":
            handler.reply(413, b"request entity too large")
        elif self.mode == "error":
            handler.reply_json(
                200, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
            )
        elif self.mode == "entries":
            assert isinstance(payload, list)
            kept = payload[: self.limit]
            answers = [self._local_answer(e) for e in kept]
            answers += [
                {"jsonrpc": "2.0", "id": e.get("id"), "error": {"code": -32005, "message": message}}
                for e in payload[self.limit :]
            ]
            handler.reply_json(200, answers)
        else:  # stall: answer nothing until stopped (the client's timeout fires first)
            self._stopping.wait()
            handler.close_connection = True


def calls(n: int) -> list[tuple[str, list[Any]]]:
    return [("eth_getBlockByNumber", [hex(i), False]) for i in range(n)]


@pytest.fixture
def pools() -> Iterator[list[RpcPool]]:
    made: list[RpcPool] = []
    yield made
    for pool in made:
        pool.close()


def pool_for(proxy: RpcProxy, made: list[RpcPool], **kwargs: Any) -> RpcPool:
    pool = RpcPool([proxy.url], chain="testnet", sleep=lambda _s: None, **kwargs)
    made.append(pool)
    return pool


@pytest.mark.parametrize("mode", ["413", "error", "entries"])
def test_a_refused_batch_shrinks_and_every_answer_comes_back_in_order(
    mode: str, pools: list[RpcPool]
) -> None:
    """A provider that takes 10 entries per batch refuses a batch of 100 (413, one error, or
    errors past the limit): the pool halves its batch until accepted, answers every call in
    order without using up its attempts, and keeps the smaller size for later batches."""
    with BatchLimitProxy(FakeNode(), limit=10, mode=mode) as proxy:
        pool = pool_for(proxy, pools, max_batch=100, max_attempts=1)
        with capture_logs() as logs:
            blocks = pool.batch(calls(100))
        assert [b["number"] for b in blocks] == [hex(i) for i in range(100)]
        assert pool.max_batch <= 10
        assert any(e["event"] == "rpc.batch_shrunk" for e in logs)
        sent = len(proxy.sizes)
        pool.batch(calls(30))
        assert all(size <= 10 for size in proxy.sizes[sent:])  # no refused batch again


def test_a_batch_longer_than_max_batch_that_shrinks_midway_answers_every_call(
    pools: list[RpcPool],
) -> None:
    """A call list of several POSTs whose first POST is refused and shrunk still gets an
    answer for every call, in order (the rest is not cut to the new, smaller size)."""
    with BatchLimitProxy(FakeNode(), limit=8, mode="413") as proxy:
        pool = pool_for(proxy, pools, max_batch=64, max_attempts=1)
        blocks = pool.batch(calls(150))
        assert [b["number"] for b in blocks] == [hex(i) for i in range(150)]
        assert pool.max_batch <= 8


def test_a_batch_that_times_out_is_resent_in_halves(pools: list[RpcPool]) -> None:
    """A batch the provider cannot answer in time (too heavy for real blocks) is halved and
    resent; the calls are all answered."""
    with BatchLimitProxy(FakeNode(), limit=8, mode="stall") as proxy:
        pool = pool_for(proxy, pools, max_batch=32, timeout=0.3, max_attempts=4)
        blocks = pool.batch(calls(32))
        assert [b["number"] for b in blocks] == [hex(i) for i in range(32)]
        assert pool.max_batch <= 8
        assert proxy.sizes[:3] == [32, 16, 8]


def test_the_batch_size_grows_back_after_successes(pools: list[RpcPool]) -> None:
    """Once the provider takes big batches again, successes grow the size back to max_batch."""
    with BatchLimitProxy(FakeNode(), limit=10, mode="413") as proxy:
        pool = pool_for(proxy, pools, max_batch=64)
        pool.batch(calls(64))
        assert pool.max_batch <= 10
        proxy.limit = 1000
        for _ in range(40):
            pool.batch(calls(64))
        assert pool.max_batch == 64
        assert proxy.sizes[-1] == 64


def test_a_single_request_refused_as_too_large_fails_like_any_other(
    pools: list[RpcPool],
) -> None:
    """A refusal that halving cannot cure (one request) is a failed attempt: RpcError, no loop."""
    with BatchLimitProxy(FakeNode(), limit=0, mode="413") as proxy:
        pool = pool_for(proxy, pools, max_batch=4, max_attempts=3)
        with pytest.raises(RpcError, match="HTTP 413"):
            pool.batch(calls(4))
        assert proxy.sizes == [4, 2, 1, 1, 1]


def test_the_chain_setting_sets_the_pools_first_batch_size() -> None:
    """`max_batch` of a [[chains]] table is the batch size its pool starts with."""
    chain = ChainSettings(
        name="base", chain_id=8453, rpc_urls=("http://127.0.0.1:9",), receiving_address=WALLET,
        finality="finalized", poll_seconds=6, start_block=0, native_symbol="ETH", tokens=(),
        max_batch=25,
    )  # fmt: skip
    pool = make_pool(chain)
    try:
        assert pool.max_batch == 25
    finally:
        pool.close()
