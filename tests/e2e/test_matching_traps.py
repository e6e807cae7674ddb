"""Issue 8's matching traps, each through the real program against a real Anvil node.

The ledger starts as ``chain_harness.build_template`` leaves it: RET-1 "Acme GmbH" 1500
USDC/month paid from ``chain.payer`` with INV-1 asking 1500.000001, RET-2 "Globex" 900
USDC/month paid from ``chain.payer2`` with INV-2 asking 900.000001, both issued at T0. This
module adds a third client's payer (``client3``, funded in USDC and EURS) and EURS, a token
with 2 decimals (as the real EURS has), to the chain and the config.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chain_harness import (
    T0,
    Chain,
    Workspace,
    build_template,
    chain_node,
    setup_chain,
    usdc,
)
from tests.support.contracts import deploy, wait_receipt

pytestmark = pytest.mark.anvil

T1 = "2026-03-03T10:00:00Z"
T2 = "2026-03-04T10:00:00Z"
T3 = "2026-03-05T10:00:00Z"
APPROVED = "2026-03-03T11:00:00Z"  # after T1


@dataclass
class TrapChain(Chain):
    """The harness chain plus a third client's payer and a 2-decimal token."""

    eurs: Any = None

    @property
    def client3(self) -> str:
        """RET-3's expected payer, once a test adds RET-3."""
        return self.accounts[5]


@pytest.fixture(scope="module")
def chain() -> Iterator[TrapChain]:
    """One Anvil node with USDC, DAI and EURS; the payers and client3 hold USDC and EURS."""
    with chain_node() as node:
        base = setup_chain(node)
        eurs = deploy(base.w3, "TestToken", "STASIS EURS", "EURS", 2)
        for account in (base.accounts[1], base.accounts[5]):
            for token, units in ((base.usdc, 10**12), (eurs, 10**8)):
                tx = token.functions.mint(account, units).transact({"from": base.accounts[0]})
                wait_receipt(base.w3, tx)
        trap = TrapChain(
            node, base.w3, base.usdc, base.dai, base.accounts, node.block_number() + 1, eurs=eurs
        )
        trap.reset()
        yield trap


