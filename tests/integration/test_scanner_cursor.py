"""The chain scanner's cursor and its troubles, one suite on two nodes (real Anvil and the
scripted node) with a real SQLite file: restarts resume without gaps, a dead URL or a refusing
provider is worked around, keys never leak, the balance guard flags what it cannot explain,
an idle poll is cheap, and a failing hook rolls the whole chunk back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlmodel import Session, select

from tests.support.anvil import free_port
from tests.support.rpcproxy import RpcProxy
from tests.support.scan_harness import (
    NODE_MODES,
    NOW,
    OTHER,
    WALLET,
    Harness,
    RecordingHooks,
    harness,
)
from watcher.errors import Refused, RpcError
from watcher.store.db import read_session
from watcher.store.tables import BlockHash, Transfer


@pytest.fixture(params=NODE_MODES)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on a node whose finalized block trails the head by 64."""
    yield from harness(request, tmp_path, fast=False)


# --- restarts and RPC trouble ---------------------------------------------------------------


def test_restart_resumes_from_the_cursor_without_gaps_or_duplicates(h: Harness) -> None:
    """A new pool and scanner on the same database continue where the cursor stopped."""
    usdc = h.token("USDC", 6)
    first = {h.pay(10 + i) for i in range(3)}
    middle = h.node.head()
    h.scan(to_block=middle)
    later = {h.node.pay_token(usdc, h.payer, WALLET, 20 + i) for i in range(3)}
    later.add(h.pay(99))

    report = h.scan()  # a fresh pool, as after a restart
    again = h.scan(from_block=1)  # and a rescan of everything adds nothing

    assert report.cursor_before == middle and report.found == 4
    assert again.found == 0 and again.cursor_after == h.node.head()
    assert {t.tx_hash for t in h.transfers()} == first | later
    assert len(h.transfers()) == 7
    # Headers, not blocks: the hashes kept are the chunk boundaries and the blocks with a
    # transfer (no longer every block), each the node's hash for that block.
    kept = h.hashes()
    assert {h.node.head()} | {t.block_number for t in h.transfers()} <= set(kept)
    with read_session(h.engine) as session:
        stored = {b.number: b.hash for b in session.exec(select(BlockHash)).all()}
    assert all(h.node.block_hash(n) == stored[n] for n in kept)


def test_first_rpc_url_dead_means_the_second_is_used(h: Harness) -> None:
    """With the first URL refusing connections the scan goes through the second one."""
    tx = h.pay(1)
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
        sent.add(h.node.pay_token(usdc, h.payer, WALLET, 100 + i))
        h.node.mine(2)
    with RpcProxy(h.node.url, max_log_range=3) as proxy:
        chain = h.chain(rpc_urls=(proxy.url,))
        h.scan(chain)
        assert proxy.calls["eth_getLogs"] > h.node.head() // 3

    assert {t.tx_hash for t in h.transfers()} == sent


def test_rpc_url_key_never_reaches_logs_or_chain_state(h: Harness) -> None:
    """A key in the URL path is absent from every log line and from ChainState.last_error."""
    h.pay(1)
    with RpcProxy(h.node.url) as proxy, structlog.testing.capture_logs() as logs:
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
    forwarder = h.node.forwarder()
    h.node.mine(4)
    tx = h.forward(forwarder, 12345)
    h.node.mine(6)

    report = h.scan(h.chain(internal="off"))

    assert h.transfers() == [] and report.unexplained == 1
    (event,) = h.events("watcher.unexplained_balance")
    assert event["block"] == h.node.block_of(tx)
    assert (event["expected_growth"], event["actual_growth"]) == ("0", "12345")
    assert (event["from_block"], event["to_block"]) == (0, h.node.head())


def test_balance_guard_stays_quiet_for_explained_inflows_and_spending(h: Harness) -> None:
    """Native, internal and token inflows, and the wallet's own spending, explain the balance
    (without traces: the native and token ones, the internal one being the guard's to flag)."""
    wallet = h.node.accounts[3]  # a funded dev account, so it can spend
    usdc = h.token("USDC", 6)
    forwarder = h.node.forwarder()
    traces = h.internal != "off"
    h.scan(h.chain(receiving_address=wallet))
    h.pay(10**17, to=wallet)
    if traces:
        h.forward(forwarder, 10**16, to=wallet)
    h.node.pay_token(usdc, h.payer, wallet, 5)
    h.node.pay_native(wallet, OTHER, 3 * 10**16)  # the wallet spends: value + gas
    h.node.pay_native(wallet, wallet, 1)  # and pays itself: gas only
    h.node.mine(2)

    report = h.scan(h.chain(receiving_address=wallet))

    assert report.found == (3 if traces else 2) and report.unexplained == 0
    assert h.events("watcher.unexplained_balance") == []
    assert h.state().balance == h.node.balance(wallet)


def test_idle_poll_costs_at_most_two_requests(h: Harness) -> None:
    """A poll with no new block (and nothing awaiting finality) sends at most two requests."""
    usdc = h.token("USDC", 6)
    h.node.pay_token(usdc, h.payer, WALLET, 5)
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
    h.pay(1)
    h.scan(to_block=0)
    h.hooks = FailingHooks()

    with pytest.raises(RuntimeError, match="settlement failed"):
        h.scan()

    assert h.transfers() == []
    assert h.state().cursor == 0
    assert h.hashes() == [0]


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
    early = h.pay(1)
    h.node.mine(2)
    late = h.pay(2)
    chain = h.chain(start_block=h.node.block_of(early) + 1)

    report = h.scan(chain)

    assert report.cursor_before == h.node.block_of(early)
    assert [t.tx_hash for t in h.transfers()] == [late]


def test_reorg_replacing_every_stored_block_rewinds_to_the_start(h: Harness) -> None:
    """A reorg of all scanned blocks rewinds to the parent of the first one, not a violation."""
    h.node.mine(3)
    start = h.node.head() + 1
    tx = h.pay(5)
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
    assert h.state().cursor_hash == h.node.block_hash("latest")
