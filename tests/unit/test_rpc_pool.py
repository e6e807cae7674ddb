"""RpcPool against a tiny fake node behind the fault-injecting proxy (no Anvil needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.rpcproxy import RpcFault, RpcProxy
from watcher.chain.rpc import RpcPool, RpcResponseError
from watcher.errors import RangeTooLarge, RpcError


class FakeNode:
    """Answers a handful of methods like a node at block 100 would."""

    def __init__(self, chain_id: int = 31337) -> None:
        self.chain_id = chain_id
        self.head = 100
        self.faults: dict[str, RpcFault] = {}

    def __call__(self, method: str, params: list[Any]) -> Any:
        if method in self.faults:
            raise self.faults[method]
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "eth_blockNumber":
            return hex(self.head)
        if method == "eth_getBlockByNumber":
            return {"number": params[0], "transactions": []}
        if method == "eth_getLogs":
            return []
        if method == "eth_call":
            raise RpcFault(3, "execution reverted", "0x")
        raise RpcFault(-32601, f"the method {method} does not exist")


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def proxy(node: FakeNode) -> Iterator[RpcProxy]:
    with RpcProxy(node, reverse_batches=True) as p:
        yield p


@pytest.fixture
def sleeps() -> list[float]:
    return []


PoolFactory = Callable[..., RpcPool]


@pytest.fixture
def make_pool(proxy: RpcProxy, sleeps: list[float]) -> Iterator[PoolFactory]:
    pools: list[RpcPool] = []

    def make(*urls: str, **kwargs: Any) -> RpcPool:
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("chain", "testnet")
        pool = RpcPool(urls or [proxy.url], **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def test_http_500_is_retried_then_succeeds(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """Two HTTP 500 answers are retried with backoff and the third attempt's result returned."""
    pool = make_pool()
    proxy.fail_next(2, status=500)
    assert pool.call("eth_blockNumber") == "0x64"
    assert proxy.posts == 3
    assert pool.request_count == 3
    assert len(sleeps) == 2


