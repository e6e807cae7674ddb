"""What one steady-state poll asks the node for, counted at a proxy in front of the scripted
node and of a real Anvil node, in each ``internal`` mode: each header once (the head's serves
the chunk ending there, proven by the end balance asked by its hash), the finality tag only
while something awaits finality, and the balances at a range's start taken from the previous
poll's end while the cursor still links.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support.rpcproxy import RpcFault, RpcProxy
from tests.support.scan_harness import ETH, NODE_MODES, WALLET, Harness, harness
from tests.support.scripted_node import ScriptedNode
from watcher.chain.rpc import RpcPool
from watcher.errors import WatcherError
from watcher.settings import ChainSettings
from watcher.store.db import read_session
from watcher.store.tables import BlockHash

HEADER = "eth_getBlockByNumber"


@pytest.fixture(params=NODE_MODES)
def hc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """A harness on each node and mode, finalized = latest - 2."""
    yield from harness(request, tmp_path, fast=True)


class Counted:
    """One chain polled through one pool (as the daemon keeps it), behind a counting proxy."""

    def __init__(self, h: Harness, proxy: RpcProxy) -> None:
        self.h, self.proxy = h, proxy
        self.chain: ChainSettings = h.chain(rpc_urls=(proxy.url,))
        self.pool: RpcPool = h.pool(self.chain)

    def poll(self) -> tuple[Counter[str], int]:
        """One poll: the calls it sent by method, and the transfers it found."""
        before = self.proxy.calls.copy()
        report = self.h.scan(self.chain, self.pool)
        return self.proxy.calls - before, report.found


@pytest.fixture
def counted(hc: Harness) -> Iterator[Counted]:
    """A guarded token, some blocks, and a first poll that caught up (nothing awaits
    finality afterwards: there is no transfer yet)."""
    hc.token("USDC", 6)
    hc.node.mine(10)
    with RpcProxy(hc.node.url) as proxy:
        c = Counted(hc, proxy)
        c.poll()
        yield c


def by_hash(c: Counted, before: Counter[tuple[str, str]]) -> list[str]:
    """The methods asked with a block hash since ``before`` (EIP-1898 state reads)."""
    return sorted(k[0] for k in c.proxy.asked - before if "blockHash" in k[1])


def test_a_quiet_one_block_poll_reads_the_heads_header_only(counted: Counted) -> None:
    """With nothing awaiting finality a poll over one new block asks one header, the head's
    (its parent hash is the link to the cursor), and the end balances (the wallet's and the
    guarded token's) by the head's hash in the range's batch, and no finality tag;
    debug_trace reads the block's header again."""
    counted.h.node.mine(1)
    before = counted.proxy.asked.copy()
    calls, found = counted.poll()
    dense = counted.h.internal == "debug_trace"
    assert found == 0
    assert calls[HEADER] == (2 if dense else 1)
    assert by_hash(counted, before) == ([] if dense else ["eth_call", "eth_getBalance"])
    head_hash = counted.h.node.block_hash("latest")
    assert dense or any(head_hash in k[1] for k in counted.proxy.asked - before)
    assert counted.h.state().cursor == counted.h.node.head()


def test_a_quiet_range_links_by_state_not_by_its_first_header(counted: Counted) -> None:
    """A poll over several new quiet blocks asks the head's header only, and links to the
    cursor by a state read at the cursor's block hash (EIP-1898), not by its first block's
    header, and ends with state reads at the head's hash; debug_trace reads every block's."""
    cursor_hash = counted.h.state().cursor_hash
    counted.h.node.mine(8)
    before = counted.proxy.asked.copy()
    calls, _ = counted.poll()
    dense = counted.h.internal == "debug_trace"
    assert calls[HEADER] == 1 + (8 if dense else 0)
    probes = [k[1] for k in counted.proxy.asked - before if "blockHash" in k[1]]
    assert by_hash(counted, before) == ([] if dense else ["eth_call"] + ["eth_getBalance"] * 2)
    head_hash = counted.h.node.block_hash("latest")
    assert dense or sorted(cursor_hash in p for p in probes) == [False, False, True]
    assert dense or sorted(head_hash in p for p in probes) == [False, True, True]
    assert counted.h.state().cursor_hash == head_hash


def test_start_balances_come_from_the_previous_polls_end(counted: Counted) -> None:
    """A quiet poll reads the native balance (and the nonce without traces) and each guarded
    token's balance at its range's end only: its start is the previous poll's end."""
    counted.h.node.mine(3)
    calls, _ = counted.poll()
    link = 0 if counted.h.internal == "debug_trace" else 1  # the state link to the cursor
    assert calls["eth_getBalance"] == 1 + link
    assert calls["eth_call"] == 1  # balanceOf(wallet) of the one guarded token
    assert calls["eth_getTransactionCount"] == (1 if counted.h.internal == "off" else 0)


def test_finality_tag_is_read_while_a_transfer_waits_and_never_makes_it_final_early(
    counted: Counted,
) -> None:
    """The poll that finds a payment reads the finality tag after scanning and leaves the
    payment seen (the tag is below it); polls while it waits read the tag again; once final,
    quiet polls stop asking for it, and the recorded final block never moves down."""
    h = counted.h
    tx = h.pay(ETH)
    h.node.mine(1)
    calls, found = counted.poll()
    assert found == 1
    assert [t.status for t in h.transfers(tx_hash=tx)] == ["seen"]
    head_and_tag = 2
    assert calls[HEADER] >= head_and_tag
    finals = [h.state().final_block]
    h.node.mine(3)  # finalized = latest - 2 passes the payment's block
    calls, _ = counted.poll()
    assert [t.status for t in h.transfers(tx_hash=tx)] == ["final"]
    finals.append(h.state().final_block)
    h.node.mine(1)
    calls, _ = counted.poll()
    dense = h.internal == "debug_trace"
    assert calls[HEADER] == (2 if dense else 1)  # nothing waits: the head (debug: its block)
    finals.append(h.state().final_block)
    assert finals == sorted(finals) and finals[-1] == finals[-2]  # kept, not re-read
    assert h.state().balance == h.node.balance(WALLET)


def test_after_a_reorg_the_start_balances_are_read_again(counted: Counted) -> None:
    """A reorg that replaces a payment with a smaller one rewinds the cursor: the balances
    kept from before it are not reused, the guard stays quiet and the stored balance is the
    node's."""
    h = counted.h
    old = h.pay(1000)  # in the head block: not final yet (finalized = latest - 2)
    counted.poll()
    replacement = h.node.new_payment(h.payer, WALLET, 777)
    h.node.reorg(1, [(replacement, 0)])
    h.node.mine(1)
    _, found = counted.poll()
    assert found == 1
    by_tx = {t.tx_hash: t for t in h.transfers()}
    assert by_tx[old].status == "orphaned"
    assert h.events("watcher.unexplained_balance") == []
    assert h.state().balance == h.node.balance(WALLET)


@pytest.fixture(params=[pytest.param("anvil", marks=pytest.mark.anvil)])
def anvil_counted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Counted]:
    """The counted chain on a real Anvil node (it caps trace_filter at 300 blocks)."""
    for h in harness(request, tmp_path, fast=True):
        h.token("USDC", 6)
        h.node.mine(10)
        with RpcProxy(h.node.url) as proxy:
            c = Counted(h, proxy)
            c.poll()
            yield c


