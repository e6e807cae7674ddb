"""The same story told by the real program on SQLite and on PostgreSQL leaves the same
operator views, row for row and value for value (CONTRACT.md: every command, view and the
daemon behave the same on both stores).

The story runs twice on one Anvil chain, put back to its snapshot in between: the same
transactions in the same blocks at the same block times. Their hashes differ between the two
runs (the node fills in the fee fields), so PostgreSQL's hashes are mapped to SQLite's by block
number and position before comparing, and the mapping itself is checked. It has a bit of
everything the views show: a unique-amount payment, an expected payer's payment in two parts,
a native ETH invoice and payment, an unassigned transfer attached by the operator, a voided
sprint, an overpaid renewal issued by the clock, a lapse and a late payment, wei above 64 bits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chain_harness import Chain, Workspace, build_template, usdc
from tests.support.postgres import PostgresServer
from tests.support.stores import read_rows

pytestmark = pytest.mark.anvil

T1 = "2026-03-03T10:00:00Z"
T2 = "2026-03-03T10:30:00Z"
RENEWAL_TIME = "2026-03-30T08:00:00Z"
LAPSE_TIME = "2026-04-10T00:00:00Z"
LATE_TIME = "2026-04-12T09:30:00Z"

#: Each view and the columns that order its rows.
VIEWS = {
    "v_retainers": "id",
    "v_invoices": "id",
    "v_cycles": "id",
    "v_payments": "block_number, kind, log_index",
    "v_status": "name",
}


def at(when: str, seconds: int = 0) -> str:
    moment = datetime.fromisoformat(when.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def finalize_at(chain: Chain, when: str) -> None:
    """Two blocks (finalized = latest - 2), each at a set time: the chain's clock never
    follows the wall clock, so both runs see the same block times."""
    chain.mine_at(when)
    chain.mine_at(at(when, 1))


def tell_story(ws: Workspace, chain: Chain) -> None:
    """Every step through the program (CLI); every block mined at a set time."""
    ws.ok("retainer", "add", "--client", "Ether Ltd", "--chain", "local", "--asset", "ETH",
          "--monthly", "20", "--payer", chain.broke)  # fmt: skip
    ws.ok("retainer", "approve", "RET-3", "--by", "Eve")
    ether = ws.json("invoice", "issue", "RET-3")
    sprint = ws.json("invoice", "issue", "RET-1", "--kind", "sprint", "--amount", "250.5")
    ws.ok("invoice", "void", sprint["id"])

    chain.at(T1)
    chain.pay(chain.stranger, usdc("1500.000001"))  # INV-1 by its unique amount
    chain.at(at(T1, 1))
    chain.pay(chain.payer2, usdc("400"))  # INV-2, first part, by its expected payer
    chain.at(at(T1, 2))
    chain.pay_eth(chain.broke, int(ether["amount_base_units"]))  # above 2**64 wei
    chain.at(at(T1, 3))
    unassigned = chain.pay(chain.stranger, usdc("77.77"))  # matches nothing
    ws.scan(now=at(T1, 60))
    ws.ok("invoice", "attach", "INV-2", unassigned, now=at(T1, 60), quiet=False)  # second part
    chain.at(at(T1, 120))
    chain.pay(chain.payer2, usdc("422.230001"))  # INV-2, third part
    finalize_at(chain, at(T1, 121))
    ws.scan(now=T2)

    chain.mine_at(RENEWAL_TIME)
    ws.tick(now=RENEWAL_TIME)  # renewals of RET-1, RET-2 and RET-3
    chain.at(at(RENEWAL_TIME, 3600))
    chain.pay(chain.payer, usdc("1600"))  # RET-1's renewal, overpaid
    finalize_at(chain, at(RENEWAL_TIME, 3601))
    ws.tick(now=at(RENEWAL_TIME, 5400))

    chain.mine_at(LAPSE_TIME)  # RET-2 and RET-3 left their renewals unpaid
    ws.tick(now=LAPSE_TIME)
    chain.at(LATE_TIME)
    chain.pay(chain.payer2, usdc("900"))  # RET-2 pays late: a fresh month
    finalize_at(chain, at(LATE_TIME, 1))
    ws.tick(now=at(LATE_TIME, 60))


def rows(ws: Workspace, view: str) -> list[dict[str, Any]]:
    """The view's rows, as stored (no JSON decoding), in a fixed order."""
    return read_rows(ws.engine_url, f"SELECT * FROM {view} ORDER BY {VIEWS[view]}")


