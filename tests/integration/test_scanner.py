"""The chain scanner on a real Anvil node with a real SQLite file: every inflow to the wallet is
found once, reverted ones never, reorgs orphan what they remove, finality follows the policy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from eth_account import Account
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from web3 import Web3
from web3.contract import Contract

from tests.support.anvil import AnvilNode, free_port
from tests.support.contracts import deploy, erc20_transfer, send_eth, wait_receipt
from tests.support.rpcproxy import RpcProxy
from watcher.chain.rpc import RpcPool
from watcher.chain.scanner import ScanReport, scan_chain
from watcher.errors import FinalityViolation, Refused, RpcError
from watcher.settings import ChainSettings, TokenSettings
from watcher.store.db import make_engine, migrate, read_session
from watcher.store.tables import BlockHash, ChainState, OutboxEvent, Transfer

pytestmark = pytest.mark.anvil

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
WALLET = Web3.to_checksum_address("0xb3e9568a9cbb624403743340358c85ccce130893")
OTHER = Web3.to_checksum_address("0x00000000000000000000000000000000c0ffee01")
ETH = 10**18
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # dev acct 1


class RecordingHooks:
    """Scan hooks that record what they were told, and check they run inside a transaction."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def _record(self, name: str, session: Session, transfers: list[Transfer]) -> None:
        assert session.in_transaction()
        self.calls.append((name, [t.uid for t in transfers]))

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        self._record("found", session, transfers)

    def orphaned(self, session: Session, transfers: list[Transfer]) -> None:
        assert all(t.status == "orphaned" for t in transfers)
        self._record("orphaned", session, transfers)

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        assert all(t.status == "final" and t.finalized_at == NOW for t in transfers)
        self._record("finalized", session, transfers)

    def uids(self, name: str) -> list[str]:
        return [uid for call, uids in self.calls if call == name for uid in uids]


@dataclass
class Harness:
    node: AnvilNode
    engine: Engine
    w3: Web3
    accounts: list[str]
    tokens: list[TokenSettings] = field(default_factory=list)
    hooks: RecordingHooks = field(default_factory=RecordingHooks)
    pools: list[RpcPool] = field(default_factory=list)

    @property
    def payer(self) -> str:
        return self.accounts[1]

    def token(self, symbol: str, decimals: int, *, configure: bool = True) -> Contract:
        """Deploy a TestToken, mint plenty to the payer, and (by default) configure it."""
        contract = deploy(self.w3, "TestToken", f"Test {symbol}", symbol, decimals)
        tx = contract.functions.mint(self.payer, 10**30).transact({"from": self.accounts[0]})
        wait_receipt(self.w3, tx)
        if configure:
            self.tokens.append(TokenSettings(symbol, contract.address, decimals))
        return contract

    def chain(self, **changes: Any) -> ChainSettings:
        assert self.node.url is not None
        base = ChainSettings(
            name="anvil",
            chain_id=31337,
            rpc_urls=(self.node.url,),
            receiving_address=WALLET,
            finality="finalized",
            poll_seconds=1,
            start_block=0,
            native_symbol="ETH",
            tokens=tuple(self.tokens),
            internal="trace_filter",
            balance_guard=True,
        )
        return replace(base, **changes)

    def pool(self, chain: ChainSettings) -> RpcPool:
        pool = RpcPool(
            chain.rpc_urls, chain=chain.name, expected_chain_id=chain.chain_id, timeout=5,
            backoff_base=0.01, sleep=lambda _s: None,
        )  # fmt: skip
        self.pools.append(pool)
        return pool

    def scan(
        self, chain: ChainSettings | None = None, pool: RpcPool | None = None, **kw: Any
    ) -> ScanReport:
        chain = chain or self.chain()
        pool = pool or self.pool(chain)
        return scan_chain(chain, pool, self.engine, lambda: NOW, hooks=self.hooks, **kw)

    def transfers(self, **where: Any) -> list[Transfer]:
        with read_session(self.engine) as session:
            rows = session.exec(select(Transfer).order_by(col(Transfer.id))).all()
        return [t for t in rows if all(getattr(t, k) == v for k, v in where.items())]

    def state(self) -> ChainState:
        with read_session(self.engine) as session:
            state = session.get(ChainState, "anvil")
        assert state is not None
        return state

    def events(self, type_: str) -> list[dict[str, Any]]:
        with read_session(self.engine) as session:
            rows = session.exec(select(OutboxEvent).where(OutboxEvent.type == type_)).all()
        return [json.loads(r.body)["data"] for r in rows]

    def block_of(self, tx_hash: str) -> int:
        return int(wait_receipt(self.w3, tx_hash)["blockNumber"])