def test_trace_filter_takes_the_nodes_stated_limit_and_keeps_it(anvil_counted: Counted) -> None:
    """1,000 quiet blocks cost one refused trace_filter and four at Anvil's stated limit of
    300 (not a halving cascade), then four per 1,000 blocks with no refusal, nine calls in all
    with one guarded token, also after the sizer's reprobe."""
    c = anvil_counted
    c.h.node.mine(1000)
    first, _ = c.poll()
    assert first["trace_filter"] == 1 + 4
    for _ in range(3):
        c.h.node.mine(1000)
        calls, _ = c.poll()
        assert calls["trace_filter"] == 4
        assert sum(calls.values()) == 9, calls  # + head, logs, link, end balance, token


@pytest.fixture(params=["scripted"])
def old_node(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Counted]:
    """The counted chain on a scripted node that does not take a block by hash (EIP-1898)."""
    number = ScriptedNode._number

    def by_number_only(node: ScriptedNode, ref: Any) -> int:
        if isinstance(ref, dict):
            raise RpcFault(-32602, "invalid argument 1: hex string without 0x prefix")
        return number(node, ref)

    monkeypatch.setattr(ScriptedNode, "_number", by_number_only)
    for h in harness(request, tmp_path, fast=True):
        h.node.mine(10)
        with RpcProxy(h.node.url) as proxy:
            yield Counted(h, proxy)