@pytest.fixture(scope="module")
def template(chain: TrapChain, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Two approved retainers with their first invoices; the config also lists EURS."""
    ws = build_template(chain, tmp_path_factory.mktemp("traps") / "template")
    eurs = f'[[chains.tokens]]\nsymbol = "EURS"\naddress = "{chain.eurs.address}"\ndecimals = 2\n\n'

    ws.config.write_text(ws.config.read_text().replace("[billing]", eurs + "[billing]"))
    return ws


@pytest.fixture
def ws(chain: TrapChain, template: Workspace, tmp_path: Path) -> Workspace:
    """The chain back at its snapshot and a private copy of the template ledger."""
    chain.reset()
    return template.copy(tmp_path / "ws")


def add_client3(ws: Workspace, chain: TrapChain, *, monthly: str, asset: str = "USDC",
                now: str = T0, approve: bool = True) -> None:  # fmt: skip
    """RET-3 "Initech", paid from client3, added (and approved) at ``now``."""
    rid = ws.ok("retainer", "add", "--client", "Initech", "--chain", "local", "--asset", asset,
                "--monthly", monthly, "--payer", chain.client3, now=now)  # fmt: skip
    assert rid.strip() == "RET-3"
    if approve:
        ws.ok("retainer", "approve", "RET-3", "--by", "Bill Lumbergh", now=now)


# --- trap 1: an amount is handed to another client --------------------------------------------


def test_a_repeated_saved_payment_never_pays_another_clients_new_invoice(
    ws: Workspace, chain: TrapChain
) -> None:
    """Acme pays INV-1's 1500.000001; Initech's new 1500 invoice gets another amount, so when
    Acme repeats the saved payment it lands on nobody's invoice; status shows the tag space.
    (On the old code INV-3 was issued 1500.000001 and Acme's repeat paid Initech's month.)"""
    chain.at(T1)
    chain.pay(chain.payer, usdc("1500.000001"))
    chain.finalize()
    ws.scan(now=T1)
    assert ws.status_of("INV-1") == "paid"

    add_client3(ws, chain, monthly="1500", now=T1)
    issued = ws.json("invoice", "issue", "RET-3", now=T1)
    assert (issued["id"], issued["amount"]) == ("INV-3", "1500.000002")

    chain.at(T2)
    repeat = chain.pay(chain.payer, usdc("1500.000001"))
    chain.finalize()
    ws.scan(now=T2)
    invoice, unassigned, status = ws.json_many(
        ("invoice", "show", "INV-3"), ("transfers", "--unassigned"), ("status",), now=T2
    )
    assert (invoice["status"], invoice["payments"]) == ("open", [])
    assert [t["tx_hash"] for t in unassigned] == [repeat]
    assert {(t["asset"], t["price"]): (t["used"], t["left"]) for t in status["tags"]} == {
        ("USDC", "900"): (1, 999),
        ("USDC", "1500"): (2, 998),
    }
    assert "tags     local USDC 1500: 2 used, 998 left" in ws.ok("status", now=T2)


def test_a_payer_of_one_client_paying_another_clients_amount_goes_to_review(
    ws: Workspace, chain: TrapChain
) -> None:
    """Acme's payer sending exactly Globex's INV-2 amount does not pay Globex's month: both
    clients' invoices go to needs_review, and attaching it to INV-2 settles only that one.
    (On the old code INV-2 was paid by the amount rule.)"""
    chain.at(T1)
    tx = chain.pay(chain.payer, usdc("900.000001"))
    chain.finalize()
    ws.scan(now=T1)

    assert (ws.status_of("INV-1"), ws.status_of("INV-2")) == ("needs_review", "needs_review")
    (review,) = ws.events("invoice.needs_review")
    assert review["data"]["candidates"] == ["INV-1", "INV-2"]
    assert "another retainer" in review["data"]["reason"]
    assert ws.events("payment.detected") == []

    attached = ws.json("invoice", "attach", "INV-2", tx, now=T1, quiet=False)
    assert (attached["status"], [p["tx_hash"] for p in attached["payments"]]) == ("paid", [tx])
    assert ws.status_of("INV-1") == "open"


def test_a_two_decimal_asset_refuses_a_new_invoice_while_its_one_tag_cools(
    ws: Workspace, chain: TrapChain
) -> None:
    """EURS has one tag per price: after INV-3 (1500.01 EURS) is voided, issuing again inside
    tag_cooling_days is refused with exit 3 naming the price and when the tag frees, nothing
    written; status shows the space exhausted. (The old code reissued 1500.01 at once.)"""
    add_client3(ws, chain, monthly="1500", asset="EURS")
    issued = ws.json("invoice", "issue", "RET-3")
    assert (issued["amount"], issued["amount_base_units"]) == ("1500.01", "150001")
    ws.ok("invoice", "void", "INV-3")
    before = ws.dump()

    result = ws.run("invoice", "issue", "RET-3", now=T1)

    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("proofwatch: error: 1500 EURS on local: no free unique amount")
    assert "tag_cooling_days (180)" in line and "first frees at 2026-08-29T09:00:00Z" in line
    assert result.stdout == ""
    assert ws.dump() == before
    tags = ws.json("status", now=T1)["tags"]
    assert {"asset": "EURS", "price": "1500", "used": 1, "left": 0}.items() <= next(
        t for t in tags if t["asset"] == "EURS"
    ).items()
    assert "tags     local EURS 1500: exhausted 1 used, 0 left" in ws.ok("status", now=T1)


# --- trap 2: the payer rule ignores the amount -------------------------------------------------


def test_a_round_payment_pays_the_open_invoice_whose_price_it_fits(
    ws: Workspace, chain: TrapChain
) -> None:
    """Acme with an open 1500 month (older) and an open 800 sprint pays a round 800 and then
    a round 1500: the sprint and the month are each paid exactly, nothing overpaid. (The old
    code put the 800 on the month, then overpaid it by 799.999999 and left the sprint open.)"""
    sprint = ws.json("invoice", "issue", "RET-1", "--kind", "sprint", "--amount", "800", now=T1)
    assert (sprint["id"], sprint["amount"]) == ("INV-3", "800.000001")
    chain.at(T2)
    paid_800 = chain.pay(chain.payer, usdc("800"))
    paid_1500 = chain.pay(chain.payer, usdc("1500"))
    chain.finalize()
    ws.scan(now=T2)

    month, sprint = ws.json_many(("invoice", "show", "INV-1"), ("invoice", "show", "INV-3"))
    assert (month["status"], month["paid_amount"], month["overpaid_by"]) == ("paid", "1500", "0")
    assert [p["tx_hash"] for p in month["payments"]] == [paid_1500]
    assert (sprint["status"], sprint["paid_amount"]) == ("paid", "800")
    assert [p["tx_hash"] for p in sprint["payments"]] == [paid_800]
    assert {e["data"]["rule"] for e in ws.events("payment.detected")} == {"payer"}


# --- trap 3: a payment before its invoice is never matched ------------------------------------


def test_a_payment_sent_after_approval_but_before_the_invoice_is_matched_at_issue(
    ws: Workspace, chain: TrapChain, tmp_path: Path
) -> None:
    """Initech pays 1200 once before approving (a test) and once right after; issuing the
    first invoice matches the payment seen after the approval, in the same command, which
    says so; the earlier one stays unassigned. (The old code left both unassigned.)"""
    add_client3(ws, chain, monthly="1200", now=T0, approve=False)
    chain.at(T1)
    before_approval = chain.pay(chain.client3, usdc("1200"))
    ws.scan(now=T1)
    ws.ok("retainer", "approve", "RET-3", "--by", "Bill Lumbergh", now=APPROVED)
    chain.at(T2)
    after_approval = chain.pay(chain.client3, usdc("1200"))
    ws.scan(now=T2)
    assert len(ws.events("transfer.unassigned")) == 2

    text = ws.copy(tmp_path / "text").ok("invoice", "issue", "RET-3", now=T3, quiet=False)
    assert f"early payment matched: {after_approval}" in text
    assert "status:      pending" in text

    issued = ws.json("invoice", "issue", "RET-3", now=T3, quiet=False)
    assert (issued["id"], issued["status"]) == ("INV-3", "pending")
    assert [p["tx_hash"] for p in issued["early_payments"]] == [after_approval]
    assert [p["tx_hash"] for p in issued["payments"]] == [after_approval]
    (detected,) = ws.events("payment.detected")
    assert (detected["data"]["invoice_id"], detected["data"]["rule"]) == ("INV-3", "payer")

    chain.finalize()
    ws.scan(now=T3)
    invoice, unassigned = ws.json_many(
        ("invoice", "show", "INV-3"), ("transfers", "--unassigned"), now=T3
    )
    assert (invoice["status"], invoice["cycle_id"]) == ("paid", "CYC-1")
    assert [t["tx_hash"] for t in unassigned] == [before_approval]