def _harness(node: AnvilNode, tmp_path: Path) -> Iterator[Harness]:
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    migrate(engine)
    h = Harness(node, engine, node.web3(), node.accounts())
    yield h
    for pool in h.pools:
        pool.close()
    engine.dispose()


@pytest.fixture
def h(anvil: AnvilNode, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node whose finalized block trails the head by 64."""
    yield from _harness(anvil, tmp_path)


@pytest.fixture
def hf(anvil_fast: AnvilNode, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node whose finalized block trails the head by 2."""
    yield from _harness(anvil_fast, tmp_path)


def _forwarder(h: Harness) -> Contract:
    return deploy(h.w3, "Forwarder")


def _forward(h: Harness, forwarder: Contract, wei: int, to: str = WALLET) -> str:
    tx = forwarder.functions.forward(to).transact({"from": h.payer, "value": wei})
    return str(wait_receipt(h.w3, tx)["transactionHash"].to_0x_hex())


# --- what is found --------------------------------------------------------------------------


def test_erc20_payments_are_found_with_raw_amount_and_decimals(h: Harness) -> None:
    """6- and 18-decimal token payments are stored with the raw amount, decimals and log index."""
    usdc, dai = h.token("USDC", 6), h.token("DAI", 18)
    tx6 = erc20_transfer(h.w3, usdc, h.payer, WALLET, 1_500_000_137)
    tx18 = erc20_transfer(h.w3, dai, h.payer, WALLET, 25 * 10**17 + 1)

    report = h.scan()

    assert report.found == 2
    by_asset = {t.asset: t for t in h.transfers()}
    six, eighteen = by_asset["USDC"], by_asset["DAI"]
    assert (six.kind, six.amount, six.decimals) == ("erc20", 1_500_000_137, 6)
    assert (eighteen.amount, eighteen.decimals) == (25 * 10**17 + 1, 18)
    assert six.tx_hash == tx6 and eighteen.tx_hash == tx18
    assert six.token_address == usdc.address and six.from_address == h.payer
    assert six.to_address == WALLET and six.status == "seen" and six.detected_at == NOW
    assert six.log_index == 0 and six.uid == f"31337:{tx6}:erc20:0"
    assert six.block_number == h.block_of(tx6)
    assert h.hooks.uids("found") == [t.uid for t in h.transfers()]


def test_native_payment_is_found(h: Harness) -> None:
    """A top-level ETH transfer to the wallet is a native transfer with no log index."""
    tx = send_eth(h.w3, h.payer, WALLET, 3 * ETH)

    h.scan()

    (t,) = h.transfers()
    assert (t.kind, t.asset, t.decimals, t.amount, t.log_index) == (
        "native",
        "ETH",
        18,
        3 * ETH,
        None,
    )
    assert (t.tx_hash, t.from_address, t.uid) == (tx, h.payer, f"31337:{tx}:native:")
    assert t.block_hash == h.node.block(t.block_number)["hash"]


def test_internal_payments_through_forwarder_are_found(h: Harness) -> None:
    """forward and forwardMany pay by internal calls: one transfer per value call to the wallet."""
    forwarder = _forwarder(h)
    one = _forward(h, forwarder, 7 * 10**15)
    many = forwarder.functions.forwardMany([WALLET, OTHER, WALLET], [1, 20, 300]).transact(
        {"from": h.payer, "value": 321}
    )
    many_hash = wait_receipt(h.w3, many)["transactionHash"].to_0x_hex()

    h.scan()

    got = sorted((t.tx_hash, t.log_index, t.amount) for t in h.transfers(kind="internal"))
    assert got == sorted([(one, 0, 7 * 10**15), (many_hash, 0, 1), (many_hash, 1, 300)])
    assert {t.from_address for t in h.transfers()} == {forwarder.address}
    assert h.events("watcher.unexplained_balance") == []


def test_debug_trace_mode_finds_the_same_internal_transfers(h: Harness, tmp_path: Path) -> None:
    """debug_traceBlockByNumber (callTracer) gives the same uids and amounts as trace_filter."""
    forwarder = _forwarder(h)
    _forward(h, forwarder, 5)
    tx = forwarder.functions.forwardMany([WALLET, OTHER, WALLET], [1, 20, 300]).transact(
        {"from": h.payer, "value": 321}
    )
    wait_receipt(h.w3, tx)
    forwarder.functions.forwardThenRevert(WALLET).transact(
        {"from": h.payer, "value": 9, "gas": 200_000}
    )

    h.scan()
    other = make_engine(f"sqlite:///{tmp_path}/debug.db")
    migrate(other)
    chain = h.chain(internal="debug_trace")
    scan_chain(chain, h.pool(chain), other, lambda: NOW)

    with read_session(other) as session:
        debug = {(t.uid, t.amount) for t in session.exec(select(Transfer)).all()}
    assert debug == {(t.uid, t.amount) for t in h.transfers()}
    assert len(debug) == 3
    other.dispose()


def test_reverted_transfers_to_the_wallet_are_ignored(h: Harness) -> None:
    """A reverted ETH transfer, a forward-then-revert and a failed token transfer are not found."""
    receiver = deploy(h.w3, "ToggleReceiver")
    wallet = receiver.address
    usdc = h.token("USDC", 6)
    forwarder = _forwarder(h)
    ok = send_eth(h.w3, h.payer, wallet, 5)
    wait_receipt(h.w3, receiver.functions.setOpen(False).transact({"from": h.payer}))
    closed = send_eth(h.w3, h.payer, wallet, 7, gas=60_000)
    assert wait_receipt(h.w3, closed)["status"] == 0
    wait_receipt(h.w3, receiver.functions.setOpen(True).transact({"from": h.payer}))
    reverted = forwarder.functions.forwardThenRevert(wallet).transact(
        {"from": h.payer, "value": 11, "gas": 200_000}
    )
    assert wait_receipt(h.w3, reverted)["status"] == 0
    failed = erc20_transfer(h.w3, usdc, h.accounts[5], wallet, 1, gas=100_000)
    assert wait_receipt(h.w3, failed)["status"] == 0

    h.scan(h.chain(receiving_address=wallet))

    assert [(t.tx_hash, t.amount) for t in h.transfers()] == [(ok, 5)]
    assert h.events("watcher.unexplained_balance") == []


def test_transfers_elsewhere_and_unconfigured_tokens_are_ignored(h: Harness) -> None:
    """Payments to other addresses, and tokens not in the config, produce no transfer."""
    usdc = h.token("USDC", 6)
    stray = h.token("STRAY", 6, configure=False)
    forwarder = _forwarder(h)
    erc20_transfer(h.w3, usdc, h.payer, OTHER, 10)
    erc20_transfer(h.w3, stray, h.payer, WALLET, 10)
    send_eth(h.w3, h.payer, OTHER, 10)
    _forward(h, forwarder, 10, to=OTHER)
    kept = erc20_transfer(h.w3, usdc, h.payer, WALLET, 42)

    report = h.scan()

    assert [(t.tx_hash, t.asset, t.amount) for t in h.transfers()] == [(kept, "USDC", 42)]
    assert report.found == 1


def test_backlog_over_many_log_ranges_is_found_completely(h: Harness) -> None:
    """A backlog of several chunks and many log ranges is scanned completely, without gaps."""
    usdc = h.token("USDC", 6)
    forwarder = _forwarder(h)
    expected = set()
    for i in range(12):
        expected.add(erc20_transfer(h.w3, usdc, h.payer, WALLET, 1000 + i))
        expected.add(send_eth(h.w3, h.payer, WALLET, 2000 + i))
        expected.add(_forward(h, forwarder, 3000 + i))
        h.node.mine(40)
    chain = h.chain(max_log_range=4)
    pool = h.pool(chain)

    report = h.scan(chain, pool)

    head = h.node.block_number()
    assert report.cursor_after == head and h.state().cursor == head
    assert {t.tx_hash for t in h.transfers()} == expected
    assert len(h.transfers()) == 36
    assert head > 2 * 196  # three chunks of blocks
    assert pool.counts_by_method["eth_getLogs"] >= head // 4
    assert pool.counts_by_method["trace_filter"] >= head // 4
    assert h.hooks.uids("found") == [t.uid for t in h.transfers()]


# --- reorgs ---------------------------------------------------------------------------------


def test_reorg_removing_a_payment_before_finality_orphans_it(h: Harness) -> None:
    """anvil_reorg drops the payment's block: the transfer becomes orphaned, hooks are told."""
    h.node.mine(3)
    tx = send_eth(h.w3, h.payer, WALLET, ETH)
    h.node.mine(1)
    h.scan()
    (seen,) = h.transfers()
    assert seen.status == "seen"

    h.node.reorg(3)
    report = h.scan()

    (gone,) = h.transfers()
    assert (gone.tx_hash, gone.status) == (tx, "orphaned")
    assert report.orphaned == 1 and report.reorgs == 1
    assert h.hooks.uids("orphaned") == [seen.uid]
    assert h.state().cursor_hash == h.node.block("latest")["hash"]


def test_reorg_replacing_a_payment_finds_the_new_one_and_orphans_the_old(h: Harness) -> None:
    """A reorg that swaps the payment for a different one: old orphaned, new found (seen)."""
    h.node.mine(2)
    old = send_eth(h.w3, h.payer, WALLET, 1000)
    h.scan()

    h.node.reorg(1, [({"from": h.payer, "to": WALLET, "value": hex(777)}, 0)])
    h.node.mine(1)
    report = h.scan()

    by_tx = {t.tx_hash: t for t in h.transfers()}
    assert by_tx[old].status == "orphaned"
    (new,) = [t for t in by_tx.values() if t.tx_hash != old]
    assert (new.status, new.amount, new.kind) == ("seen", 777, "native")
    assert report.found == 1 and report.orphaned == 1


def test_payment_in_both_branches_is_refound_in_the_same_row(h: Harness) -> None:
    """A transfer re-mined in the new branch comes back as seen in its old row, hooks told twice."""
    payer = Account.from_key(PAYER_KEY)
    assert payer.address == h.payer
    h.node.mine(2)
    signed = payer.sign_transaction(
        {"to": WALLET, "value": 5, "gas": 21_000, "maxFeePerGas": 10**10, "chainId": 31337,
         "maxPriorityFeePerGas": 10**9, "nonce": h.w3.eth.get_transaction_count(h.payer)}
    )  # fmt: skip
    raw = signed.raw_transaction.to_0x_hex()
    tx = h.node.rpc("eth_sendRawTransaction", raw)
    old_block = h.block_of(tx)
    h.node.mine(1)
    h.scan()
    (before,) = h.transfers()

    h.node.reorg(2, [(raw, 1)])  # the same transaction, one block later in the new branch
    report = h.scan()

    (after,) = h.transfers()
    assert (after.id, after.uid, after.status) == (before.id, before.uid, "seen")
    assert after.block_number == old_block + 1 and after.block_hash != before.block_hash
    assert after.detected_at == before.detected_at
    assert [c for c, _ in h.hooks.calls] == ["found", "orphaned", "found"]
    assert report.orphaned == 1 and report.found == 1


def test_reorg_below_a_final_transfer_is_a_finality_violation(hf: Harness) -> None:
    """A reorg under a final transfer raises, emits the event, and rewrites nothing."""
    hf.node.mine(2)
    tx = send_eth(hf.w3, hf.payer, WALLET, ETH)
    hf.node.mine(3)
    hf.scan()
    (final,) = hf.transfers()
    assert final.status == "final"
    cursor = hf.state().cursor

    hf.node.reorg(5)
    with structlog.testing.capture_logs() as logs, pytest.raises(FinalityViolation):
        hf.scan()

    (still,) = hf.transfers()
    assert (still.tx_hash, still.status, still.block_hash) == (tx, "final", final.block_hash)
    assert hf.state().cursor == cursor and "finality violation" in (hf.state().last_error or "")
    (event,) = hf.events("watcher.finality_violation")
    assert event["chain"] == "anvil" and event["cursor"] == cursor
    assert any(e["event"] == "scan.finality_violation" and e["log_level"] == "error" for e in logs)
    with pytest.raises(FinalityViolation):
        hf.scan()
    assert len(hf.events("watcher.finality_violation")) == 1


# --- finality -------------------------------------------------------------------------------


def test_payment_becomes_final_only_when_the_finalized_block_passes_it(hf: Harness) -> None:
    """With finality = finalized (latest - 2), the transfer stays seen until that block is its."""
    hf.node.mine(3)
    tx = send_eth(hf.w3, hf.payer, WALLET, ETH)
    block = hf.block_of(tx)

    assert hf.scan().final_block == block - 2
    assert hf.transfers()[0].status == "seen"
    hf.node.mine(1)
    assert hf.scan().final_block == block - 1
    assert hf.transfers()[0].status == "seen"
    hf.node.mine(1)
    report = hf.scan()

    (t,) = hf.transfers()
    assert report.final_block == block and report.finalized == 1
    assert (t.status, t.final_block, t.finalized_at) == ("final", block, NOW)
    assert hf.hooks.uids("finalized") == [t.uid]
    assert hf.state().final_block == block


def test_payment_becomes_final_after_n_confirmations(h: Harness) -> None:
    """With finality = 3 confirmations the final block is head - 2."""
    usdc = h.token("USDC", 6)
    tx = erc20_transfer(h.w3, usdc, h.payer, WALLET, 5)
    block = h.block_of(tx)
    chain = h.chain(finality=3)

    assert h.scan(chain).final_block == block - 2
    h.node.mine(1)
    h.scan(chain)
    assert h.transfers()[0].status == "seen"
    h.node.mine(1)
    report = h.scan(chain)

    (t,) = h.transfers()
    assert report.final_block == block and (t.status, t.final_block) == ("final", block)


# --- restarts and RPC trouble ---------------------------------------------------------------


def test_restart_resumes_from_the_cursor_without_gaps_or_duplicates(h: Harness) -> None:
    """A new pool and scanner on the same database continue where the cursor stopped."""
    usdc = h.token("USDC", 6)
    first = {send_eth(h.w3, h.payer, WALLET, 10 + i) for i in range(3)}
    middle = h.node.block_number()
    h.scan(to_block=middle)
    later = {erc20_transfer(h.w3, usdc, h.payer, WALLET, 20 + i) for i in range(3)}
    later.add(send_eth(h.w3, h.payer, WALLET, 99))

    report = h.scan()  # a fresh pool, as after a restart
    again = h.scan(from_block=1)  # and a rescan of everything adds nothing

    assert report.cursor_before == middle and report.found == 4
    assert again.found == 0 and again.cursor_after == h.node.block_number()
    assert {t.tx_hash for t in h.transfers()} == first | later
    assert len(h.transfers()) == 7
    with read_session(h.engine) as session:
        stored = {b.number: b.hash for b in session.exec(select(BlockHash)).all()}
    # Headers, not blocks: the hashes kept are the chunk boundaries and the blocks with a
    # transfer (no longer every block), each the node's hash for that block.
    assert {h.node.block_number()} | {t.block_number for t in h.transfers()} <= set(stored)
    assert all(h.node.block(n)["hash"] == stored[n] for n in stored)


def test_first_rpc_url_dead_means_the_second_is_used(h: Harness) -> None:
    """With the first URL refusing connections the scan goes through the second one."""
    tx = send_eth(h.w3, h.payer, WALLET, 1)
    chain = h.chain(rpc_urls=(f"http://127.0.0.1:{free_port()}/v2/DEADKEY", h.node.url))
    pool = h.pool(chain)

    h.scan(chain, pool)

    assert [t.tx_hash for t in h.transfers()] == [tx]
    assert pool.current_url_redacted == h.node.url
    assert h.state().rpc_ok is True


def test_proxy_refusing_wide_log_ranges_is_answered_by_splitting(h: Harness) -> None:
    """eth_getLogs refused above 3 blocks: ranges shrink and every token payment is found."""
    usdc = h.token("USDC", 6)
    sent = set()
    for i in range(6):
        sent.add(erc20_transfer(h.w3, usdc, h.payer, WALLET, 100 + i))
        h.node.mine(2)
    with RpcProxy(h.node.url or "", max_log_range=3) as proxy:
        chain = h.chain(rpc_urls=(proxy.url,))
        h.scan(chain)
        assert proxy.calls["eth_getLogs"] > h.node.block_number() // 3

    assert {t.tx_hash for t in h.transfers()} == sent


def test_rpc_url_key_never_reaches_logs_or_chain_state(h: Harness) -> None:
    """A key in the URL path is absent from every log line and from ChainState.last_error."""
    send_eth(h.w3, h.payer, WALLET, 1)
    with RpcProxy(h.node.url or "") as proxy, structlog.testing.capture_logs() as logs:
        chain = h.chain(rpc_urls=(f"{proxy.url}/v2/SECRETKEY123",))
        pool = h.pool(chain)
        proxy.fail_next(2, 503)
        h.scan(chain, pool)
        proxy.down = True
        h.node.mine(1)
        with pytest.raises(RpcError) as failure:
            h.scan(chain, pool)

    assert len(h.transfers()) == 1
    assert any(e["event"] == "rpc.retry" for e in logs)
    assert any(e["event"] == "scan.failed" for e in logs)
    state = h.state()
    assert state.rpc_ok is False and state.last_error
    for text in (repr(logs), state.last_error, str(failure.value)):
        assert "SECRETKEY123" not in text


# --- balance guard and cost -----------------------------------------------------------------


def test_balance_guard_flags_an_inflow_the_scanner_cannot_see(h: Harness) -> None:
    """With traces off, a forwarded payment raises watcher.unexplained_balance at its block."""
    forwarder = _forwarder(h)
    h.node.mine(4)
    tx = _forward(h, forwarder, 12345)
    h.node.mine(6)

    report = h.scan(h.chain(internal="off"))

    assert h.transfers() == [] and report.unexplained == 1
    (event,) = h.events("watcher.unexplained_balance")
    assert event["block"] == h.block_of(tx)
    assert (event["expected_growth"], event["actual_growth"]) == ("0", "12345")
    assert (event["from_block"], event["to_block"]) == (0, h.node.block_number())


def test_balance_guard_stays_quiet_for_explained_inflows_and_spending(h: Harness) -> None:
    """Native, internal and token inflows, and the wallet's own spending, explain the balance."""
    wallet = h.accounts[3]  # a funded dev account, so it can spend
    usdc = h.token("USDC", 6)
    forwarder = _forwarder(h)
    h.scan(h.chain(receiving_address=wallet))
    send_eth(h.w3, h.payer, wallet, 10**17)
    _forward(h, forwarder, 10**16, to=wallet)
    erc20_transfer(h.w3, usdc, h.payer, wallet, 5)
    send_eth(h.w3, wallet, OTHER, 3 * 10**16)  # the wallet spends: value + gas
    send_eth(h.w3, wallet, wallet, 1)  # and pays itself: gas only
    h.node.mine(2)

    report = h.scan(h.chain(receiving_address=wallet))

    assert report.found == 3 and report.unexplained == 0
    assert h.events("watcher.unexplained_balance") == []
    assert h.state().balance == h.w3.eth.get_balance(wallet)


def test_idle_poll_costs_at_most_two_requests(h: Harness) -> None:
    """A poll with no new block (and nothing awaiting finality) sends at most two requests."""
    usdc = h.token("USDC", 6)
    erc20_transfer(h.w3, usdc, h.payer, WALLET, 5)
    chain = h.chain()
    pool = h.pool(chain)
    h.scan(chain, pool)

    before = pool.request_count
    report = h.scan(chain, pool)

    assert pool.request_count - before <= 2
    assert report.requests == pool.request_count - before
    assert report.cursor_before == report.cursor_after == report.head
    assert h.state().last_poll_at == NOW


# --- the cursor -----------------------------------------------------------------------------


class FailingHooks(RecordingHooks):
    """Hooks whose found() fails, as a settlement bug would."""

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        raise RuntimeError("settlement failed")


def test_a_failing_hook_rolls_back_the_whole_chunk(h: Harness) -> None:
    """Transfers, block hashes and cursor commit together: a failing found() stores none of them."""
    send_eth(h.w3, h.payer, WALLET, 1)
    h.scan(to_block=0)
    h.hooks = FailingHooks()

    with pytest.raises(RuntimeError, match="settlement failed"):
        h.scan()

    assert h.transfers() == []
    assert h.state().cursor == 0
    with read_session(h.engine) as session:
        assert [b.number for b in session.exec(select(BlockHash)).all()] == [0]


def test_from_block_may_rescan_but_never_skip_blocks(h: Harness) -> None:
    """--from below the cursor rescans; --from past cursor + 1 is refused and writes nothing."""
    h.node.mine(10)
    progress: list[tuple[int, int]] = []
    h.scan(to_block=4, progress=lambda cursor, target: progress.append((cursor, target)))
    assert progress[0] == (-1, 4) and progress[-1] == (4, 4)

    with pytest.raises(Refused, match=r"would skip blocks 5\.\.6"):
        h.scan(from_block=7)
    assert h.state().cursor == 4

    report = h.scan(from_block=3, to_block=6)
    assert (report.cursor_before, report.cursor_after) == (2, 6)


def test_new_cursor_starts_before_start_block(h: Harness) -> None:
    """Without state the first block scanned is start_block; earlier payments are not looked at."""
    early = send_eth(h.w3, h.payer, WALLET, 1)
    h.node.mine(2)
    late = send_eth(h.w3, h.payer, WALLET, 2)
    chain = h.chain(start_block=h.block_of(early) + 1)

    report = h.scan(chain)

    assert report.cursor_before == h.block_of(early)
    assert [t.tx_hash for t in h.transfers()] == [late]


def test_reorg_replacing_every_stored_block_rewinds_to_the_start(h: Harness) -> None:
    """A reorg of all scanned blocks rewinds to the parent of the first one, not a violation."""
    h.node.mine(3)
    start = h.node.block_number() + 1
    tx = send_eth(h.w3, h.payer, WALLET, 5)
    h.node.mine(1)
    h.scan(h.chain(start_block=start))
    (seen,) = h.transfers()
    assert (seen.tx_hash, seen.status, seen.block_number) == (tx, "seen", start)

    h.node.reorg(2)
    report = h.scan(h.chain(start_block=start))

    (gone,) = h.transfers()
    assert gone.status == "orphaned"
    assert report.reorgs == 1 and report.orphaned == 1
    assert h.events("watcher.finality_violation") == []
    assert h.state().cursor_hash == h.node.block("latest")["hash"]
