"""Matching, settlement, proofs and monthly cycles end to end: the real program against a real
Anvil node and a real SQLite file, with the clock injected through WATCHER_NOW.

One node serves the module; every test starts from the same chain snapshot and its own copy of
a ledger built through the CLI (see ``chain_harness.build_template``): RET-1 "Acme GmbH" 1500
USDC/month with INV-1 asking 1500.000001, RET-2 "Globex" 900 USDC/month with INV-2 asking
900.000001. A payment mined in block B is final once two more blocks are mined.

Every action goes through the program (scan, tick, invoice attach, proof...); intermediate states
are read from the operator SQL views (part of the contract) to spare a process start, the final
ones through the ``--json`` commands.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.e2e.chain_harness import (
    ELSEWHERE,
    LEDGER_TABLES,
    T0,
    WALLET,
    Chain,
    Workspace,
    usdc,
)
from tests.support.postgres import STORES as ALL_STORES

pytestmark = pytest.mark.anvil
STORES = ALL_STORES  # every test here runs on SQLite and on PostgreSQL

T1 = "2026-03-03T10:00:00Z"  # a payment is mined and seen (INV-1 and INV-2 are due 03-09T09:00)
T2 = "2026-03-03T10:30:00Z"  # ... and becomes final
MONTH_1_ENDS = "2026-04-03T10:00:00Z"  # cycle 1 starts at its payment's block time, T1
RENEWAL_TIME = "2026-03-30T08:00:00Z"  # within renewal_lead_days (5) of cycle 1's end


def settle_month_1(ws: Workspace, chain: Chain) -> str:
    """The expected payer pays INV-1's round price in a block at T1; it is seen and final at
    T2 (one scan)."""
    chain.at(T1)
    tx = chain.pay(chain.payer, usdc("1500"))
    chain.finalize()
    ws.scan(now=T2)
    assert ws.status_of("INV-1") == "paid"
    return tx


# --- month 1 ---------------------------------------------------------------------------------


def test_unique_amount_payment_is_pending_then_paid_at_finality_with_proof(
    ws: Workspace, chain: Chain
) -> None:
    """A stranger paying INV-1's unique amount makes it pending, then paid with a frozen proof
    and cycle 1 (from the payment's block time) once the final block reaches the payment,
    telling the world exactly once."""
    chain.at(T1)
    tx = chain.pay(chain.stranger, usdc("1500.000001"))
    receipt = chain.receipt(tx)
    block = receipt["blockNumber"]

    report = ws.scan(now=T1)
    assert (report["head"], report["final_block"], report["found"]) == (block, block - 2, 1)
    (invoice,) = ws.view("v_invoices", id="INV-1")
    assert (invoice["status"], invoice["cycle_id"]) == ("pending", None)
    (payment,) = invoice["payments"]
    assert (payment["tx_hash"], payment["status"], payment["from"]) == (tx, "seen", chain.stranger)
    (detected,) = ws.events("payment.detected")
    assert detected["data"]["rule"] == "amount" and detected["data"]["invoice_id"] == "INV-1"

    chain.mine(1)  # final block = block - 1: not yet
    assert ws.scan(now=T1)["finalized"] == 0
    assert ws.status_of("INV-1") == "pending"

    chain.mine(1)  # final block = block
    assert ws.scan(now=T2)["finalized"] == 1
    invoice, cycles, retainer, proof = ws.json_many(
        ("invoice", "show", "INV-1"), ("cycles",), ("retainer", "show", "RET-1"), ("proof", "INV-1")
    )
    assert invoice["status"] == "paid"
    assert (invoice["paid_amount"], invoice["paid_amount_base_units"]) == (
        "1500.000001",
        "1500000001",
    )
    assert (invoice["overpaid_by"], invoice["cycle_id"]) == ("0", "CYC-1")
    (payment,) = invoice["payments"]
    assert (payment["status"], payment["detected_at"], payment["finalized_at"]) == ("final", T1, T2)
    assert cycles == [
        {
            "id": "CYC-1",
            "retainer_id": "RET-1",
            "period_index": 1,
            "starts_at": T1,
            "ends_at": MONTH_1_ENDS,
            "status": "open",
            "funded_by_invoice": "INV-1",
            "proof_tx_hash": tx,
        }
    ]
    assert retainer["status"] == "active"

    (paid,) = proof["payments"]
    assert paid["tx_hash"] == tx and paid["block_number"] == block
    assert paid["block_hash"] == receipt["blockHash"].to_0x_hex()
    assert paid["final_block"] == block and paid["amount_base_units"] == "1500000001"
    assert paid["from"] == chain.stranger and paid["to"] == WALLET
    assert proof["asset"]["decimals_on_chain"] == 6
    assert proof["asset"]["token_address"] == chain.usdc.address
    assert proof["chain"]["chain_id"] == 31337
    assert proof["invoice"]["id"] == "INV-1" and proof["cycle"]["id"] == "CYC-1"
    approval = proof["retainer"]["approval"]
    assert (approval["approved_by"], approval["approved_at"]) == ("Jane Doe", T0)
    assert proof["retainer"]["terms_hash"] == retainer["terms_hash"]
    assert proof["retainer"]["terms_hash"].startswith("sha256:")
    html = ws.ok("proof", "INV-1", "--format", "html")
    assert tx in html and "Acme GmbH" in html and "Jane Doe" in html

    assert ws.event_types().count("cycle.opened") == 1
    assert ws.event_types().count("payment.finalized") == 1
    (opened,) = ws.events("cycle.opened")
    assert opened["data"]["cycle_id"] == "CYC-1" and opened["data"]["tx_hash"] == tx
    (finalized,) = ws.events("payment.finalized")
    assert finalized["data"]["tx_hash"] == tx and finalized["data"]["invoice_id"] == "INV-1"


def test_expected_payer_paying_the_round_price_pays_the_invoice(
    ws: Workspace, chain: Chain
) -> None:
    """The retainer's expected payer sending the round price, without the tag, pays INV-1."""
    tx = chain.pay(chain.payer, usdc("1500"))
    chain.finalize()
    ws.scan(now=T1)

    invoice = ws.invoice("INV-1")
    assert (invoice["status"], invoice["paid_amount"], invoice["overpaid_by"]) == (
        "paid",
        "1500",
        "0",
    )
    assert [p["tx_hash"] for p in invoice["payments"]] == [tx]
    (detected,) = ws.events("payment.detected")
    assert detected["data"]["rule"] == "payer"
    assert ws.status_of("INV-2") == "open"


def test_two_partial_payments_underpay_then_pay_when_the_second_is_final(
    ws: Workspace, chain: Chain
) -> None:
    """A first partial payment leaves INV-1 underpaid; the second pays it once it is final."""
    first = chain.pay(chain.payer, usdc("700"))
    chain.finalize()
    ws.scan(now=T1)
    (invoice,) = ws.view("v_invoices", id="INV-1")
    assert (invoice["status"], invoice["paid_amount"]) == ("underpaid", "700")
    (underpaid,) = ws.events("invoice.underpaid")
    assert underpaid["data"]["missing"] == "800"

    second = chain.pay(chain.payer, usdc("800.000001"))
    ws.scan(now=T1)
    assert ws.status_of("INV-1") == "pending"

    chain.finalize()
    ws.scan(now=T2)
    invoice, proof = ws.json_many(("invoice", "show", "INV-1"), ("proof", "INV-1"))
    assert (invoice["status"], invoice["paid_amount"], invoice["overpaid_by"]) == (
        "paid",
        "1500.000001",
        "0",
    )
    assert {p["tx_hash"] for p in invoice["payments"]} == {first, second}
    assert {p["tx_hash"] for p in proof["payments"]} == {first, second}
    (cycle,) = ws.view("v_cycles")
    assert cycle["proof_tx_hash"] == second
    assert len(ws.events("invoice.underpaid")) == 1


def test_underpay_tolerance_pays_within_and_reports_beyond(ws: Workspace, chain: Chain) -> None:
    """With a 1 % tolerance, 1485 of 1500 pays INV-1, while 850 of 900 leaves INV-2 underpaid."""
    ws.write_config(tolerance="0.01")
    within = chain.pay(chain.payer, usdc("1485"))
    beyond = chain.pay(chain.payer2, usdc("850"))
    chain.finalize()
    ws.scan(now=T1)

    inv1, inv2 = ws.json("invoice", "list")
    assert (inv1["status"], inv1["paid_amount"], inv1["overpaid_by"]) == ("paid", "1485", "0")
    assert [p["tx_hash"] for p in inv1["payments"]] == [within]
    assert (inv2["status"], inv2["paid_amount"], inv2["cycle_id"]) == ("underpaid", "850", None)
    assert [p["tx_hash"] for p in inv2["payments"]] == [beyond]
    (event,) = ws.events("invoice.underpaid")
    assert event["data"]["invoice_id"] == "INV-2"
    assert (event["data"]["paid_amount"], event["data"]["missing"]) == ("850", "41")
    assert [e["data"]["invoice_id"] for e in ws.events("cycle.opened")] == ["INV-1"]


def test_overpayment_pays_with_overpaid_by(ws: Workspace, chain: Chain) -> None:
    """Paying 1600 for an invoice asking 1500.000001 pays it with overpaid_by = the excess."""
    chain.pay(chain.payer, usdc("1600"))
    chain.finalize()
    ws.scan(now=T1)

    invoice, proof = ws.json_many(("invoice", "show", "INV-1"), ("proof", "INV-1"))
    assert (invoice["status"], invoice["paid_amount"], invoice["overpaid_by"]) == (
        "paid",
        "1600",
        "99.999999",
    )
    assert proof["invoice"]["overpaid_by"] == "99.999999"


# --- unassigned transfers and invoice attach -------------------------------------------------


def test_unassigned_transfer_is_listed_then_attached_and_paid_at_finality(
    ws: Workspace, chain: Chain
) -> None:
    """A stranger's round payment matches nothing and is listed as unassigned; attached to
    INV-1 it is pending, and paid once final."""
    tx = chain.pay(chain.stranger, usdc("1500"))
    ws.scan(now=T1)

    (row,) = ws.json("transfers", "--unassigned")
    assert (row["tx_hash"], row["invoice_id"], row["status"]) == (tx, None, "seen")
    assert (row["amount"], row["from"]) == ("1500", chain.stranger)
    (event,) = ws.events("transfer.unassigned")
    assert event["data"]["tx_hash"] == tx
    assert ws.status_of("INV-1") == "open"

    attached = ws.json("invoice", "attach", "INV-1", tx, now=T1, quiet=False)
    assert attached["status"] == "pending"
    assert [p["tx_hash"] for p in attached["payments"]] == [tx]
    (payment,) = ws.view("v_payments")
    assert payment["invoice_id"] == "INV-1"

    chain.finalize()
    ws.scan(now=T2)
    invoice, unassigned = ws.json_many(("invoice", "show", "INV-1"), ("transfers", "--unassigned"))
    assert (invoice["status"], invoice["cycle_id"]) == ("paid", "CYC-1")
    assert unassigned == []
    assert ws.events("payment.detected")[0]["data"]["rule"] == "attached"
    assert len(ws.events("payment.finalized")) == 1
    assert len(ws.events("cycle.opened")) == 1


def test_attaching_a_transfer_that_is_already_final_pays_at_once(
    ws: Workspace, chain: Chain
) -> None:
    """An unassigned transfer attached after it became final settles INV-2 at once, with its
    payment.finalized event and the token's decimals read on chain in the proof."""
    chain.at(T1)
    tx = chain.pay(chain.stranger, usdc("900"))
    chain.finalize()
    ws.scan(now=T1)
    (row,) = ws.view("v_payments")
    assert (row["tx_hash"], row["status"], row["invoice_id"]) == (tx, "final", None)

    attached = ws.json("invoice", "attach", "INV-2", tx, now=T2, quiet=False)
    assert (attached["status"], attached["cycle_id"]) == ("paid", "CYC-1")
    proof = ws.json_doc("proof", "INV-2")
    assert proof["payments"][0]["tx_hash"] == tx and proof["payments"][0]["final_block"] > 0
    assert proof["asset"]["decimals_on_chain"] == 6
    (finalized,) = ws.events("payment.finalized")
    assert (finalized["data"]["tx_hash"], finalized["data"]["invoice_id"]) == (tx, "INV-2")
    (opened,) = ws.events("cycle.opened")
    # the month starts at the payment's block time, not when it was attached
    assert (opened["data"]["invoice_id"], opened["data"]["starts_at"]) == ("INV-2", T1)


def test_attach_refuses_what_does_not_pay_the_invoice_and_writes_nothing(
    ws: Workspace, chain: Chain, tmp_path: Path
) -> None:
    """Attaching a tx to another address, in another asset, that reverted, or that already
    pays another invoice is refused with exit 3 and one line (a malformed hash: exit 2), and
    leaves the database exactly as it was."""
    used = chain.pay(chain.stranger, usdc("1500.000001"))  # pays INV-1 by its unique amount
    elsewhere = chain.pay(chain.stranger, usdc("900.000001"), to=ELSEWHERE)
    ether = chain.pay_eth(chain.stranger, 10**18)
    dai = chain.pay(chain.stranger, 900 * 10**18, token=chain.dai)
    reverted = chain.pay_reverting(chain.broke, usdc("900.000001"))
    ws.scan(now=T1)
    assert ws.status_of("INV-1") == "paid"

    cases: dict[str, tuple[str, int, tuple[str, ...]]] = {
        "elsewhere": (elsewhere, 3, ("no USDC transfer", WALLET)),
        "ether": (ether, 3, ("native", "USDC")),
        "dai": (dai, 3, ("another token", "USDC")),
        "reverted": (reverted, 3, (reverted, "reverted")),
        "used": (used, 3, (used, "already allocated to INV-1")),
        "malformed": ("0x1234", 2, ("0x1234",)),
    }

    def attempt(name: str) -> tuple[str, list[str], CompletedProcess[str], list[str]]:
        copy = ws.copy(tmp_path / name)
        before = copy.dump()
        result = copy.run("invoice", "attach", "INV-2", cases[name][0], now=T1)
        return name, before, result, copy.dump()

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(attempt, cases))
    for name, before, result, after in outcomes:
        _, code, words = cases[name]
        assert result.returncode == code, (name, result.returncode, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("proofwatch: error: "), (name, lines)
        for word in words:
            assert word in lines[0], (name, word, lines[0])
        assert result.stdout == "", (name, result.stdout)
        assert after == before, f"{name}: the database changed"


# --- reorgs ----------------------------------------------------------------------------------


def test_reorg_before_finality_orphans_the_payment_and_reopens_the_invoice(
    ws: Workspace, chain: Chain
) -> None:
    """A reorg that drops the payment's block before it is final puts INV-1 back to open and
    emits payment.orphaned; no cycle opens as the chain moves on."""
    chain.mine(1)  # scanned with the payment: the common ancestor the scanner will find
    tx = chain.pay(chain.stranger, usdc("1500.000001"))
    chain.mine(1)
    ws.scan(now=T1)
    assert ws.status_of("INV-1") == "pending"

    chain.node.reorg(2)  # the payment's block and the next one are replaced by empty blocks
    report = ws.scan(now=T2)
    assert (report["reorgs"], report["orphaned"]) == (1, 1)
    (orphaned,) = ws.events("payment.orphaned")
    assert (orphaned["data"]["tx_hash"], orphaned["data"]["invoice_id"]) == (tx, "INV-1")

    chain.finalize()
    ws.scan(now=T2)
    invoice, transfers, cycles = ws.json_many(
        ("invoice", "show", "INV-1"), ("transfers",), ("cycles",)
    )
    assert (invoice["status"], invoice["payments"], invoice["paid_amount"]) == ("open", [], "0")
    (row,) = transfers
    assert (row["tx_hash"], row["status"], row["invoice_id"]) == (tx, "orphaned", None)
    assert cycles == []
    assert "payment.finalized" not in ws.event_types()


# --- month 2, lapse, late payment ------------------------------------------------------------


def test_renewal_is_issued_before_the_month_ends_and_funds_the_next_month(
    ws: Workspace, chain: Chain
) -> None:
    """Within renewal_lead_days of cycle 1's end, tick issues INV-3 for month 2; paying it
    opens cycle 2 exactly where cycle 1 ends."""
    settle_month_1(ws, chain)
    ws.tick(now="2026-03-29T09:30:00Z")  # half an hour before the 5-day lead time
    assert [row["id"] for row in ws.view("v_invoices", retainer_id="RET-1")] == ["INV-1"]

    ws.tick(now=RENEWAL_TIME)
    (renewal,) = ws.view("v_invoices", id="INV-3")
    assert (renewal["kind"], renewal["period_index"], renewal["status"]) == ("renewal", 2, "open")
    assert (renewal["retainer_id"], renewal["price"]) == ("RET-1", "1500")
    assert renewal["issued_at"] == RENEWAL_TIME and renewal["due_at"] == "2026-04-06T08:00:00Z"
    (issued,) = ws.events("invoice.renewal_issued")
    assert issued["data"]["invoice_id"] == "INV-3" and issued["data"]["period_index"] == 2

    chain.at("2026-04-01T11:00:00Z")
    tx = chain.pay(chain.stranger, int(renewal["amount_base_units"]))
    chain.finalize()
    ws.tick(now="2026-04-01T12:00:00Z")

    renewal, cycles, proof = ws.json_many(
        ("invoice", "show", "INV-3"), ("cycles", "--retainer", "RET-1"), ("proof", "INV-3")
    )
    assert (renewal["status"], renewal["cycle_id"]) == ("paid", "CYC-2")
    by_id = {c["id"]: c for c in cycles}
    assert by_id["CYC-1"]["ends_at"] == MONTH_1_ENDS
    assert by_id["CYC-2"] == {
        "id": "CYC-2",
        "retainer_id": "RET-1",
        "period_index": 2,
        "starts_at": MONTH_1_ENDS,
        "ends_at": "2026-05-03T10:00:00Z",
        "status": "open",
        "funded_by_invoice": "INV-3",
        "proof_tx_hash": tx,
    }
    assert proof["cycle"]["starts_at"] == MONTH_1_ENDS
    assert [e["data"]["cycle_id"] for e in ws.events("cycle.opened")] == ["CYC-1", "CYC-2"]
    assert len(ws.events("invoice.renewal_issued")) == 1


def test_unpaid_renewal_lapses_the_retainer_and_a_late_payment_opens_a_fresh_month(
    ws: Workspace, chain: Chain
) -> None:
    """Past cycle end + grace (on the chain's clock too) with the renewal unpaid the retainer
    lapses and the renewal expires; paying it later is paid_late and opens a cycle from its
    block time."""
    settle_month_1(ws, chain)
    ws.tick(now=RENEWAL_TIME)
    assert ws.status_of("INV-3") == "open"

    lapse_time = "2026-04-10T00:00:00Z"  # end 04-03 + 3 days grace; due 04-06 + 3 days
    chain.mine_at(lapse_time)  # the chain's clock is past both deadlines too
    report = ws.tick(now=lapse_time)
    assert report["renewals"]["lapsed"] == ["RET-1"]
    assert "INV-3" in report["renewals"]["expired"]
    retainer, invoice = ws.json_many(("retainer", "show", "RET-1"), ("invoice", "show", "INV-3"))
    assert retainer["status"] == "lapsed"
    assert [c["status"] for c in retainer["cycles"]] == ["lapsed"]
    assert invoice["status"] == "expired"
    (lapsed,) = ws.events("retainer.lapsed")
    assert lapsed["data"]["retainer_id"] == "RET-1"
    assert lapsed["data"]["unpaid_invoice_id"] == "INV-3"
    assert "INV-3" in [e["data"]["invoice_id"] for e in ws.events("invoice.expired")]

    late_time = "2026-04-12T09:30:00Z"
    chain.at(late_time)
    tx = chain.pay(chain.payer, usdc("1500"))
    chain.finalize()
    ws.tick(now=late_time)

    invoice, cycles, retainer = ws.json_many(
        ("invoice", "show", "INV-3"),
        ("cycles", "--retainer", "RET-1"),
        ("retainer", "show", "RET-1"),
    )
    assert (invoice["status"], invoice["cycle_id"]) == ("paid_late", "CYC-2")
    (late,) = ws.events("invoice.paid_late")
    assert late["data"]["invoice_id"] == "INV-3"
    by_id = {c["id"]: c for c in cycles}
    assert by_id["CYC-1"]["status"] == "lapsed"
    assert by_id["CYC-2"]["period_index"] == 2
    assert (by_id["CYC-2"]["starts_at"], by_id["CYC-2"]["ends_at"]) == (
        late_time,
        "2026-05-12T09:30:00Z",
    )
    assert (by_id["CYC-2"]["status"], by_id["CYC-2"]["proof_tx_hash"]) == ("open", tx)
    assert retainer["status"] == "active"
    assert len(ws.events("retainer.lapsed")) == 1


# --- idempotency -----------------------------------------------------------------------------


def test_ticking_again_after_settlement_changes_nothing(ws: Workspace, chain: Chain) -> None:
    """Once INV-1 is settled, further ticks (and a rescan of the same blocks) write nothing."""
    chain.pay(chain.stranger, usdc("1500.000001"))
    chain.finalize()
    ws.tick(now=T1)
    assert ws.status_of("INV-1") == "paid"
    before = ws.dump(LEDGER_TABLES)

    ws.tick(now=T2)
    chain.mine(1)
    ws.tick(now=T2)
    ws.ok("scan", "--from", str(chain.start_block), now=T2, quiet=False)

    assert ws.dump(LEDGER_TABLES) == before
    assert len(ws.events("cycle.opened")) == 1