def test_a_node_refusing_the_state_link_is_linked_by_header_from_then_on(
    old_node: Counted,
) -> None:
    """A node that refuses a block by hash has the range read again with the head's header in
    its batch (the first catch-up still scans to the head), one log line says so, and it is
    not asked that way again: later ranges link by block first's header."""
    c = old_node
    tx = c.h.pay(ETH)
    c.h.node.mine(3)  # final at once (finalized = latest - 2): later polls have nothing waiting
    with structlog.testing.capture_logs() as logs:
        c.poll()
    assert [e["event"] for e in logs].count("scan.link_by_header") == 1
    assert c.h.state().cursor == c.h.node.head()
    assert [t.tx_hash for t in c.h.transfers()] == [tx]
    for _ in range(2):
        c.h.node.mine(5)
        before = c.proxy.asked.copy()
        calls, _ = c.poll()
        assert by_hash(c, before) == []
        assert calls[HEADER] == 3 and c.h.state().cursor == c.h.node.head()  # head, first, last


def test_a_configured_trace_range_is_asked_first_with_no_refusal(
    anvil_counted: Counted,
) -> None:
    """With ``max_trace_range`` at the provider's limit (Anvil: 300) the first 1,000 quiet
    blocks already cost four trace_filter calls and no refused one, and nine calls in all
    with one guarded token (ten with two)."""
    c = anvil_counted
    c.chain = c.h.chain(rpc_urls=(c.proxy.url,), max_trace_range=300)
    c.pool = c.h.pool(c.chain)
    c.h.node.mine(1)
    c.poll()  # a chunk on this pool: its end balances are the next range's start
    c.h.node.mine(1000)
    calls, _ = c.poll()
    assert calls["trace_filter"] == 4
    assert sum(calls.values()) == 9, calls


def lagging_after(proxy: RpcProxy, fresh: set[int]) -> Any:
    """Make every POST but those numbered in ``fresh`` (1: the poll's first) come from a
    backend one block behind; returns the proxy's own view, to put back."""
    real_view, posts = proxy._view, [0]

    def behind() -> Any:
        posts[0] += 1
        proxy.lag_blocks = 0 if posts[0] in fresh else 1
        return real_view()

    proxy._view = behind  # type: ignore[method-assign]
    return real_view


@pytest.mark.parametrize("guard", ["native", "token", "none"])
def test_a_range_answered_by_a_backend_behind_the_head_is_not_skipped(
    counted: Counted, guard: str
) -> None:
    """The poll's head comes from an up-to-date backend and the range's batch from one a block
    behind (a load balancer): the payment in the head block is not skipped past, whether the
    range's end balance by the head's hash is the wallet's (balance guard), a guarded token's
    (a token payment: then only that read shows the block missing), or there is none (the
    head's header is read in the batch), and a later poll finds the payment once."""
    h, proxy = counted.h, counted.proxy
    tokens = tuple(replace(t, balance_guard=guard == "token") for t in h.tokens)
    chain = h.chain(rpc_urls=(proxy.url,), balance_guard=guard == "native", tokens=tokens)
    counted.chain, counted.pool = chain, h.pool(chain)
    counted.poll()  # the new pool's first use (it checks the chain id) is not the lagging poll
    usdc = h.tokens[0].address
    head = h.node.head()
    native = guard == "native"
    tx = h.pay(10**15) if native else h.node.pay_token(usdc, h.payer, WALLET, 10**6)
    if h.node.head() == head:
        h.node.mine(1)  # the payment in a new head block
    real_view = lagging_after(proxy, {1})

    try:
        counted.poll()
    except WatcherError:
        pass  # the node cannot be read consistently: the cursor stays before the head
    finally:
        proxy._view = real_view  # type: ignore[method-assign]
        proxy.lag_blocks = 0
    assert h.state().cursor < h.node.head() or [t.tx_hash for t in h.transfers()] == [tx]
    counted.poll()
    assert [t.tx_hash for t in h.transfers()] == [tx]


