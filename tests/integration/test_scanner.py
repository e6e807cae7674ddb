"""The chain scanner, one suite on two nodes (real Anvil and the scripted node) with a real
SQLite file: every inflow to the wallet is found once, reverted ones never, reorgs orphan what
they remove, finality follows the policy; and without any database, what the reader hands over
(``Findings``, ``Rewind``, verdicts) checked directly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlmodel import select

from tests.support.chain_driver import ChainDriver, ScriptedDriver
from tests.support.memory_ledger import MemoryLedger
from tests.support.rpcproxy import RpcProxy
from tests.support.scan_harness import (
    ETH,
    NODE_MODES,
    NODES,
    NOW,
    OTHER,
    WALLET,
    Harness,
    chain_settings,
    driver,
    harness,
    make_pool,
)
from watcher.chain import sources
from watcher.chain.calls import block_call, parse_block
from watcher.chain.findings import PollRecord, Rewind, ScanReport, Verdict
from watcher.chain.scanner import poll_chain
from watcher.errors import FinalityViolation
from watcher.ledger.scanning import scan_chain
from watcher.settings import TokenSettings
from watcher.store.db import make_engine, migrate, read_session
from watcher.store.tables import Transfer


@pytest.fixture(params=NODE_MODES)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node whose finalized block trails the head by 64."""
    yield from harness(request, tmp_path, fast=False)


