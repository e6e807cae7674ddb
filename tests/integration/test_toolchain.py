"""The test toolchain works: a real Anvil node, the compiled test contracts and the helpers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from web3.exceptions import ContractLogicError

from tests.support.anvil import AnvilNode, anvil_binary
from tests.support.contracts import deploy, erc20_transfer, send_eth, wait_receipt
from tests.support.rpcproxy import FULL_BLOCK, RpcProxy

pytestmark = pytest.mark.anvil

ONE_ETH = 10**18


def _port_is_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _assert_node_gone(node: AnvilNode, home: Path) -> None:
    assert node.process is not None
    assert node.process.poll() is not None, "anvil process still running"
    assert not home.exists(), f"temporary HOME {home} was not removed"
    assert node.port is not None and _port_is_closed(node.port)


def _trace_calls_to(node: AnvilNode, block: int, to: str) -> list[dict[str, Any]]:
    """Call traces in one block whose recipient is ``to`` (trace_filter wants hex numbers)."""
    traces = node.rpc(
        "trace_filter", {"fromBlock": hex(block), "toBlock": hex(block), "toAddress": [to]}
    )
    return [t for t in traces if t["type"] == "call"]


def test_token_transfer_emits_transfer_log_with_raw_amount(anvil: AnvilNode) -> None:
    """A 6-decimal TestToken mints and transfers, and the Transfer log carries the raw amount."""
    w3 = anvil.web3()
    owner, payer, wallet = anvil.accounts()[:3]
    token = deploy(w3, "TestToken", "Test USD", "TUSD", 6)
    assert token.functions.decimals().call() == 6
    assert token.functions.symbol().call() == "TUSD"

    wait_receipt(w3, token.functions.mint(payer, 10_000_000).transact({"from": owner}))
    tx_hash = erc20_transfer(w3, token, payer, wallet, 1_500_000)  # 1.5 TUSD

    assert tx_hash.startswith("0x") and len(tx_hash) == 66
    receipt = wait_receipt(w3, tx_hash)
    assert receipt["status"] == 1
    (event,) = token.events.Transfer().process_receipt(receipt)
    assert (event["args"]["from"], event["args"]["to"]) == (payer, wallet)
    assert event["args"]["value"] == 1_500_000
    assert token.functions.balanceOf(wallet).call() == 1_500_000
    assert token.functions.balanceOf(payer).call() == 8_500_000


def test_token_transfer_over_balance_reverts(anvil: AnvilNode) -> None:
    """An over-balance transfer fails gas estimation, and with explicit gas gets status 0."""
    w3 = anvil.web3()
    payer, wallet = anvil.accounts()[1:3]
    token = deploy(w3, "TestToken", "Test USD", "TUSD", 6)

    with pytest.raises(ContractLogicError, match="insufficient balance"):
        erc20_transfer(w3, token, payer, wallet, 1)
    receipt = wait_receipt(w3, erc20_transfer(w3, token, payer, wallet, 1, gas=100_000))
    assert receipt["status"] == 0
    assert receipt["logs"] == []


def test_forward_delivers_eth_by_internal_call_visible_in_trace_filter(anvil: AnvilNode) -> None:
    """Forwarder.forward pays the target by an internal call that trace_filter finds."""
    w3 = anvil.web3()
    payer = anvil.accounts()[1]
    target = w3.eth.account.create().address
    forwarder = deploy(w3, "Forwarder")

    tx = forwarder.functions.forward(target).transact({"from": payer, "value": ONE_ETH})
    receipt = wait_receipt(w3, tx)

    assert receipt["status"] == 1
    assert w3.eth.get_balance(target) == ONE_ETH
    (call,) = _trace_calls_to(anvil, receipt["blockNumber"], target)
    assert call["traceAddress"] == [0], "expected an internal (nested) call"
    assert call["action"]["from"].lower() == forwarder.address.lower()
    assert int(call["action"]["value"], 16) == ONE_ETH
    assert call["transactionHash"] == receipt["transactionHash"].to_0x_hex()


def test_forward_many_makes_several_internal_transfers_in_one_tx(anvil: AnvilNode) -> None:
    """Forwarder.forwardMany pays several targets in a single transaction."""
    w3 = anvil.web3()
    payer = anvil.accounts()[1]
    a, b = (w3.eth.account.create().address for _ in range(2))
    forwarder = deploy(w3, "Forwarder")

    tx = forwarder.functions.forwardMany([a, b, a], [1, 20, 300]).transact(
        {"from": payer, "value": 321}
    )
    receipt = wait_receipt(w3, tx)

    assert receipt["status"] == 1
    assert (w3.eth.get_balance(a), w3.eth.get_balance(b)) == (301, 20)
    values = [
        int(c["action"]["value"], 16) for c in _trace_calls_to(anvil, receipt["blockNumber"], a)
    ]
    assert sorted(values) == [1, 300]


def test_forward_then_revert_leaves_target_balance_unchanged(anvil: AnvilNode) -> None:
    """Forwarder.forwardThenRevert is mined with status 0 and the target receives nothing."""
    w3 = anvil.web3()
    payer = anvil.accounts()[1]
    target = w3.eth.account.create().address
    forwarder = deploy(w3, "Forwarder")

    tx = forwarder.functions.forwardThenRevert(target).transact(
        {"from": payer, "value": ONE_ETH, "gas": 200_000}
    )
    receipt = wait_receipt(w3, tx)

    assert receipt["status"] == 0
    assert w3.eth.get_balance(target) == 0
    assert w3.eth.get_balance(forwarder.address) == 0


def test_closed_toggle_receiver_makes_top_level_eth_transfer_revert(anvil: AnvilNode) -> None:
    """A plain ETH transfer to a closed ToggleReceiver is mined with status 0; open, it succeeds."""
    w3 = anvil.web3()
    owner, payer = anvil.accounts()[:2]
    receiver = deploy(w3, "ToggleReceiver")

    assert wait_receipt(w3, send_eth(w3, payer, receiver.address, 5))["status"] == 1
    wait_receipt(w3, receiver.functions.setOpen(False).transact({"from": owner}))
    closed = wait_receipt(w3, send_eth(w3, payer, receiver.address, 7, gas=50_000))

    assert closed["status"] == 0
    assert closed["to"] == receiver.address
    assert w3.eth.get_balance(receiver.address) == 5


def test_fast_finality_tags_trail_latest_by_one_and_two(anvil_fast: AnvilNode) -> None:
    """With one-slot epochs, safe is latest-1 and finalized is latest-2."""
    anvil_fast.mine(10)

    latest = anvil_fast.block_number()
    assert latest == 10
    assert int(anvil_fast.block("safe")["number"], 16) == latest - 1
    assert int(anvil_fast.block("finalized")["number"], 16) == latest - 2
    assert anvil_fast.web3().eth.get_block("finalized")["number"] == latest - 2


def test_default_finality_tags_trail_latest_by_32_and_64(anvil: AnvilNode) -> None:
    """By default safe is latest-32 and finalized is latest-64."""
    anvil.mine(100)

    assert int(anvil.block("safe")["number"], 16) == 100 - 32
    assert int(anvil.block("finalized")["number"], 16) == 100 - 64


def test_helpers_work_without_automine() -> None:
    """With --no-mining, wait=False helpers return at once and the transactions land on mine()."""
    with AnvilNode(no_mining=True) as node:
        w3 = node.web3()
        payer, wallet = node.accounts()[1:3]
        token = deploy(w3, "TestToken", "Test USD", "TUSD", 6, wait=False)
        eth_tx = send_eth(w3, payer, wallet, 42, wait=False)
        assert w3.eth.get_code(token.address) == b""
        assert node.block_number() == 0

        node.mine()

        assert node.block_number() == 1
        assert len(w3.eth.get_code(token.address)) > 0
        assert wait_receipt(w3, eth_tx)["status"] == 1


@pytest.fixture
def nodes_must_be_gone_afterwards() -> Iterator[list[AnvilNode]]:
    """Requested before ``anvil``, so its teardown runs after the ``anvil`` fixture's."""
    nodes: list[AnvilNode] = []
    yield nodes
    assert nodes, "the test did not register its node"
    for node in nodes:
        assert node.home is not None
        _assert_node_gone(node, node.home)