def test_a_range_batch_from_a_lagging_backend_is_read_again_in_the_same_poll(
    counted: Counted,
) -> None:
    """Only the range's batch comes from a backend behind the head: the end proof by the
    head's hash fails, the range is read again with the head's header in its batch, and the
    same poll finds the payment; a lagging node is not a node refusing the form, so the next
    poll asks by hash again."""
    h, proxy = counted.h, counted.proxy
    if h.internal == "debug_trace":
        pytest.skip("debug_trace reads the head's header in the range's batch (test above)")
    tx = h.pay(10**15)
    real_view = lagging_after(proxy, {1, 3, 4, 5, 6})  # the head, then all but the range's POST
    try:
        with structlog.testing.capture_logs() as logs:
            calls, found = counted.poll()
    finally:
        proxy._view = real_view  # type: ignore[method-assign]
        proxy.lag_blocks = 0
    assert found == 1 and [t.tx_hash for t in h.transfers()] == [tx]
    assert [e["event"] for e in logs].count("scan.head_unproven") == 1
    assert calls[HEADER] >= 2  # the head, and the re-read's own header of it
    h.node.mine(1)
    before = proxy.asked.copy()
    counted.poll()
    assert by_hash(counted, before) == ["eth_call", "eth_getBalance"]


@pytest.fixture(params=["stamped", pytest.param("anvil", marks=pytest.mark.anvil)])
def stamped(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Counted]:
    """The counted chain on nodes whose logs name their block's time (no header needed for
    it), with a reorg window of 8 blocks, not polled yet."""
    for h in harness(request, tmp_path, fast=True):
        h.token("USDC", 6)
        h.node.mine(10)
        with RpcProxy(h.node.url) as proxy:
            c = Counted(h, proxy)
            c.chain = h.chain(rpc_urls=(proxy.url,), reorg_depth=8)
            c.pool = h.pool(c.chain)
            yield c


def token_paid_block(h: Harness) -> int:
    """A USDC payment to the wallet in a new block: that block's number."""
    head = h.node.head()
    h.node.pay_token(h.tokens[0].address, h.payer, WALLET, 10**6)
    if h.node.head() == head:
        h.node.mine(1)
    return h.node.head()


def headers_asked(c: Counted, before: Counter[tuple[str, str]]) -> set[int]:
    """The block numbers whose header was asked by number since ``before``."""
    asked = (json.loads(k[1])[0] for k in c.proxy.asked - before if k[0] == HEADER)
    return {int(ref, 16) for ref in asked if ref.startswith("0x")}


def test_only_hit_blocks_in_the_reorg_window_have_their_headers_read(stamped: Counted) -> None:
    """A scan stopped below the head (``--to``) reads no header of a hit block further than
    ``reorg_depth`` below the head, though it is near the range's end (its hash is not kept
    for long); the poll to the head reads none for a hit at or below the final block (no
    reorg forks there) and reads the header of a hit above it, whose parent hash is kept for
    an exact rewind."""
    c, h = stamped, stamped.h  # reorg_depth 8, final = head - 2
    deep = token_paid_block(h)
    h.node.mine(40)
    final = token_paid_block(h)
    near = token_paid_block(h)
    h.node.mine(1)
    before = c.proxy.asked.copy()
    h.scan(c.chain, c.pool, to_block=deep + 2)  # the first poll: it reads the finality tag
    assert deep not in headers_asked(c, before)
    assert [t.block_number for t in h.transfers()] == [deep]
    assert h.state().final_block == final
    before = c.proxy.asked.copy()
    c.poll()
    assert final not in headers_asked(c, before) and near in headers_asked(c, before)
    assert [t.block_number for t in h.transfers()] == [deep, final, near]
    with read_session(h.engine) as session:  # the hit's parent hash, from its header
        kept = session.get(BlockHash, ("anvil", near))
    assert kept is not None and kept.parent_hash == h.node.block_hash(near - 1)
