"""The chain's clock end to end: a payment's time is its block's timestamp, and deadlines follow
the chain, not the watcher. The real program against a real Anvil node whose clock starts at
``GENESIS`` (before T0); each test puts its blocks at the times WATCHER_NOW says with
``evm_setNextBlockTimestamp`` (``Chain.at``), so both clocks tell the same story.

The ledger is ``chain_harness.build_template``: RET-1 "Acme GmbH" 1500 USDC/month with INV-1
asking 1500.000001, RET-2 "Globex" 900 USDC/month with INV-2 asking 900.000001, both issued at
T0 and due 2026-03-09T09:00:00Z.
"""

from __future__ import annotations

import pytest

from tests.e2e.chain_harness import (
    Chain,
    Workspace,
    usdc,
)
from tests.support.postgres import STORES as ALL_STORES

pytestmark = pytest.mark.anvil
STORES = ALL_STORES  # every test here runs on SQLite and on PostgreSQL

MINED = "2026-03-03T08:00:00Z"  # the payment's block
SEEN = "2026-03-03T10:00:00Z"  # when the watcher scans


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


# --- trap 5: deadlines by the chain's clock ------------------------------------------------

MONTH_1_ENDS = "2026-04-03T08:00:00Z"  # cycle 1 starts at MINED
RENEWAL_TIME = "2026-03-30T09:00:00Z"  # INV-3 issued, due 2026-04-06T09:00:00Z
LAPSE_AT = "2026-04-06T08:00:00Z"  # month 1's end + 3 days grace


def settle_month_1(ws: Workspace, chain: Chain) -> None:
    """RET-1's payer pays INV-1 in a block at MINED; final and settled at SEEN; the renewal
    INV-3 is issued by the watcher's clock at RENEWAL_TIME."""
    chain.at(MINED)
    chain.pay(chain.payer, usdc("1500"))
    chain.finalize()
    ws.tick(now=SEEN)
    (cycle,) = ws.json("cycles")
    assert (cycle["starts_at"], cycle["ends_at"]) == (MINED, MONTH_1_ENDS)
    assert ws.tick(now=RENEWAL_TIME)["renewals"]["issued"] == ["INV-3"]


def test_renewal_mined_on_time_while_the_watcher_was_down_is_on_time_and_continues_the_run(
    ws: Workspace, chain: Chain
) -> None:
    """A renewal mined before its due date but first seen two weeks later is ``paid`` (not
    late), and month 2 starts exactly where month 1 ended: no lapse, no gap."""
    settle_month_1(ws, chain)
    chain.at("2026-04-05T12:00:00Z")  # before INV-3's due date and before the lapse deadline
    tx = chain.pay(chain.payer, usdc("1500"))
    chain.mine_at("2026-04-20T00:00:00Z", 2)  # the chain went on; the watcher was down
    ws.tick(now="2026-04-20T00:05:00Z")

    invoice, cycles, retainer = ws.json_many(
        ("invoice", "show", "INV-3"), ("cycles",), ("retainer", "show", "RET-1")
    )
    assert (invoice["status"], invoice["cycle_id"]) == ("paid", "CYC-2")
    assert [p["block_time"] for p in invoice["payments"]] == ["2026-04-05T12:00:00Z"]
    month2 = next(c for c in cycles if c["id"] == "CYC-2")
    assert (month2["starts_at"], month2["ends_at"]) == (MONTH_1_ENDS, "2026-05-03T08:00:00Z")
    assert (month2["period_index"], month2["proof_tx_hash"]) == (2, tx)
    assert retainer["status"] == "active"
    assert ws.events("invoice.paid_late") == [] and ws.events("retainer.lapsed") == []


def test_a_scanner_that_has_not_reached_the_deadline_lapses_nobody(
    ws: Workspace, chain: Chain
) -> None:
    """With the watcher's clock past every deadline but no block scanned after them, nothing
    expires or lapses; once a block later than the deadlines is scanned, both happen."""
    settle_month_1(ws, chain)
    late = "2026-04-10T00:00:00Z"  # past the lapse deadline and INV-3's due + grace (04-09)

    report = ws.tick(now=late)  # the chain's newest block is still from early March
    assert (report["renewals"]["lapsed"], report["renewals"]["expired"]) == ([], [])
    assert (ws.status_of("INV-3"), ws.view("v_retainers", id="RET-1")[0]["status"]) == (
        "open",
        "active",
    )

    chain.mine_at("2026-04-09T12:00:00Z")  # past INV-3's expiry deadline
    report = ws.tick(now=late)
    (state,) = ws.json("status", now=late)["chains"]
    assert state["cursor_time"] == "2026-04-09T12:00:00Z"
    assert report["renewals"]["lapsed"] == ["RET-1"]
    assert sorted(report["renewals"]["expired"]) == ["INV-2", "INV-3"]  # INV-2: due 03-09
    (lapsed,) = ws.events("retainer.lapsed")
    assert lapsed["data"]["unpaid_invoice_id"] == "INV-3"


def test_a_pending_renewal_never_lapses_its_retainer(ws: Workspace, chain: Chain) -> None:
    """A renewal covered by a payment mined before the lapse deadline but not yet final keeps
    the retainer active past the deadline; at finality it is paid and month 2 follows on."""
    settle_month_1(ws, chain)
    chain.at("2026-04-05T12:00:00Z")
    chain.pay(chain.payer, usdc("1500"))
    chain.mine_at("2026-04-07T00:00:00Z")  # past the lapse deadline; the payment is not final

    report = ws.tick(now="2026-04-07T00:05:00Z")
    assert report["renewals"]["lapsed"] == []
    assert ws.status_of("INV-3") == "pending"
    assert ws.view("v_retainers", id="RET-1")[0]["status"] == "active"

    chain.mine(1)
    ws.tick(now="2026-04-07T00:10:00Z")
    assert ws.status_of("INV-3") == "paid"
    (month2,) = ws.view("v_cycles", id="CYC-2")
    assert month2["starts_at"] == MONTH_1_ENDS
    assert ws.events("retainer.lapsed") == []