def test_429_retry_after_is_honoured(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """An HTTP 429 with Retry-After: 3 makes the pool wait 3 seconds before asking again."""
    pool = make_pool(backoff_base=0.01)
    proxy.fail_next(1, status=429, retry_after=3)
    assert pool.call("eth_blockNumber") == "0x64"
    assert sleeps == [pytest.approx(3.0)]


def test_retry_after_is_capped_at_backoff_max(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """A Retry-After longer than backoff_max is cut down to backoff_max."""
    pool = make_pool(backoff_max=5.0)
    proxy.fail_next(1, status=429, retry_after=120)
    pool.call("eth_blockNumber")
    assert sleeps == [5.0]


def test_backoff_grows_exponentially_with_jitter(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """Successive waits lie in [d/2, d] for d = base, 2*base, 4*base."""
    pool = make_pool(backoff_base=1.0, backoff_max=100.0)
    proxy.fail_next(3, status=503)
    pool.call("eth_blockNumber")
    assert len(sleeps) == 3
    for i, delay in enumerate(sleeps):
        assert 2**i / 2 <= delay <= 2**i


def test_deterministic_jsonrpc_error_is_not_retried(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """A revert raises RpcResponseError at once, with its code and data, after one POST."""
    pool = make_pool()
    with pytest.raises(RpcResponseError, match="execution reverted") as caught:
        pool.call("eth_call", [{"to": "0x" + "11" * 20, "data": "0x"}, "latest"])
    assert caught.value.code == 3
    assert caught.value.data == "0x"
    assert caught.value.method == "eth_call"
    assert proxy.posts == 1
    assert sleeps == []


def test_busy_jsonrpc_error_is_retried(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """A JSON-RPC "rate limit exceeded" answer is retried like an HTTP 429."""
    pool = make_pool()
    proxy.fail_next_rpc(1, code=-32005, message="project ID request rate exceeded")
    assert pool.call("eth_blockNumber") == "0x64"
    assert proxy.posts == 2
    assert len(sleeps) == 1


def test_busy_entries_of_a_batch_are_asked_again() -> None:
    """Only the rate-limited entries of a batch are sent again; the others keep their answer."""
    node = FakeNode()
    busy = {"n": 1}

    def flaky(method: str, params: list[Any]) -> Any:
        if method == "eth_blockNumber" and busy["n"] > 0:
            busy["n"] -= 1
            raise RpcFault(429, "Too many requests, try again later")
        return node(method, params)

    with RpcProxy(flaky) as proxy:
        pool = RpcPool([proxy.url], chain="testnet", sleep=lambda _: None)
        result = pool.batch([("eth_chainId", []), ("eth_blockNumber", [])])
        assert result == ["0x7a69", "0x64"]
        assert proxy.calls == {"eth_chainId": 1, "eth_blockNumber": 2}
        pool.close()


def test_gives_up_after_max_attempts(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """After max_attempts failures RpcError names the chain, the URL and the last reason."""
    pool = make_pool(max_attempts=3)
    proxy.fail_next(10, status=502)
    with capture_logs() as logs, pytest.raises(RpcError) as caught:
        pool.call("eth_blockNumber")
    message = str(caught.value)
    assert "testnet" in message
    assert proxy.url in message
    assert "HTTP 502" in message
    assert caught.value.__cause__ is not None
    assert proxy.posts == 3
    assert [e["event"] for e in logs] == ["rpc.retry", "rpc.retry", "rpc.error"]
    assert pool.last_error is not None and "HTTP 502" in pool.last_error


def test_timeout_counts_as_failure(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """A node that does not answer within the timeout fails the attempt with a clear reason."""
    pool = make_pool(timeout=0.05, max_attempts=2)
    proxy.stall_seconds = 5.0
    with pytest.raises(RpcError, match=r"no answer within 0\.05 s"):
        pool.call("eth_blockNumber")


def test_dropped_connection_counts_as_failure(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """A node that closes the connection without answering fails the attempt."""
    pool = make_pool(max_attempts=2)
    proxy.down = True
    proxy.down_mode = "drop"
    with pytest.raises(RpcError, match="ConnectionError"):
        pool.call("eth_blockNumber")
    assert proxy.posts == 2


def test_batch_results_come_back_in_request_order(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """Batch answers sent in reverse order are matched to their requests by id."""
    pool = make_pool()
    calls = [("eth_getBlockByNumber", [hex(n), False]) for n in range(20)]
    blocks = pool.batch(calls)
    assert [b["number"] for b in blocks] == [hex(n) for n in range(20)]
    assert proxy.posts == 1
    assert pool.counts_by_method == {"eth_getBlockByNumber": 20}


def test_large_batches_are_split_into_chunks(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """A batch larger than max_batch goes out in several POSTs and keeps its order."""
    pool = make_pool(max_batch=10)
    calls = [("eth_getBlockByNumber", [hex(n), False]) for n in range(25)]
    blocks = pool.batch(calls)
    assert [b["number"] for b in blocks] == [hex(n) for n in range(25)]
    assert proxy.posts == 3
    assert pool.batch([]) == []


def test_batch_errors_raise_or_fill_their_slot(make_pool: PoolFactory) -> None:
    """A failing entry raises by default, or with return_errors sits in its slot as an error."""
    pool = make_pool()
    calls = [("eth_blockNumber", []), ("eth_call", [{}, "latest"]), ("eth_chainId", [])]
    with pytest.raises(RpcResponseError):
        pool.batch(calls)
    first, middle, last = pool.batch(calls, return_errors=True)
    assert (first, last) == ("0x64", "0x7a69")
    assert isinstance(middle, RpcResponseError)


def test_proxy_range_refusal_raises_range_too_large(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """An eth_getLogs range the provider refuses raises RangeTooLarge, single or batched."""
    pool = make_pool()
    proxy.max_log_range = 10
    wide = {"fromBlock": "0x0", "toBlock": "0x63"}
    narrow = {"fromBlock": "0x0", "toBlock": "0x9"}
    with pytest.raises(RangeTooLarge, match="block range too large"):
        pool.call("eth_getLogs", [wide])
    assert pool.call("eth_getLogs", [narrow]) == []
    results = pool.batch([("eth_getLogs", [narrow]), ("eth_getLogs", [wide])], return_errors=True)
    assert results[0] == []
    assert isinstance(results[1], RangeTooLarge)
    assert sleeps == []


ALCHEMY_RANGE_MESSAGE = (
    "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range"
    " and no limit on the response size"
)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (-32005, "query returned more than 10000 results"),
        (-32602, ALCHEMY_RANGE_MESSAGE),
        (-32600, "block range is too wide"),
        (-32000, "eth_getLogs is limited to a 10,000 range"),
    ],
)
def test_provider_range_messages_are_recognised(
    make_pool: PoolFactory, node: FakeNode, code: int, message: str
) -> None:
    """Providers' various ways of refusing a log range all raise RangeTooLarge."""
    node.faults["eth_getLogs"] = RpcFault(code, message)
    with pytest.raises(RangeTooLarge):
        make_pool().call("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "0x1"}])


def test_range_words_outside_log_queries_are_ordinary_errors(
    make_pool: PoolFactory, node: FakeNode
) -> None:
    """ "exceeds" in an eth_call error is a plain RpcResponseError, not RangeTooLarge."""
    node.faults["eth_call"] = RpcFault(-32000, "gas required exceeds allowance")
    with pytest.raises(RpcResponseError) as caught:
        make_pool().call("eth_call", [{}, "latest"])
    assert not isinstance(caught.value, RangeTooLarge)


def test_failover_moves_to_next_url_and_sticks(sleeps: list[float]) -> None:
    """A failing first URL hands over to the second at once, which later calls keep using."""
    node = FakeNode()
    with RpcProxy(node) as first, RpcProxy(node) as second:
        pool = RpcPool([first.url, second.url], chain="testnet", sleep=sleeps.append)
        first.fail_next(1, status=500)
        with capture_logs() as logs:
            assert pool.call("eth_blockNumber") == "0x64"
        assert pool.call("eth_blockNumber") == "0x64"
        assert (first.posts, second.posts) == (1, 2)
        assert pool.current_url_redacted == second.url
        assert sleeps == []
        failover = [e for e in logs if e["event"] == "rpc.failover"]
        assert failover[0]["from_url"] == first.url
        assert failover[0]["to_url"] == second.url
        pool.close()


def test_chain_id_is_checked_once_per_url(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """With expected_chain_id set, the first use of a URL asks eth_chainId, later ones do not."""
    pool = make_pool(expected_chain_id=31337)
    pool.call("eth_blockNumber")
    pool.call("eth_blockNumber")
    assert proxy.calls == {"eth_chainId": 1, "eth_blockNumber": 2}
    assert pool.check_chain_id() == 31337


def test_chain_id_mismatch_is_refused(make_pool: PoolFactory, node: FakeNode) -> None:
    """A URL on another chain is refused with both chain ids in the message, not retried."""
    node.chain_id = 1
    pool = make_pool(expected_chain_id=8453)
    with pytest.raises(RpcError, match="chain id 1, but the configuration expects chain id 8453"):
        pool.call("eth_blockNumber")


def test_status_attributes_track_success_and_failure(
    make_pool: PoolFactory, proxy: RpcProxy
) -> None:
    """last_ok_at is set by a success and last_error keeps the last failure's reason."""
    pool = make_pool()
    assert pool.last_ok_at is None and pool.last_error is None
    proxy.fail_next(1, status=503)
    pool.call("eth_blockNumber")
    assert pool.last_ok_at is not None and pool.last_ok_at.tzinfo is not None
    assert pool.last_error == f"{proxy.url}: HTTP 503"


def test_malformed_json_answer_is_retried(
    make_pool: PoolFactory, proxy: RpcProxy, sleeps: list[float]
) -> None:
    """A truncated JSON body (HTTP 200) fails the attempt and the next one is answered."""
    pool = make_pool()
    proxy.malformed_next(1)
    assert pool.call("eth_blockNumber") == "0x64"
    assert proxy.posts == 2 and len(sleeps) == 1
    assert pool.last_error is not None and "not JSON" in pool.last_error


def test_missing_batch_entry_is_asked_again_alone(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """A batch answer without one of its entries: only that entry is sent again."""
    pool = make_pool()
    proxy.drop_entry_next(1)
    calls = [("eth_getBlockByNumber", [hex(n), False]) for n in range(5)]
    assert [b["number"] for b in pool.batch(calls)] == [hex(n) for n in range(5)]
    assert proxy.posts == 2 and proxy.calls["eth_getBlockByNumber"] == 6


def test_one_stall_past_the_timeout_is_retried(make_pool: PoolFactory, proxy: RpcProxy) -> None:
    """One answer held past the timeout is a failed attempt; the retry is answered."""
    pool = make_pool(timeout=0.2)
    proxy.stall_next(1, 1.0)
    assert pool.call("eth_blockNumber") == "0x64"
    assert proxy.posts == 2


def test_fail_over_and_witness_use_the_other_url(sleeps: list[float]) -> None:
    """fail_over moves later requests to the next URL; witness() asks only the URLs other
    than the current one; with a single URL there is neither."""
    with RpcProxy(FakeNode()) as first, RpcProxy(FakeNode()) as second:
        pool = RpcPool([first.url, second.url], chain="testnet", sleep=sleeps.append)
        witness = pool.witness()
        assert witness is not None and witness.urls_redacted == (second.url,)
        witness.call("eth_blockNumber")
        assert (first.posts, second.posts) == (0, 1)
        assert pool.fail_over("behind the cursor") is True
        pool.call("eth_blockNumber")
        assert (first.posts, second.posts) == (0, 2)
        other = pool.witness()
        assert other is not None and other.urls_redacted == (first.url,)
        pool.close()
        alone = RpcPool([first.url], chain="testnet")
        assert alone.fail_over("x") is False and alone.witness() is None
        alone.close()