@pytest.fixture(params=NODE_MODES)
def hf(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node whose finalized block trails the head by 2."""
    yield from harness(request, tmp_path, fast=True)


# --- what is found --------------------------------------------------------------------------


def test_erc20_payments_are_found_with_raw_amount_and_decimals(h: Harness) -> None:
    """6- and 18-decimal token payments are stored with the raw amount, decimals and log index."""
    usdc, dai = h.token("USDC", 6), h.token("DAI", 18)
    tx6 = h.node.pay_token(usdc, h.payer, WALLET, 1_500_000_137)
    tx18 = h.node.pay_token(dai, h.payer, WALLET, 25 * 10**17 + 1)

    report = h.scan()

    assert report.found == 2
    by_asset = {t.asset: t for t in h.transfers()}
    six, eighteen = by_asset["USDC"], by_asset["DAI"]
    assert (six.kind, six.amount, six.decimals) == ("erc20", 1_500_000_137, 6)
    assert (eighteen.amount, eighteen.decimals) == (25 * 10**17 + 1, 18)
    assert six.tx_hash == tx6 and eighteen.tx_hash == tx18
    assert six.token_address == usdc and six.from_address == h.payer
    assert six.to_address == WALLET and six.status == "seen" and six.detected_at == NOW
    assert six.log_index == 0 and six.uid == f"31337:{tx6}:erc20:0"
    assert six.block_number == h.node.block_of(tx6)
    assert h.hooks.uids("found") == [t.uid for t in h.transfers()]


def test_native_payment_is_found(h: Harness) -> None:
    """A top-level ETH transfer to the wallet is a native transfer with no log index."""
    tx = h.pay(3 * ETH)

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
    assert t.block_hash == h.node.block_hash(t.block_number)


def test_internal_payments_through_forwarder_are_found(h: Harness) -> None:
    """forward and forwardMany pay by internal calls: one transfer per value call to the wallet."""
    h.needs_traces()
    forwarder = h.node.forwarder()
    one = h.forward(forwarder, 7 * 10**15)
    many_hash = h.node.forward(forwarder, h.payer, [(WALLET, 1), (OTHER, 20), (WALLET, 300)])

    h.scan()

    got = sorted((t.tx_hash, t.log_index, t.amount) for t in h.transfers(kind="internal"))
    assert got == sorted([(one, 0, 7 * 10**15), (many_hash, 0, 1), (many_hash, 1, 300)])
    assert {t.from_address for t in h.transfers()} == {forwarder}
    assert h.events("watcher.unexplained_balance") == []


def test_debug_trace_mode_finds_the_same_internal_transfers(h: Harness, tmp_path: Path) -> None:
    """debug_traceBlockByNumber (callTracer) gives the same uids and amounts as trace_filter."""
    if h.internal != "trace_filter":
        pytest.skip("compares both trace modes itself: once per node is enough")
    forwarder = h.node.forwarder()
    h.forward(forwarder, 5)
    h.node.forward(forwarder, h.payer, [(WALLET, 1), (OTHER, 20), (WALLET, 300)])
    h.node.forward(forwarder, h.payer, [(WALLET, 9)], revert=True)

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
    wallet = h.node.toggle_receiver()
    usdc = h.token("USDC", 6)
    forwarder = h.node.forwarder()
    ok = h.pay(5, to=wallet)
    h.node.set_open(wallet, False)
    closed = h.node.pay_native(h.payer, wallet, 7, gas=60_000)
    assert h.node.status(closed) == 0
    h.node.set_open(wallet, True)
    reverted = h.node.forward(forwarder, h.payer, [(wallet, 11)], revert=True)
    assert h.node.status(reverted) == 0
    failed = h.node.pay_token(usdc, h.node.accounts[5], wallet, 1)
    assert h.node.status(failed) == 0

    h.scan(h.chain(receiving_address=wallet))

    assert [(t.tx_hash, t.amount) for t in h.transfers()] == [(ok, 5)]
    assert h.events("watcher.unexplained_balance") == []


def test_transfers_elsewhere_and_unconfigured_tokens_are_ignored(h: Harness) -> None:
    """Payments to other addresses, and tokens not in the config, produce no transfer."""
    usdc = h.token("USDC", 6)
    stray = h.token("STRAY", 6, configure=False)
    forwarder = h.node.forwarder()
    h.node.pay_token(usdc, h.payer, OTHER, 10)
    h.node.pay_token(stray, h.payer, WALLET, 10)
    h.pay(10, to=OTHER)
    h.forward(forwarder, 10, to=OTHER)
    kept = h.node.pay_token(usdc, h.payer, WALLET, 42)

    report = h.scan()

    assert [(t.tx_hash, t.asset, t.amount) for t in h.transfers()] == [(kept, "USDC", 42)]
    assert report.found == 1


def test_backlog_over_many_log_ranges_is_found_completely(h: Harness) -> None:
    """A backlog of several chunks and many log ranges is scanned completely, without gaps."""
    usdc = h.token("USDC", 6)
    forwarder = h.node.forwarder()
    traces = h.internal != "off"  # without, internal payments are the balance guard's
    expected = set()
    for i in range(12):
        expected.add(h.node.pay_token(usdc, h.payer, WALLET, 1000 + i))
        expected.add(h.pay(2000 + i))
        if traces:
            expected.add(h.forward(forwarder, 3000 + i))
        h.node.mine(40)
    chain = h.chain(max_log_range=4)
    pool = h.pool(chain)

    report = h.scan(chain, pool)

    head = h.node.head()
    assert report.cursor_after == head and h.state().cursor == head
    assert {t.tx_hash for t in h.transfers()} == expected
    assert len(h.transfers()) == (36 if traces else 24)
    assert head > 2 * 196  # three chunks of blocks (before the reader's chunks grew)
    assert pool.counts_by_method["eth_getLogs"] >= head // 4
    if h.internal == "trace_filter":
        assert pool.counts_by_method["trace_filter"] >= head // 4
    assert h.hooks.uids("found") == [t.uid for t in h.transfers()]


# --- reorgs ---------------------------------------------------------------------------------


def test_reorg_removing_a_payment_before_finality_orphans_it(h: Harness) -> None:
    """A reorg drops the payment's block: the transfer becomes orphaned, hooks are told."""
    h.node.mine(3)
    tx = h.pay(ETH)
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
    assert h.state().cursor_hash == h.node.block_hash("latest")


def test_reorg_replacing_a_payment_finds_the_new_one_and_orphans_the_old(h: Harness) -> None:
    """A reorg that swaps the payment for a different one: old orphaned, new found (seen)."""
    h.node.mine(2)
    old = h.pay(1000)
    h.scan()

    h.node.reorg(1, [(h.node.new_payment(h.payer, WALLET, 777), 0)])
    h.node.mine(1)
    report = h.scan()

    by_tx = {t.tx_hash: t for t in h.transfers()}
    assert by_tx[old].status == "orphaned"
    (new,) = [t for t in by_tx.values() if t.tx_hash != old]
    assert (new.status, new.amount, new.kind) == ("seen", 777, "native")
    assert report.found == 1 and report.orphaned == 1


def test_payment_in_both_branches_is_refound_in_the_same_row(h: Harness) -> None:
    """A transfer re-mined in the new branch comes back as seen in its old row, hooks told twice."""
    h.node.mine(2)
    tx, raw = h.node.signed_payment(WALLET, 5)
    old_block = h.node.block_of(tx)
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
    tx = hf.pay(ETH)
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
    tx = hf.pay(ETH)
    block = hf.node.block_of(tx)

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
    tx = h.node.pay_token(usdc, h.payer, WALLET, 5)
    block = h.node.block_of(tx)
    chain = h.chain(finality=3)

    assert h.scan(chain).final_block == block - 2
    h.node.mine(1)
    h.scan(chain)
    assert h.transfers()[0].status == "seen"
    h.node.mine(1)
    report = h.scan(chain)

    (t,) = h.transfers()
    assert report.final_block == block and (t.status, t.final_block) == ("final", block)


# --- the reader alone, without a database ---------------------------------------------------


@pytest.fixture(params=NODES)
def node(request: pytest.FixtureRequest) -> Iterator[ChainDriver]:
    """A chain whose finalized block trails the head by 2, and no database at all."""
    with driver(request, fast=True) as chain:
        yield chain


def _poll(node: ChainDriver, ledger: MemoryLedger, **changes: Any) -> ScanReport:
    chain = chain_settings(node.url, **changes)
    with closing(make_pool(chain)) as pool:
        return poll_chain(chain, pool, ledger)


def test_a_chunk_becomes_findings_without_a_database(node: ChainDriver) -> None:
    """One poll hands the ledger one Findings: the inflows, hashes, balance and the new cursor."""
    usdc = node.deploy_token("USDC", 6)
    forwarder = node.forwarder()
    payer = node.accounts[1]
    native = node.pay_native(payer, WALLET, 3 * ETH)
    token = node.pay_token(usdc, payer, WALLET, 42)
    internal = node.forward(forwarder, payer, [(WALLET, 7)])
    node.mine(1)
    ledger = MemoryLedger(chain_id=31337)

    report = _poll(node, ledger, tokens=(TokenSettings("USDC", usdc, 6),))

    head = node.head()
    (f,) = ledger.findings
    assert (f.first, f.last, report.cursor_after) == (0, head, head)
    assert sorted((i.kind, i.tx_hash, i.amount) for i in f.inflows) == sorted(
        [("native", native, 3 * ETH), ("erc20", token, 42), ("internal", internal, 7)]
    )
    assert {i.from_address for i in f.inflows} == {payer, forwarder}
    assert f.cursor_hash == node.block_hash(head) and f.times[head] is not None
    # Headers, not blocks: the chunk's boundaries and the blocks holding an inflow.
    inflow_blocks = {i.block_number for i in f.inflows}
    assert [b.number for b in f.hashes] == sorted({0, head} | inflow_blocks)
    assert f.balance == node.balance(WALLET) == 3 * ETH + 7
    assert f.events == () and f.final_at_once == head - 2 and f.forget_up_to < 0
    assert ledger.status(native) == ledger.status(token) == ["final"]  # already final blocks
    assert ledger.status(internal) == ["seen"] and report.finalized == 2
    assert ledger.polls == [PollRecord("ok", head, head - 2)]


def test_finality_hands_over_one_verdict_per_waiting_transfer(node: ChainDriver) -> None:
    """A seen transfer whose block became final gets its receipt re-read: a final verdict."""
    node.mine(3)
    tx = node.pay_native(node.accounts[1], WALLET, 5)
    ledger = MemoryLedger(chain_id=31337)
    _poll(node, ledger)
    assert ledger.verdicts == [] and ledger.status(tx) == ["seen"]

    node.mine(2)
    report = _poll(node, ledger)

    ((final, pairs),) = ledger.verdicts
    assert final == node.block_of(tx) == report.final_block
    assert [(p.tx_hash, v) for p, v in pairs] == [(tx, Verdict(True))]
    assert ledger.status(tx) == ["final"] and report.finalized == 1


def test_a_reorg_becomes_a_rewind_without_a_database(node: ChainDriver) -> None:
    """A reorg above a seen payment hands the ledger a Rewind to the common ancestor."""
    node.mine(3)
    tx = node.pay_native(node.accounts[1], WALLET, 5)
    node.mine(1)
    ledger = MemoryLedger(chain_id=31337)
    _poll(node, ledger)
    ancestor = node.head() - 2
    kept = node.block_hash(ancestor)

    node.reorg(2)
    report = _poll(node, ledger)

    assert ledger.rewinds == [Rewind(ancestor, kept)]
    assert ledger.status(tx) == ["orphaned"] and report.orphaned == report.reorgs == 1
    assert ledger.findings[-1].first == ancestor + 1
    assert ledger.findings[-1].cursor_hash == node.block_hash("latest")


# --- block times without hit-block headers ---------------------------------------------------

TIME_NODES = [
    pytest.param("scripted"),  # no blockTimestamp in receipts and logs (older nodes)
    pytest.param("stamped"),  # blockTimestamp in receipts and logs, as Anvil gives
    pytest.param("anvil", marks=pytest.mark.anvil),
]


@pytest.fixture(params=TIME_NODES)
def ht(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node with or without ``blockTimestamp`` in its receipts and logs."""
    yield from harness(request, tmp_path, fast=False)


def test_block_time_is_exact_and_hit_headers_are_read_only_without_block_timestamps(
    ht: Harness,
) -> None:
    """Every payment's block_time is its block's timestamp, and a node naming blockTimestamp
    in receipts and logs is asked no header of a payment's block (an older node is)."""
    usdc = ht.token("USDC", 6)
    forwarder = ht.node.forwarder()
    ht.node.mine(3)
    txs = [ht.node.pay_token(usdc, ht.payer, WALLET, 5_000_000)]
    ht.node.mine(2)
    txs += [ht.pay(ETH), ht.forward(forwarder, 10**15)]
    ht.node.mine(3)
    with RpcProxy(ht.node.url) as proxy:
        # The payments are below the reorg window, where hit headers are read for their parent.
        chain = ht.chain(rpc_urls=(proxy.url,), internal="trace_filter", reorg_depth=2)
        pool = ht.pool(chain)
        report = ht.scan(chain, pool)
        headers = proxy.calls["eth_getBlockByNumber"]
        stamps = {
            n: parse_block(raw, n).timestamp
            for n, raw in zip(
                range(ht.node.head() + 1),
                pool.batch([block_call(n) for n in range(ht.node.head() + 1)]),
                strict=True,
            )
        }

    rows = ht.transfers()
    assert report.found == 3 and sorted(t.tx_hash for t in rows) == sorted(txs)
    for t in rows:
        stamp = stamps[t.block_number]
        assert stamp is not None and t.block_time is not None
        assert t.block_time.replace(tzinfo=UTC) == datetime.fromtimestamp(stamp, UTC)
    hit_blocks = {t.block_number for t in rows}
    assert len(hit_blocks) == 3 and not hit_blocks & {0, ht.node.head()}
    # The head and finalized tags (no final block recorded yet), then the header of the one
    # chunk's first block (its last is the head: its end balance by the head's hash proves
    # the range's node has it).
    without_hits = 2 + 1
    older = isinstance(ht.node, ScriptedDriver) and not ht.node.node.block_timestamps
    assert headers == (without_hits + 3 if older else without_hits)


# --- balances carried from chunk to chunk ----------------------------------------------------


@pytest.fixture(params=NODES)
def hn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on each node, trace_filter mode."""
    yield from harness(request, tmp_path, fast=False)


def test_a_chunk_takes_its_start_balances_from_the_previous_chunks_end(
    hn: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over three chunks the native and guarded token balances are read at the first chunk's
    start and at each chunk's end only, and the guard still explains every payment."""
    monkeypatch.setattr(sources, "SPARSE_WIDTH", 20)  # chunks of 20 blocks (max_log_range 10)
    usdc = hn.token("USDC", 6)
    hn.node.mine(20 - hn.node.head() % 20)
    txs = []
    for _ in range(3):  # a native and a token payment in each chunk
        txs += [hn.pay(ETH), hn.node.pay_token(usdc, hn.payer, WALLET, 7_000_000)]
        hn.node.mine(17)
    with RpcProxy(hn.node.url) as proxy:
        chain = hn.chain(
            rpc_urls=(proxy.url,), internal="trace_filter", balance_guard=True, max_log_range=10
        )
        report = hn.scan(chain, hn.pool(chain))
        calls = dict(proxy.calls)

    chunks = hn.node.head() // 20 + 1
    assert chunks >= 4
    assert report.found == 6 and report.unexplained == 0
    assert hn.events("watcher.unexplained_balance") == []
    assert sorted(t.tx_hash for t in hn.transfers()) == sorted(txs)
    # first - 1 of the first chunk, each end, and each later chunk's link to the one before it
    # (the balance at its last block by hash, EIP-1898)
    assert calls["eth_getBalance"] == 1 + chunks + (chunks - 1)
    assert calls["eth_call"] == 1 + chunks  # balanceOf(wallet) the same way
    assert hn.state().balance == hn.node.balance(WALLET)
