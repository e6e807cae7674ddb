"""Wrong token decimals in the config, end to end: the real program against a real Anvil node.

The chain's DAI has 18 decimals; the workspace configures it with 6, so "1500 DAI" in the
config's units is 1.5e-9 DAI on chain: a payment of dust would fund a month. The chain's
``decimals()`` is read once and stored; while the config disagrees, invoicing in DAI is refused
and no DAI transfer is counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.chain_harness import RPC_VAR, Chain, Workspace

pytestmark = pytest.mark.anvil

T0 = "2026-03-02T09:00:00Z"
T1 = "2026-03-03T10:00:00Z"
MISMATCH = "decimals() is 18 on chain, 6 in the config"


def _dai_decimals(ws: Workspace, decimals: int) -> None:
    """Set the configured decimals of DAI in the workspace's config."""
    text = ws.config.read_text()
    dai = text.index('symbol = "DAI"')
    head, tail = text[:dai], text[dai:]
    ws.config.write_text(head + re.sub(r"decimals = \d+", f"decimals = {decimals}", tail, count=1))


@pytest.fixture
def ws(chain: Chain, tmp_path: Path) -> Workspace:
    """A fresh workspace whose config says DAI has 6 decimals, with RET-1 (1500 DAI/month,
    RET-1's payer expected) approved."""
    chain.reset()
    ws = Workspace(tmp_path / "ws", chain)
    ws.write_config()
    _dai_decimals(ws, 6)
    ws.ok("init")
    add = ("retainer", "add", "--chain", "local", "--asset", "DAI", "--monthly", "1500")
    ws.ok(*add, "--client", "Acme GmbH", "--payer", chain.payer)
    ws.ok("retainer", "approve", "RET-1", "--by", "Jane Doe")
    return ws


def test_wrong_decimals_refuse_the_invoice_and_no_transfer_of_that_token_counts(
    ws: Workspace, chain: Chain
) -> None:
    """With DAI configured as 6 decimals but 18 on chain, ``invoice issue`` exits 3 naming
    both values and writes nothing; an invoice issued while the node was unreachable is never
    paid by dust: the scan reads the decimals, raises one alert, and counts nothing of DAI."""
    before = ws.dump()
    refused = ws.run("invoice", "issue", "RET-1")
    assert refused.returncode == 3, refused.stderr
    assert MISMATCH in refused.stderr and "DAI" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert ws.dump() == before

    env = ws.root / ".env"
    good = env.read_text()
    env.write_text(f"{RPC_VAR}=http://127.0.0.1:9/\n")  # nothing listens there
    issued = ws.run("invoice", "issue", "RET-1", "--json")
    assert issued.returncode == 0, issued.stderr
    assert "token.decimals_unverified" in issued.stderr
    env.write_text(good)
    (invoice,) = ws.view("v_invoices")
    dust = int(invoice["amount_base_units"])  # 1500.000001 "DAI" at 6 decimals
    assert dust == 1_500_000_001

    tx = chain.pay(chain.payer, dust, token=chain.dai)
    chain.finalize()
    ws.scan(now=T1)
    ws.scan(now=T1)
    assert ws.status_of("INV-1") == "open"
    (row,) = ws.json("transfers", "--unassigned", now=T1)
    assert (row["tx_hash"], row["status"], row["invoice_id"]) == (tx, "final", None)
    (alert,) = ws.events("watcher.token_decimals_mismatch")
    assert (alert["data"]["decimals_on_chain"], alert["data"]["decimals_in_config"]) == (18, 6)
    assert alert["data"]["asset"] == "DAI" and MISMATCH in alert["data"]["reason"]
    assert ws.events("cycle.opened") == [] and ws.events("payment.detected") == []

    attached = ws.run("invoice", "attach", "INV-1", tx, now=T1)
    assert attached.returncode == 3 and MISMATCH in attached.stderr, attached.stderr

    _dai_decimals(ws, 18)  # the config is fixed: DAI can be invoiced again, at the real price
    ws.ok("invoice", "void", "INV-1", now=T1)
    stale = ws.run("invoice", "issue", "RET-1", now=T1)  # RET-1's price was set at 6 decimals
    assert stale.returncode == 3 and "retainer update RET-1" in stale.stderr, stale.stderr
    ws.ok("retainer", "update", "RET-1", "--monthly", "1500", now=T1)
    ws.ok("retainer", "approve", "RET-1", "--by", "Jane Doe", now=T1)
    fixed = ws.json("invoice", "issue", "RET-1", now=T1)
    assert (fixed["id"], fixed["price"], fixed["price_base_units"]) == (
        "INV-2",
        "1500",
        "1500" + "0" * 18,
    )
