"""The chain's clock end to end: a payment's time is its block's timestamp, and deadlines follow
the chain, not the watcher. The real program against a real Anvil node whose clock starts at
``GENESIS`` (before T0); each test puts its blocks at the times WATCHER_NOW says with
``evm_setNextBlockTimestamp`` (``Chain.at``), so both clocks tell the same story.

The ledger is ``chain_harness.build_template``: RET-1 "Acme GmbH" 1500 USDC/month with INV-1
asking 1500.000001, RET-2 "Globex" 900 USDC/month with INV-2 asking 900.000001, both issued at
T0 and due 2026-03-09T09:00:00Z.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.chain_harness import (
    Chain,
    Workspace,
    build_template,
    chain_node,
    setup_chain,
    usdc,
)

pytestmark = pytest.mark.anvil

MINED = "2026-03-03T08:00:00Z"  # the payment's block
SEEN = "2026-03-03T10:00:00Z"  # when the watcher scans


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    """One Anvil node with the tokens and funded payers, its clock starting at GENESIS."""
    with chain_node() as node:
        yield setup_chain(node)


@pytest.fixture(scope="module")
def template(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The ledger every test copies: two approved retainers with their first invoices."""
    return build_template(chain, tmp_path_factory.mktemp("clock") / "template")


@pytest.fixture
def ws(chain: Chain, template: Workspace, tmp_path: Path) -> Workspace:
    """The chain back at its snapshot and a private copy of the template ledger."""
    chain.reset()
    return template.copy(tmp_path / "ws")


def test_block_time_is_stored_and_shown_in_json_views_and_proof(
    ws: Workspace, chain: Chain
) -> None:
    """A scanned payment and an attached one carry their block's timestamp as ``block_time``
    in ``transfers --json``, the invoice's payments, ``v_payments`` and the frozen proof."""
    chain.at(MINED)
    tx = chain.pay(chain.stranger, usdc("1500.000001"))
    assert chain.block_time(tx) == MINED
    chain.finalize()
    ws.scan(now=SEEN)

    attached_at = "2026-03-03T09:00:00Z"
    chain.at(attached_at)
    tx2 = chain.pay(chain.stranger, usdc("900.000001"))
    ws.ok("invoice", "attach", "INV-2", tx2, now=SEEN, quiet=False)  # before any scan sees it

    transfers, invoice, proof = ws.json_many(
        ("transfers",), ("invoice", "show", "INV-1"), ("proof", "INV-1")
    )
    times = {t["tx_hash"]: (t["block_time"], t["detected_at"]) for t in transfers}
    assert times == {tx: (MINED, SEEN), tx2: (attached_at, SEEN)}
    assert [p["block_time"] for p in invoice["payments"]] == [MINED]
    assert [p["block_time"] for p in proof["payments"]] == [MINED]
    rows = {r["tx_hash"]: r["block_time"] for r in ws.view("v_payments")}
    assert rows == {tx: MINED, tx2: attached_at}
