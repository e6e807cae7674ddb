"""Internal ETH on a node without traces, end to end: the real program against a real Anvil node
with ``internal = "off"`` (the default) and the balance guard on.

A contract (``Forwarder``, standing in for a Safe) pays the wallet by an internal call: no
top-level transaction shows it, so the scanner finds no transfer and the balance guard raises
``watcher.unexplained_balance`` at its block. ``invoice attach`` then accepts that transaction.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.chain_harness import WALLET, Chain, Workspace
from tests.support.contracts import deploy, wait_receipt

pytestmark = pytest.mark.anvil

T1 = "2026-03-03T10:00:00Z"


@pytest.fixture
def ws(chain: Chain, tmp_path: Path) -> Workspace:
    """A fresh workspace with RET-1 (1 ETH/month) approved and INV-1 issued."""
    chain.reset()
    ws = Workspace(tmp_path / "ws", chain)
    ws.write_config()
    ws.ok("init")
    ws.ok("retainer", "add", "--chain", "local", "--asset", "ETH", "--monthly", "1",
          "--client", "Safe Co")  # fmt: skip
    ws.ok("retainer", "approve", "RET-1", "--by", "Jane Doe")
    ws.ok("invoice", "issue", "RET-1")
    return ws


def test_attach_accepts_an_internal_payment_the_balance_guard_located(
    ws: Workspace, chain: Chain
) -> None:
    """An internal ETH payment seen only by the balance guard is accepted by ``invoice attach``
    (recorded as internal, balance-attributed), pays the invoice at finality, and its proof
    says how it was attributed; a transaction in a block without a located jump is refused."""
    (invoice,) = ws.view("v_invoices")
    amount = int(invoice["amount_base_units"])
    forwarder = deploy(chain.w3, "Forwarder")
    sent = forwarder.functions.forward(WALLET).transact({"from": chain.payer, "value": amount})
    receipt = wait_receipt(chain.w3, sent)
    tx = receipt["transactionHash"].to_0x_hex()
    chain.finalize()
    report = ws.scan(now=T1)
    assert (report["found"], report["unexplained"]) == (0, 1)
    (jump,) = ws.events("watcher.unexplained_balance")
    assert (jump["data"]["block"], jump["data"]["unexplained"]) == (
        receipt["blockNumber"],
        str(amount),
    )

    other = chain.pay_eth(chain.stranger, 10**15, to=forwarder.address)  # no jump in its block
    refused = ws.run("invoice", "attach", "INV-1", other, now=T1)
    assert refused.returncode == 3 and "does not send ETH" in refused.stderr, refused.stderr

    attached = ws.json("invoice", "attach", "INV-1", tx, now=T1, quiet=False)
    assert attached["status"] == "pending"
    again = ws.run("invoice", "attach", "INV-1", tx, now=T1)
    assert again.returncode == 3, again.stderr

    ws.scan(now=T1)  # the receipt is re-read at finality
    invoice, proof = ws.json_many(("invoice", "show", "INV-1"), ("proof", "INV-1"))
    assert invoice["status"] == "paid"
    (paid,) = proof["payments"]
    assert (paid["tx_hash"], paid["kind"], paid["attribution"]) == (tx, "internal", "balance")
    assert (paid["amount_base_units"], paid["from"]) == (str(amount), forwarder.address)
    assert "attributed by balance" in ws.ok("proof", "INV-1", "--format", "html")
    (row,) = ws.view("v_payments", tx_hash=tx)
    assert (row["kind"], row["attribution"], row["status"]) == ("internal", "balance", "final")
