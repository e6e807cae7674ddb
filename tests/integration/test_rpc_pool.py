"""RpcPool against a real Anvil node, directly and through the fault-injecting proxy."""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs
from web3 import Web3

from tests.support.anvil import AnvilNode, free_port
from tests.support.rpcproxy import RpcProxy
from watcher.chain.rpc import RpcPool
from watcher.errors import RangeTooLarge, RpcError

pytestmark = pytest.mark.anvil

SECRET = "SECRETKEY123"


@pytest.fixture
def proxy(anvil: AnvilNode) -> Iterator[RpcProxy]:
    assert anvil.url is not None
    with RpcProxy(anvil.url) as p:
        yield p


def _no_sleep(_: float) -> None:
    """Backoff waits are skipped: these tests check behaviour, not timing."""


def test_dead_first_url_fails_over_to_second(anvil: AnvilNode) -> None:
    """With the first URL on a closed port, the answer comes from the second and
    rpc.failover is logged."""
    assert anvil.url is not None
    dead = f"http://127.0.0.1:{free_port()}"
    with capture_logs() as logs:
        pool = RpcPool([dead, anvil.url], chain="anvil", sleep=_no_sleep)
        assert int(pool.call("eth_blockNumber"), 16) == anvil.block_number()
    assert pool.current_url_redacted == anvil.url
    failovers = [e for e in logs if e["event"] == "rpc.failover"]
    assert failovers == [
        {
            "event": "rpc.failover",
            "log_level": "warning",
            "chain": "anvil",
            "from_url": dead,
            "to_url": anvil.url,
            "reason": failovers[0]["reason"],
        }
    ]
    assert "ConnectionError" in failovers[0]["reason"]
    pool.close()


def test_chain_id_mismatch_is_refused(anvil: AnvilNode) -> None:
    """A pool expecting Base (8453) refuses Anvil (31337), naming both chain ids."""
    assert anvil.url is not None
    pool = RpcPool([anvil.url], chain="base", expected_chain_id=8453, sleep=_no_sleep)
    with pytest.raises(RpcError) as caught:
        pool.call("eth_blockNumber")
    assert "31337" in str(caught.value)
    assert "8453" in str(caught.value)
    with pytest.raises(RpcError, match="31337"):
        pool.check_chain_id()
    pool.close()


def test_matching_chain_id_is_accepted(anvil: AnvilNode) -> None:
    """A pool expecting Anvil's chain id works and reports it."""
    assert anvil.url is not None
    pool = RpcPool([anvil.url], chain="anvil", expected_chain_id=31337)
    assert pool.check_chain_id() == 31337
    pool.close()


def test_key_in_url_never_reaches_logs_or_errors(proxy: RpcProxy) -> None:
    """An API key in the URL path/query appears in no log line, status field, error message
    or traceback, even when every URL fails."""
    dead = f"http://127.0.0.1:{free_port()}/v2/{SECRET}"
    keyed = f"{proxy.url}/v2/{SECRET}?apikey=QUERYSECRET77"
    with capture_logs() as logs:
        pool = RpcPool([dead, keyed], chain="base", max_attempts=5, sleep=_no_sleep)
        assert pool.call("eth_chainId") == "0x7a69"
        proxy.down = True
        with pytest.raises(RpcError) as caught:
            pool.call("eth_blockNumber")
    assert proxy.calls["eth_blockNumber"] == 3  # the key path reached the proxy and was ignored
    assert {e["event"] for e in logs} == {"rpc.retry", "rpc.failover", "rpc.error"}
    texts = [
        repr(logs),
        str(caught.value),
        "".join(traceback.format_exception(caught.value)),
        str(pool.last_error),
        pool.current_url_redacted,
        repr(pool),
    ]
    for text in texts:
        assert SECRET not in text
        assert "QUERYSECRET77" not in text
    assert f"{proxy.url}/<redacted>" in str(caught.value)
    assert "HTTP 503" in str(caught.value)
    pool.close()


def test_web3_through_the_pool(anvil: AnvilNode) -> None:
    """pool.web3() reads blocks, receipts and batches through the pool's own requests."""
    assert anvil.url is not None
    sender, receiver = anvil.accounts()[:2]
    tx_hash = anvil.web3().eth.send_transaction(
        {"from": sender, "to": receiver, "value": Web3.to_wei(1, "ether")}
    )
    anvil.web3().eth.wait_for_transaction_receipt(tx_hash, timeout=30)  # mined, not just sent
    pool = RpcPool([anvil.url], chain="anvil", expected_chain_id=31337)
    w3 = pool.web3()
    latest = w3.eth.get_block("latest")
    assert latest["number"] == anvil.block_number()
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    assert receipt["to"] == receiver
    with w3.batch_requests() as batch:
        batch.add(w3.eth.get_block(0))
        batch.add(w3.eth.get_block(1))
        first, second = batch.execute()
    assert (first["number"], second["number"]) == (0, 1)
    assert w3.is_connected()
    assert pool.counts_by_method["eth_getTransactionReceipt"] == 1
    pool.close()


def test_batch_of_blocks_comes_back_in_order(anvil: AnvilNode) -> None:
    """Twenty eth_getBlockByNumber in one batch (answered by Anvil in any order) come back in
    request order, in one POST."""
    assert anvil.url is not None
    anvil.mine(25)
    pool = RpcPool([anvil.url], chain="anvil")
    blocks = pool.batch([("eth_getBlockByNumber", [hex(n), False]) for n in range(1, 21)])
    assert [int(b["number"], 16) for b in blocks] == list(range(1, 21))
    assert pool.request_count == 1
    pool.close()


def test_range_refusal_through_proxy_raises_range_too_large(
    anvil: AnvilNode, proxy: RpcProxy
) -> None:
    """eth_getLogs over a range the provider refuses raises RangeTooLarge; a narrower one works."""
    anvil.mine(30)
    proxy.max_log_range = 10
    pool = RpcPool([proxy.url], chain="anvil", sleep=_no_sleep)
    with pytest.raises(RangeTooLarge):
        pool.call("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x1e"}])
    assert pool.call("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0xa"}]) == []
    wide, narrow = pool.batch(
        [
            ("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest"}]),
            ("eth_getLogs", [{"fromBlock": "0x16", "toBlock": "latest"}]),
        ],
        return_errors=True,
    )
    assert isinstance(wide, RangeTooLarge)
    assert narrow == []
    pool.close()
