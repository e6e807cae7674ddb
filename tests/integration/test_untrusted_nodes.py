"""The scanner trusts no single node (issue 9, traps 1-4), behind the fault proxy, on real Anvil
and on the scripted node:
a lagging node is not a reorg, nothing is orphaned for good, an empty ``eth_getLogs`` answer
skips no token payment, and with ``cross_check`` one node alone makes nothing final."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.support.rpcproxy import RpcProxy
from tests.support.scan_harness import NODES, NOW, WALLET, Harness, RecordingHooks, harness
from watcher.chain.rpc import RpcPool
from watcher.ledger.scanning import ScanReport, scan_chain
from watcher.settings import ChainSettings, TokenSettings
from watcher.store.tables import Transfer


@pytest.fixture(params=NODES)
def hf(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node whose finalized block trails the head by 2."""
    yield from harness(request, tmp_path, fast=True)


@pytest.fixture
def proxy(hf: Harness) -> Iterator[RpcProxy]:
    """The fault proxy in front of the harness's node."""
    with RpcProxy(hf.node.url) as p:
        yield p


class ClockHooks(RecordingHooks):
    """Recording hooks for a scan whose clock moves (finalized_at is not the fixed NOW)."""

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        assert all(t.status == "final" for t in transfers)
        self._record("finalized", session, transfers)