def test_anvil_fixture_stops_the_node(
    nodes_must_be_gone_afterwards: list[AnvilNode], anvil: AnvilNode
) -> None:
    """The anvil fixture's node runs during the test and its process is gone after teardown."""
    assert anvil.running and anvil.chain_id == 31337
    assert anvil.home is not None and anvil.home.is_dir()
    assert not _port_is_closed(anvil.port or 0)
    nodes_must_be_gone_afterwards.append(anvil)


def test_context_manager_stops_process_and_removes_home() -> None:
    """Leaving the AnvilNode context ends the process, frees the port and deletes the temp HOME."""
    with AnvilNode() as node:
        assert node.running
        home = node.home
        assert home is not None and (home / "anvil.log").exists()
    _assert_node_gone(node, home)
    assert not node.running


def test_missing_binary_is_an_error_not_a_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing anvil binary raises RuntimeError naming `make tools`."""
    monkeypatch.setenv("ANVIL_BIN", str(tmp_path / "no-anvil"))
    with pytest.raises(RuntimeError, match="make tools"):
        anvil_binary()
    with pytest.raises(RuntimeError, match="make tools"):
        AnvilNode().start()


@pytest.mark.anvil
def test_raw_counting_proxy_passes_answers_through_and_counts_them(anvil: AnvilNode) -> None:
    """RpcProxy(raw=True) answers exactly the node's bytes and counts POSTs, entries by method,
    full blocks and the bytes it answered (what bench/scan.py's cost section measures)."""
    assert anvil.url is not None
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_getBlockByNumber", "params": ["0x0", True]},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBlockByNumber", "params": ["0x0", False]},
    ]
    direct = requests.post(anvil.url, json=batch, timeout=10).content
    with RpcProxy(anvil.url, raw=True) as proxy:
        proxied = requests.post(proxy.url, json=batch, timeout=10).content
        assert proxied == direct
        assert proxy.posts == 1
        assert proxy.calls == {"eth_blockNumber": 1, "eth_getBlockByNumber": 2, FULL_BLOCK: 1}
        assert proxy.bytes_sent == len(direct)