def same_hashes(told: dict[str, Workspace]) -> Callable[[Any], Any]:
    """A function that rewrites PostgreSQL's run's tx and block hashes into SQLite's run's,
    paired by block number and position in v_payments (which must agree)."""
    theirs, mine = rows(told["postgresql"], "v_payments"), rows(told["sqlite"], "v_payments")
    assert [(r["block_number"], r["kind"], r["log_index"]) for r in theirs] == [
        (r["block_number"], r["kind"], r["log_index"]) for r in mine
    ]
    mapping: dict[str, str] = {}
    for a, b in zip(theirs, mine, strict=True):
        for key in ("tx_hash", "block_hash"):
            assert mapping.setdefault(a[key], b[key]) == b[key]

    def rewrite(value: Any) -> Any:
        text = json.dumps(value)
        for old, new in mapping.items():
            text = text.replace(old, new)
        return json.loads(text)

    return rewrite


@pytest.fixture(scope="module")
def told(
    chain: Chain, pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Workspace]]:
    """The story on a SQLite file, then (the chain reset) on a PostgreSQL database."""
    out: dict[str, Workspace] = {}
    for store, pg in (("sqlite", None), ("postgresql", pg_server)):
        chain.reset()
        root: Path = tmp_path_factory.mktemp(f"parity-{store}") / "ws"
        ws = build_template(chain, root, pg)
        tell_story(ws, chain)
        out[store] = ws
    yield out
    out["postgresql"].drop()


def test_the_story_touched_every_view(told: dict[str, Workspace]) -> None:
    """The story is rich enough to compare: several rows in every view, every kind of state."""
    views = {view: rows(told["sqlite"], view) for view in VIEWS}
    statuses = {r["id"]: r["status"] for r in views["v_invoices"]}
    assert {"paid", "void", "expired", "paid_late"} <= set(statuses.values()), statuses
    assert any(r["overpaid_by"] != "0" for r in views["v_invoices"])
    assert any(int(r["amount_base_units"]) > 2**64 for r in views["v_payments"])
    assert [r["invoice_id"] for r in views["v_payments"] if r["amount"] == "77.77"] == ["INV-2"]
    assert len(views["v_cycles"]) >= 4
    assert {r["status"] for r in views["v_retainers"]} >= {"active", "lapsed"}


@pytest.mark.parametrize("view", list(VIEWS))
def test_a_view_is_the_same_on_both_stores_row_for_row(
    told: dict[str, Workspace], view: str
) -> None:
    """Every row and value of the view (amounts, timestamps, ids, JSON text) is the same on
    SQLite and PostgreSQL after the same story."""
    rewrite = same_hashes(told)
    sqlite, postgresql = rows(told["sqlite"], view), rewrite(rows(told["postgresql"], view))
    assert sqlite, f"{view} is empty"
    assert [list(r) for r in postgresql] == [list(r) for r in sqlite]  # the same columns
    for mine, theirs in zip(sqlite, postgresql, strict=True):
        assert theirs == mine
        assert [type(v) for v in theirs.values()] == [type(v) for v in mine.values()]


def test_the_commands_print_the_same_json_on_both_stores(told: dict[str, Workspace]) -> None:
    """retainer list/show, invoice list, cycles, transfers, status and the payments export
    print the same JSON on both stores."""
    rewrite = same_hashes(told)
    commands = [("retainer", "list"), ("invoice", "list"), ("cycles",), ("transfers",)]
    commands += [("retainer", "show", "RET-2"), ("status",)]
    for args in commands:
        sqlite = told["sqlite"].json(*args, now=LATE_TIME)
        postgresql = rewrite(told["postgresql"].json(*args, now=LATE_TIME))
        assert postgresql == sqlite, args
    export = ("export", "payments", "--format", "json")
    assert rewrite(told["postgresql"].json_doc(*export)) == told["sqlite"].json_doc(*export)