class Clock:
    """A clock the test moves forward."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def scan(
    h: Harness, chain: ChainSettings, pool: RpcPool, now: Callable[[], datetime]
) -> ScanReport:
    return scan_chain(chain, pool, h.engine, now, hooks=h.hooks)


def statuses(h: Harness) -> dict[str, str]:
    return {t.tx_hash: t.status for t in h.transfers()}


def no_false_alarms(h: Harness) -> None:
    """No orphan, no finality violation, no unexplained balance was reported."""
    assert h.hooks.uids("orphaned") == []
    assert h.events("watcher.finality_violation") == []
    assert h.events("watcher.unexplained_balance") == []
    assert all(t.status != "orphaned" for t in h.transfers())


# --- trap 1: lag is not a reorg -------------------------------------------------------------


def test_a_lagging_node_is_skipped_not_taken_for_a_reorg(hf: Harness, proxy: RpcProxy) -> None:
    """A node 6 blocks behind the cursor orphans nothing and raises no violation; once it
    catches up every payment is found once and becomes final."""
    hf.node.mine(10)
    final_tx = hf.pay(10)
    hf.node.mine(3)
    seen_tx = hf.pay(20)
    hf.node.mine(1)
    chain = hf.chain(rpc_urls=(proxy.url,))
    pool = hf.pool(chain)
    scan(hf, chain, pool, lambda: NOW)
    assert statuses(hf) == {final_tx: "final", seen_tx: "seen"}
    cursor = hf.state().cursor

    proxy.lag_blocks = 6
    during = hf.pay(30)  # mined while the node is behind
    report = scan(hf, chain, pool, lambda: NOW)

    assert statuses(hf) == {final_tx: "final", seen_tx: "seen"}
    no_false_alarms(hf)
    assert report.lagging and report.reorgs == 0 and report.cursor_after == cursor
    assert "behind the cursor" in (hf.state().last_error or "")

    proxy.lag_blocks = 0
    hf.node.mine(3)
    report = scan(hf, chain, pool, lambda: NOW)

    assert not report.lagging and report.cursor_after == hf.node.head()
    assert statuses(hf) == {final_tx: "final", seen_tx: "final", during: "final"}
    assert len(hf.transfers()) == 3 and hf.state().last_error is None
    no_false_alarms(hf)


def test_a_lagging_first_url_moves_the_poll_to_the_second(hf: Harness, proxy: RpcProxy) -> None:
    """With a clean second URL, a lagging first one is left for it within the same poll."""
    hf.node.mine(10)
    first = hf.pay(10)
    hf.node.mine(1)
    chain = hf.chain(rpc_urls=(proxy.url, hf.node.url))
    pool = hf.pool(chain)
    scan(hf, chain, pool, lambda: NOW)

    proxy.lag_blocks = 8
    second = hf.pay(20)
    hf.node.mine(2)
    report = scan(hf, chain, pool, lambda: NOW)

    assert statuses(hf) == {first: "final", second: "final"}
    no_false_alarms(hf)
    assert not report.lagging and report.cursor_after == hf.node.head()
    assert pool.current_url_redacted == hf.node.url


def test_a_finalized_tag_moving_backwards_changes_nothing(hf: Harness, proxy: RpcProxy) -> None:
    """A ``finalized`` tag that falls back 5 blocks is neither a reorg nor a reason to lower
    the final block the chain state shows; a seen payment stays seen, a final one final."""
    hf.node.mine(10)
    final_tx = hf.pay(10)
    hf.node.mine(3)
    chain = hf.chain(rpc_urls=(proxy.url,))
    pool = hf.pool(chain)
    scan(hf, chain, pool, lambda: NOW)
    final_before = hf.state().final_block
    assert final_before is not None

    proxy.finalized_lag = 5
    seen_tx = hf.pay(20)
    report = scan(hf, chain, pool, lambda: NOW)

    assert report.final_block == final_before and hf.state().final_block == final_before
    assert statuses(hf) == {final_tx: "final", seen_tx: "seen"}
    no_false_alarms(hf)


def test_a_head_below_the_cursor_with_another_hash_is_a_reorg(hf: Harness) -> None:
    """Only a hash mismatch is a reorg: a shorter branch whose head differs from the stored
    block at that height is followed at once, and the payment it dropped is orphaned."""
    hf.node.mine(10)
    tx = hf.pay(10)
    hf.node.mine(1)
    hf.scan()
    hf.node.reorg(3)
    hf.node.rollback(1)

    report = hf.scan()

    assert report.reorgs == 1 and statuses(hf) == {tx: "orphaned"}
    assert hf.state().cursor_hash == hf.node.block_hash("latest")
    assert not report.lagging


# --- trap 2: nothing orphaned for good ------------------------------------------------------


def test_an_unconfirmed_receipt_at_finality_is_retried_then_alerted_not_orphaned(
    hf: Harness,
) -> None:
    """Receipts failing over to a lagging backend (null receipt, null block) leave the transfer
    seen; after unconfirmed_alert_seconds one watcher.receipt_unconfirmed is raised; once the
    good URL answers again the transfer becomes final. Nothing is orphaned."""
    clock, hf.hooks = Clock(), ClockHooks()
    hf.node.mine(10)
    tx = hf.pay(10)
    with RpcProxy(hf.node.url) as fresh, RpcProxy(hf.node.url) as behind:
        behind.lag_blocks = 8
        chain = hf.chain(rpc_urls=(fresh.url, behind.url), unconfirmed_alert_seconds=60)
        pool = hf.pool(chain)
        scan(hf, chain, pool, clock)
        assert statuses(hf) == {tx: "seen"}

        fresh.fail_methods = {"eth_getTransactionReceipt"}
        hf.node.mine(3)
        scan(hf, chain, pool, clock)
        assert statuses(hf) == {tx: "seen"}
        (row,) = hf.transfers()
        assert row.unconfirmed_since == NOW
        assert hf.events("watcher.receipt_unconfirmed") == []

        clock.now = NOW + timedelta(seconds=61)
        scan(hf, chain, pool, clock)
        scan(hf, chain, pool, clock)
        (alert,) = hf.events("watcher.receipt_unconfirmed")
        assert alert["tx_hash"] == tx and alert["reason"] == "transaction not found"
        assert statuses(hf) == {tx: "seen"}

        fresh.fail_methods = set()
        report = scan(hf, chain, pool, clock)

    assert report.finalized == 1 and statuses(hf) == {tx: "final"}
    (row,) = hf.transfers()
    assert row.unconfirmed_since is None
    no_false_alarms(hf)


# --- trap 3: the token balance guard --------------------------------------------------------


def test_an_empty_getlogs_answer_is_rescanned_and_the_payment_found(
    hf: Harness, proxy: RpcProxy
) -> None:
    """A backend answering eth_getLogs with [] once: balanceOf shows the growth, the chunk is
    rescanned, the USDC payment is found exactly once and no alert is raised."""
    usdc = hf.token("USDC", 6)
    hf.scan(hf.chain(rpc_urls=(proxy.url,)))
    tx = hf.node.pay_token(usdc, hf.payer, WALLET, 1_500_000_137)
    chain = hf.chain(rpc_urls=(proxy.url,))

    proxy.stale_logs_next(1)
    report = scan(hf, chain, hf.pool(chain), lambda: NOW)

    assert [(t.tx_hash, t.amount) for t in hf.transfers()] == [(tx, 1_500_000_137)]
    assert report.found == 1 and report.unexplained == 0
    no_false_alarms(hf)


def test_a_rescan_the_lagging_second_url_cannot_give_comes_from_the_first(
    hf: Harness, proxy: RpcProxy
) -> None:
    """The rescan goes to the next URL; when that one lags (no such blocks yet) it is read
    from the first URL again, and the payment is found once."""
    usdc = hf.token("USDC", 6)
    with RpcProxy(hf.node.url) as behind:
        behind.lag_blocks = 8
        chain = hf.chain(rpc_urls=(proxy.url, behind.url))
        pool = hf.pool(chain)
        scan(hf, chain, pool, lambda: NOW)
        tx = hf.node.pay_token(usdc, hf.payer, WALLET, 7)
        proxy.stale_logs_next(1)
        report = scan(hf, chain, pool, lambda: NOW)

    assert [t.tx_hash for t in hf.transfers()] == [tx] and report.unexplained == 0
    assert pool.current_url_redacted == proxy.url
    no_false_alarms(hf)


def test_unexplained_token_growth_raises_an_alert_naming_the_token(
    hf: Harness, proxy: RpcProxy
) -> None:
    """A backend that keeps answering [] for logs: after the rescan, watcher.unexplained_balance
    names USDC and its address; a rescan once the backend is healthy finds the payment."""
    usdc = hf.token("USDC", 6)
    chain = hf.chain(rpc_urls=(proxy.url,))
    hf.scan(chain)
    start = hf.node.head() + 1
    tx = hf.node.pay_token(usdc, hf.payer, WALLET, 42)

    proxy.stale_logs_next(10)
    report = scan(hf, chain, hf.pool(chain), lambda: NOW)

    assert hf.transfers() == [] and report.unexplained == 1
    (event,) = hf.events("watcher.unexplained_balance")
    assert (event["asset"], event["token_address"]) == ("USDC", usdc)
    assert (event["actual_growth"], event["expected_growth"], event["unexplained"]) == (
        "42", "0", "42",
    )  # fmt: skip
    assert event["from_block"] <= start <= event["to_block"]

    proxy.clear_faults()
    scan_chain(chain, hf.pool(chain), hf.engine, lambda: NOW, hooks=hf.hooks, from_block=start)
    assert [t.tx_hash for t in hf.transfers()] == [tx]


def test_token_guard_explains_spending_and_can_be_switched_off(
    hf: Harness, proxy: RpcProxy
) -> None:
    """The wallet's own outgoing token transfers explain a smaller balance (no alert), and a
    token with balance_guard = false is never asked for balanceOf."""
    wallet = hf.node.accounts[3]
    usdc = hf.token("USDC", 6)
    hf.node.pay_token(usdc, hf.payer, wallet, 1000)
    chain = hf.chain(rpc_urls=(proxy.url,), receiving_address=wallet)
    hf.scan(chain)
    hf.node.pay_token(usdc, hf.payer, wallet, 500)
    hf.node.pay_token(usdc, wallet, hf.payer, 700)  # the wallet pays someone
    hf.node.pay_token(usdc, wallet, wallet, 5)  # and itself

    report = scan(hf, chain, hf.pool(chain), lambda: NOW)

    assert report.found == 1 and report.unexplained == 0
    no_false_alarms(hf)

    unguarded = TokenSettings("USDC", usdc, 6, balance_guard=False)
    chain = hf.chain(rpc_urls=(proxy.url,), receiving_address=wallet, tokens=(unguarded,))
    proxy.calls.clear()
    hf.node.pay_token(usdc, hf.payer, wallet, 1)
    scan(hf, chain, hf.pool(chain), lambda: NOW)
    assert proxy.calls["eth_call"] == 0 and proxy.calls["eth_getLogs"] >= 1


# --- trap 4: cross-check --------------------------------------------------------------------


def test_cross_check_disagreement_is_an_alert_never_a_final(hf: Harness, proxy: RpcProxy) -> None:
    """With cross_check, a second URL returning another block hash for the receipt keeps the
    payment seen and raises one watcher.cross_check_mismatch; when it agrees, it is final."""
    hf.node.mine(3)
    tx = hf.pay(10)
    hf.node.mine(3)  # already final when first seen: still needs the second provider
    proxy.disagree = True
    chain = hf.chain(rpc_urls=(hf.node.url, proxy.url), cross_check=True)
    pool = hf.pool(chain)

    scan(hf, chain, pool, lambda: NOW)
    hf.node.mine(1)
    scan(hf, chain, pool, lambda: NOW)

    assert statuses(hf) == {tx: "seen"} and hf.hooks.uids("finalized") == []
    (alert,) = hf.events("watcher.cross_check_mismatch")
    assert alert["tx_hash"] == tx and "disagrees" in alert["reason"]

    proxy.disagree = False
    report = scan(hf, chain, pool, lambda: NOW)
    assert report.finalized == 1 and statuses(hf) == {tx: "final"}
    no_false_alarms(hf)


def test_cross_check_waits_for_a_lagging_second_url(hf: Harness, proxy: RpcProxy) -> None:
    """A second URL that does not hold the block as final yet is a wait, not an alert."""
    hf.node.mine(10)
    tx = hf.pay(10)
    proxy.lag_blocks = 4
    chain = hf.chain(rpc_urls=(hf.node.url, proxy.url), cross_check=True)
    pool = hf.pool(chain)
    scan(hf, chain, pool, lambda: NOW)
    hf.node.mine(3)

    scan(hf, chain, pool, lambda: NOW)
    assert statuses(hf) == {tx: "seen"}
    assert hf.events("watcher.cross_check_mismatch") == []

    hf.node.mine(5)
    report = scan(hf, chain, pool, lambda: NOW)
    assert report.finalized == 1 and statuses(hf) == {tx: "final"}
    no_false_alarms(hf)
