"""What the chain reader asks a real Anvil node for: no full blocks with traces, only the blocks
balance bisection points at without them, full blocks where the node lacks old state, and the
header link still catching a reorg inside a range read by balances."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from web3 import Web3

from tests.support.anvil import AnvilNode
from tests.support.contracts import deploy, erc20_transfer, send_eth, wait_receipt
from tests.support.rpcproxy import FULL_BLOCK, RpcProxy
from tests.support.scripted_node import ScriptedNode
from watcher.chain.rpc import RpcPool
from watcher.ledger.scanning import ScanReport, scan_chain
from watcher.settings import ChainSettings, TokenSettings
from watcher.store.db import make_engine, migrate, read_session, transaction
from watcher.store.tables import ChainState, OutboxEvent, Retainer, Transfer

pytestmark = pytest.mark.anvil

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
OTHER = Web3.to_checksum_address("0x00000000000000000000000000000000c0ffee01")
ETH = 10**18


@dataclass
class Reader:
    """A real Anvil node behind a counting proxy, a real SQLite file, one wallet."""

    node: AnvilNode
    proxy: RpcProxy
    engine: Engine
    w3: Web3
    accounts: list[str]
    tokens: list[TokenSettings] = field(default_factory=list)
    pools: list[RpcPool] = field(default_factory=list)

    @property
    def payer(self) -> str:
        return self.accounts[1]

    @property
    def wallet(self) -> str:
        return self.accounts[3]  # a funded dev account, so the wallet can spend

    def chain(self, **changes: Any) -> ChainSettings:
        base = ChainSettings(
            name="anvil", chain_id=31337, rpc_urls=(self.proxy.url,),
            receiving_address=self.wallet, finality="finalized", poll_seconds=1,
            native_symbol="ETH", tokens=tuple(self.tokens), internal="off", balance_guard=True,
        )  # fmt: skip
        return replace(base, **changes)

    def scan(self, chain: ChainSettings, **kw: Any) -> ScanReport:
        """One poll, through the one pool of this reader (as a daemon keeps it)."""
        if not self.pools:
            pool = RpcPool(
                chain.rpc_urls, chain=chain.name, expected_chain_id=chain.chain_id, timeout=5,
                backoff_base=0.01, sleep=lambda _s: None,
            )  # fmt: skip
            self.pools.append(pool)
        return scan_chain(chain, self.pools[0], self.engine, lambda: NOW, **kw)

    def transfers(self) -> list[Transfer]:
        with read_session(self.engine) as session:
            return list(session.exec(select(Transfer).order_by(col(Transfer.id))).all())

    def events(self, type_: str) -> list[dict[str, Any]]:
        with read_session(self.engine) as session:
            rows = session.exec(select(OutboxEvent).where(OutboxEvent.type == type_)).all()
        return [json.loads(r.body)["data"] for r in rows]

    def state(self) -> ChainState:
        with read_session(self.engine) as session:
            state = session.get(ChainState, "anvil")
        assert state is not None
        return state

    def block_of(self, tx_hash: str) -> int:
        return int(wait_receipt(self.w3, tx_hash)["blockNumber"])

    def one_block(self, *sends: tuple[str, str, int]) -> list[str]:
        """Mine ``(sender, to, wei)`` transfers together in one block; their tx hashes."""
        self.node.rpc("evm_setAutomine", False)
        try:
            hashes = [send_eth(self.w3, a, b, wei, wait=False) for a, b, wei in sends]
            self.node.mine(1)
        finally:
            self.node.rpc("evm_setAutomine", True)
        for tx in hashes:
            wait_receipt(self.w3, tx)
        return hashes


def _reader(node: AnvilNode, tmp_path: Path) -> Iterator[Reader]:
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    migrate(engine)
    assert node.url is not None
    with RpcProxy(node.url) as proxy:
        r = Reader(node, proxy, engine, node.web3(), node.accounts())
        yield r
        for pool in r.pools:
            pool.close()
    engine.dispose()


@pytest.fixture
def r(anvil: AnvilNode, tmp_path: Path) -> Iterator[Reader]:
    """A reader on a node that keeps every old state (an archive node)."""
    yield from _reader(anvil, tmp_path)


@pytest.fixture
def pruned(tmp_path: Path) -> Iterator[Reader]:
    """A reader on a node that keeps the state of its last 32 blocks only."""
    with AnvilNode(extra_args=["--prune-history", "32"]) as node:
        yield from _reader(node, tmp_path)


# --- without traces: balance bisection ------------------------------------------------------


def test_bisection_reads_only_the_blocks_where_balance_or_nonce_moved(r: Reader) -> None:
    """Several inflows and the wallet's own spending in one range: every inflow found, the guard
    quiet, and only the blocks where the balance or nonce changed read in full."""
    r.node.mine(40)
    paid = [send_eth(r.w3, r.payer, r.wallet, 10**17)]
    r.node.mine(7)
    spend = send_eth(r.w3, r.wallet, OTHER, 3 * 10**16)  # value + gas out
    r.node.mine(12)
    inflow, outflow = r.one_block((r.payer, r.wallet, 5), (r.wallet, OTHER, 10**15))  # at once
    paid.append(inflow)
    r.node.mine(3)
    self_pay = send_eth(r.w3, r.wallet, r.wallet, 1)  # gas only
    r.node.mine(20)
    paid.append(send_eth(r.w3, r.payer, r.wallet, 123456789))
    paid.append(send_eth(r.w3, r.payer, r.wallet, 42))  # the next block
    r.node.mine(30)
    head = r.node.block_number()
    changed = {r.block_of(t) for t in [*paid, spend, outflow, self_pay]}
    assert len(changed) == 6 and r.block_of(inflow) == r.block_of(outflow)

    report = r.scan(r.chain())

    assert report.cursor_after == head and report.unexplained == 0
    assert sorted(t.tx_hash for t in r.transfers()) == sorted(paid)
    assert {t.kind for t in r.transfers()} == {"native"}
    assert r.state().balance == r.w3.eth.get_balance(r.wallet)
    assert r.proxy.calls[FULL_BLOCK] == len(changed)  # not the other ~110 blocks


def test_quiet_range_without_traces_costs_one_round_trip(r: Reader) -> None:
    """A range in which the wallet's balance and nonce did not move needs one batch: no
    bisection, no full block, its end balance only (its start is the last poll's end), asked
    by the head's hash (the head's header is not read again), and the balance at the cursor's
    block by hash (the link to the cursor, EIP-1898)."""
    send_eth(r.w3, r.payer, r.wallet, 10**17)
    r.node.mine(100)
    chain = r.chain()
    r.scan(chain)  # the payment is final at once: nothing waits for finality afterwards
    r.node.mine(500)
    posts, calls = r.proxy.posts, r.proxy.calls.copy()

    report = r.scan(chain)

    assert report.found == 0 and report.cursor_after == r.node.block_number()
    assert r.proxy.posts - posts == 2  # the head, then the one chunk's batch
    assert r.proxy.calls[FULL_BLOCK] == calls[FULL_BLOCK]
    assert r.proxy.calls["eth_getBalance"] - calls["eth_getBalance"] == 2  # end, state link
    assert r.proxy.calls["eth_getBlockByNumber"] - calls["eth_getBlockByNumber"] == 1  # head


def test_node_without_old_state_reads_that_range_in_full_only(pruned: Reader) -> None:
    """Where the node lacks the old state the range is read in full (one log line saying so);
    the next range, whose ends it still has, is bisected again."""
    r = pruned
    old = send_eth(r.w3, r.payer, r.wallet, 10**16)
    r.node.mine(60)
    old_range_end = r.node.block_number()  # block 1's state is long gone
    with structlog.testing.capture_logs() as logs:
        first = r.scan(r.chain(), to_block=old_range_end)
    full_before = r.proxy.calls[FULL_BLOCK]
    new = send_eth(r.w3, r.payer, r.wallet, 10**15)
    r.node.mine(5)
    with structlog.testing.capture_logs() as later:
        second = r.scan(r.chain())

    assert (first.found, second.found) == (1, 1)
    assert {t.tx_hash for t in r.transfers()} == {old, new}
    fallback = [e for e in logs if e["event"] == "scan.no_old_state"]
    assert len(fallback) == 1 and (fallback[0]["first"], fallback[0]["last"]) == (0, old_range_end)
    assert "BlockOutOfRange" in fallback[0]["reason"]
    assert full_before == old_range_end  # blocks 1..end (genesis holds nothing)
    assert [e for e in later if e["event"] == "scan.no_old_state"] == []
    assert r.proxy.calls[FULL_BLOCK] - full_before == 1  # only the block of the new payment


def test_reorg_inside_a_range_read_by_balances_is_found_by_the_header_link(r: Reader) -> None:
    """A reorg replacing a payment inside a range read by balances is found at the next poll
    by the parent link: the old payment orphaned, the new one found, no finality violation."""
    r.node.mine(20)
    old = send_eth(r.w3, r.payer, r.wallet, 1000)
    r.node.mine(10)
    r.scan(r.chain())
    assert [t.status for t in r.transfers()] == ["seen"]

    replacement = ({"from": r.payer, "to": r.wallet, "value": hex(777)}, 3)
    r.node.reorg(11, [replacement])  # from the payment's block on; new payment 3 blocks later
    r.node.mine(2)
    report = r.scan(r.chain())

    by_tx = {t.tx_hash: t for t in r.transfers()}
    assert by_tx[old].status == "orphaned"
    (new,) = [t for t in by_tx.values() if t.tx_hash != old]
    assert (new.status, new.amount) == ("seen", 777)
    assert report.reorgs == 1 and report.orphaned == 1 and report.found == 1
    assert r.events("watcher.finality_violation") == []
    assert r.state().cursor_hash == r.node.block("latest")["hash"]


def test_balance_guard_without_traces_still_locates_an_internal_payment(r: Reader) -> None:
    """Bisection reads the block of an internal payment in full, finds no top-level transfer
    in it, and the guard raises watcher.unexplained_balance at that block."""
    forwarder = deploy(r.w3, "Forwarder")
    r.node.mine(30)
    tx = forwarder.functions.forward(r.wallet).transact({"from": r.payer, "value": 4321})
    block = r.block_of(tx.to_0x_hex())
    r.node.mine(30)

    report = r.scan(r.chain())

    assert r.transfers() == [] and report.unexplained == 1
    (event,) = r.events("watcher.unexplained_balance")
    assert event["block"] == block and event["actual_growth"] == "4321"


def test_the_guards_rescan_and_locate_do_not_bisect_the_same_range_again(r: Reader) -> None:
    """Without traces, a chunk holding an internal payment is bisected once: the balance
    guard's rescan takes the first read's bisection points and locating the jump asks no
    balance (only the range ends are asked twice, by the rescan)."""
    forwarder = deploy(r.w3, "Forwarder")
    r.node.mine(30)
    tx = forwarder.functions.forward(r.wallet).transact({"from": r.payer, "value": 4321})
    block = r.block_of(tx.to_0x_hex())
    r.node.mine(30)
    before = r.proxy.asked.copy()

    report = r.scan(r.chain())

    assert report.unexplained == 1 and r.events("watcher.unexplained_balance")[0]["block"] == block
    balances = {k: n for k, n in (r.proxy.asked - before).items() if k[0] == "eth_getBalance"}
    twice = sorted(params for (_, params), n in balances.items() if n > 1)
    assert len(twice) <= 2, twice  # first - 1 and last, read again by the rescan
    assert all(n <= 2 for n in balances.values())


# --- with traces: no full blocks ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["trace_filter", "debug_trace"])
def test_traces_find_every_native_inflow_without_full_blocks(r: Reader, mode: str) -> None:
    """Top-level, internal and token payments, and the wallet's spending, are read from traces,
    logs and receipts: not one full block; the guard stays quiet."""
    usdc = deploy(r.w3, "TestToken", "Test USDC", "USDC", 6)
    wait_receipt(r.w3, usdc.functions.mint(r.payer, 10**12).transact({"from": r.accounts[0]}))
    r.tokens.append(TokenSettings("USDC", usdc.address, 6))
    forwarder = deploy(r.w3, "Forwarder")
    r.node.mine(10)
    top = send_eth(r.w3, r.payer, r.wallet, 10**17)
    fwd = forwarder.functions.forward(r.wallet).transact({"from": r.payer, "value": 10**16})
    token = erc20_transfer(r.w3, usdc, r.payer, r.wallet, 5)
    send_eth(r.w3, r.wallet, OTHER, 3 * 10**16)
    r.node.mine(10)

    report = r.scan(r.chain(internal=mode))

    got = sorted((t.kind, t.tx_hash) for t in r.transfers())
    assert got == sorted([("native", top), ("internal", fwd.to_0x_hex()), ("erc20", token)])
    assert report.unexplained == 0
    assert r.state().balance == r.w3.eth.get_balance(r.wallet)
    assert r.proxy.calls[FULL_BLOCK] == 0


# --- no native reading where nothing native matters -----------------------------------------


def _native_retainer(r: Reader) -> None:
    with transaction(r.engine) as session:
        session.add(
            Retainer(
                client="Acme",
                chain="anvil",
                chain_id=31337,
                asset="ETH",
                decimals=18,
                monthly=ETH,
                pay_to=r.wallet,
                start_at=NOW,
                terms_hash="0x00",
                created_at=NOW,
            )
        )


@pytest.mark.parametrize("mode", ["trace_filter", "off"])
def test_native_scanning_is_skipped_without_native_retainer_or_guard(r: Reader, mode: str) -> None:
    """With the balance guard off and no retainer priced in the native asset, no trace, balance
    or full block is asked for; once such a retainer exists, native payments are read."""
    usdc = deploy(r.w3, "TestToken", "Test USDC", "USDC", 6)
    wait_receipt(r.w3, usdc.functions.mint(r.payer, 10**12).transact({"from": r.accounts[0]}))
    r.tokens.append(TokenSettings("USDC", usdc.address, 6, balance_guard=False))
    token = erc20_transfer(r.w3, usdc, r.payer, r.wallet, 5)
    r.node.mine(3)
    chain = r.chain(internal=mode, balance_guard=False)

    r.scan(chain, to_block=r.node.block_number())

    assert [t.tx_hash for t in r.transfers()] == [token]
    for method in ("trace_filter", "eth_getBalance", "eth_getTransactionCount", FULL_BLOCK):
        assert r.proxy.calls[method] == 0, method

    _native_retainer(r)
    paid = send_eth(r.w3, r.payer, r.wallet, 10**15)
    r.scan(chain)
    assert [t.tx_hash for t in r.transfers()] == [token, paid]


# --- withdrawals: no transaction, only the block lists them ---------------------------------


@pytest.mark.parametrize("mode", ["trace_filter", "debug_trace", "off"])
def test_a_withdrawal_to_the_wallet_explains_its_growth_in_every_mode(
    tmp_path: Path, mode: str
) -> None:
    """A beacon-chain withdrawal (no transaction, listed by its block only) is no unexplained
    growth: traces miss it, so the reader finds its block by bisection and reads its header."""
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    migrate(engine)
    with ScriptedNode() as node:
        wallet = node.accounts[3]
        node.mine(10)
        node.send(node.accounts[1], wallet, 10**15)
        node.mine(5)
        node.withdraw(wallet, 32 * 10**9)  # 32 ETH in gwei
        node.mine(5)
        chain = ChainSettings(
            name="anvil", chain_id=31337, rpc_urls=(node.url,), receiving_address=wallet,
            native_symbol="ETH", internal=mode, balance_guard=True,
        )  # fmt: skip
        pool = RpcPool(chain.rpc_urls, chain="anvil", timeout=5, sleep=lambda _s: None)
        try:
            report = scan_chain(chain, pool, engine, lambda: NOW)
        finally:
            pool.close()
        balance = node.balance(wallet)
    with read_session(engine) as session:
        rows = session.exec(select(OutboxEvent)).all()
        state = session.get(ChainState, "anvil")
    engine.dispose()
    assert report.found == 1 and report.unexplained == 0
    assert [r.type for r in rows if r.type == "watcher.unexplained_balance"] == []
    assert state is not None and state.balance == balance
