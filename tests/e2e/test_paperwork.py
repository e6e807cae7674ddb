"""The paperwork end to end: the printable invoice (``invoice show --format html``) and the
bookkeeper's statement (``export payments``), for a story of three months with a sprint and a
late payment, told by the real program against a real Anvil node whose clock follows
WATCHER_NOW (``Chain.at``). The invoice is checked in a real headless Chromium: its DOM, a
screenshot and a one-page print.

The ledger is ``chain_harness.build_template``: RET-1 "Acme GmbH" 1500 USDC/month (approved by
Jane Doe, PO-4711) with INV-1 asking 1500.000001, RET-2 "Globex" 900 USDC/month with INV-2.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chain_harness import (
    Chain,
    Workspace,
    build_template,
    store_server,
    usdc,
)
from tests.support import browser
from tests.support.browser import needs_chromium
from tests.support.postgres import STORES as ALL_STORES
from watcher.ledger.export import COLUMNS

pytestmark = pytest.mark.anvil
STORES = ALL_STORES  # the story is told on SQLite, then on PostgreSQL

EXPLORER = "https://explorer.example"


def at(when: str, minutes: int) -> str:
    """``when`` plus ``minutes`` (ISO 8601 UTC)."""
    moment = datetime.fromisoformat(when.replace("Z", "+00:00")) + timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Story:
    """The workspace after the story, the invoice HTML captured while INV-4 was open, and the
    tx hash paying each invoice."""

    ws: Workspace
    renewal_html: Path
    sprint_html: Path
    paid_by: dict[str, str]  # invoice id -> tx hash


def month(ws: Workspace, view: str, index: int) -> list[dict[str, Any]]:
    """RET-1's rows of ``view`` (v_cycles, v_invoices) for month ``index``."""
    return [r for r in ws.view(view, retainer_id="RET-1") if r["period_index"] == index]


def _pay_and_settle(ws: Workspace, chain: Chain, when: str, sender: str, units: int) -> str:
    """A USDC payment mined at ``when``, final two blocks later, scanned ten minutes on."""
    chain.at(when)
    tx = chain.pay(sender, units)
    chain.finalize()
    ws.scan(now=at(when, 10))
    return tx


@pytest.fixture(scope="module")
def story(
    chain: Chain,
    module_store: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Story]:
    """Month 1 paid on time; a sprint paid; month 2 renewed and paid after its due date; month
    3 renewed and paid on time. The explorer link is configured. On the module's store."""
    chain.reset()
    pg = store_server(request, module_store)
    ws = build_template(chain, tmp_path_factory.mktemp("paperwork") / "ws", pg)
    ws.config.write_text(
        ws.config.read_text().replace(
            'native_symbol = "ETH"\n', f'native_symbol = "ETH"\nexplorer_url = "{EXPLORER}"\n'
        )
    )
    paid: dict[str, str] = {}
    paid["INV-1"] = _pay_and_settle(ws, chain, "2026-03-03T08:00:00Z", chain.payer, usdc("1500"))
    assert ws.status_of("INV-1") == "paid"

    sprint = ws.json(
        "invoice", "issue", "RET-1", "--kind", "sprint", "--amount", "250",
        now="2026-03-05T09:00:00Z",
    )  # fmt: skip
    assert (sprint["id"], sprint["kind"]) == ("INV-3", "sprint")
    sprint_html = ws.root / "INV-3.html"
    ws.ok("invoice", "show", "INV-3", "--format", "html", "-o", str(sprint_html))
    paid["INV-3"] = _pay_and_settle(
        ws, chain, "2026-03-06T12:00:00Z", chain.stranger, int(sprint["amount_base_units"])
    )
    assert ws.status_of("INV-3") == "paid"

    chain.mine_at("2026-03-30T08:00:00Z")
    ws.tick(now="2026-03-30T08:00:00Z")  # month 1 ends 2026-04-03: the renewal is issued
    (renewal,) = ws.view("v_invoices", retainer_id="RET-1", kind="renewal")
    assert (renewal["id"], renewal["period_index"], renewal["status"]) == ("INV-4", 2, "open")
    renewal_html = ws.root / "INV-4.html"
    ws.ok("invoice", "show", "INV-4", "--format", "html", "-o", str(renewal_html))

    late = at(renewal["due_at"], 60 * 26)  # a day and two hours after its due date
    paid["INV-4"] = _pay_and_settle(ws, chain, late, chain.payer, usdc("1500"))
    assert ws.status_of("INV-4") == "paid_late"

    (month_2,) = month(ws, "v_cycles", 2)
    renew_at = at(month_2["ends_at"], -4 * 24 * 60)
    chain.mine_at(renew_at)
    ws.tick(now=renew_at)
    (month_3,) = month(ws, "v_invoices", 3)
    assert month_3["id"] == "INV-5"
    paid["INV-5"] = _pay_and_settle(ws, chain, at(renew_at, 60), chain.payer, usdc("1500"))
    assert ws.status_of("INV-5") == "paid"
    yield Story(ws, renewal_html, sprint_html, paid)
    ws.drop()


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Real headless Chromium with a fresh profile; it must succeed."""
    result = browser.chromium(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def pdf_pages(pdf: Path) -> int:
    """The page count of a PDF Chromium printed (its page tree's /Count)."""
    counts = [int(n) for n in re.findall(rb"/Count (\d+)", pdf.read_bytes())]
    assert counts, "no page tree in the PDF"
    return max(counts)


@needs_chromium
def test_renewal_invoice_renders_in_chromium_on_one_page(story: Story, tmp_path: Path) -> None:
    """The open month-2 invoice, loaded in headless Chromium, shows client, month and period,
    the exact amount and asset, chain, wallet, EIP-681 link, inline SVG QR, due date and the
    approved terms; its screenshot is written and it prints on one A4 page."""
    ws, page = story.ws, story.renewal_html
    invoice = ws.invoice("INV-4")
    approval = ws.json("retainer", "show", "RET-1")
    (month_1,) = month(ws, "v_cycles", 1)
    png, pdf = tmp_path / "invoice.png", tmp_path / "invoice.pdf"
    url = page.as_uri()
    with ThreadPoolExecutor(max_workers=3) as pool:
        dom_run = pool.submit(chromium, "--dump-dom", url)
        shot = pool.submit(chromium, "--window-size=1000,1400", f"--screenshot={png}", url)
        printed = pool.submit(chromium, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", url)
        dom = dom_run.result().stdout
        shot.result(), printed.result()
    assert "<title>Invoice INV-4</title>" in dom
    assert "Acme GmbH" in dom
    assert f"Month 2: {month_1['ends_at']} to " in dom  # month 2 starts where month 1 ends
    # INV-1's 1500.000001 is cooling (billing.tag_cooling_days): the renewal gets the next tag
    assert f"{invoice['amount']} USDC" in dom and invoice["amount"] == "1500.000002"
    assert invoice["amount_base_units"] in dom
    assert "local (chain id 31337)" in dom
    assert invoice["pay_to"] in dom and invoice["token_address"] in dom
    assert f'href="{invoice["payment_uri"].replace("&", "&amp;")}"' in dom
    assert re.search(r"<svg[^>]*class=\"segno\"", dom) and "<path" in dom
    assert invoice["due_at"] in dom
    assert "Support retainer: 20 h/month" in dom and "monthly, 1500 USDC a month" in dom
    assert "Jane Doe" in dom and "PO-4711" in dom and approval["approved_at"] in dom
    assert approval["approved_terms_hash"] in dom
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert pdf_pages(pdf) == 1


def test_sprint_invoice_and_paid_invoice_documents(story: Story) -> None:
    """The open sprint invoice says it is a sprint with no monthly cycle; a paid invoice's
    document is its proof receipt (the tx that paid it) instead of a request to pay."""
    sprint = story.sprint_html.read_text()
    assert "Invoice INV-3" in sprint and "Sprint (one-off, no monthly cycle)" in sprint
    assert "250.000001 USDC" in sprint
    paid = story.ws.ok("invoice", "show", "INV-4", "--format", "html")
    assert "Payment proof for INV-4" in paid and "Pay exactly" not in paid
    assert story.paid_by["INV-4"] in paid and "paid late" in paid


@needs_chromium
def test_proof_receipt_prints_on_one_page(story: Story, tmp_path: Path) -> None:
    """The proof receipt a paid invoice renders prints on one page in Chromium."""
    page, pdf = tmp_path / "proof.html", tmp_path / "proof.pdf"
    story.ws.ok("invoice", "show", "INV-1", "--format", "html", "-o", str(page))
    chromium("--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    assert pdf_pages(pdf) == 1


def parse_csv(text: str) -> list[dict[str, str]]:
    """Rows of a CSV statement as dicts; its header must be the documented columns."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert tuple(header) == COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


def test_export_lists_each_final_payment_by_block_time(story: Story, chain: Chain) -> None:
    """The CSV statement has one row per final payment in block-time order, with client,
    invoice, kind, month, late status, exact amount and base units, chain, tx hash and explorer
    link; the JSON export has the same rows."""
    ws = story.ws
    out = ws.root / "statement.csv"
    ws.ok("export", "payments", "--format", "csv", "-o", str(out))
    raw = out.read_bytes()
    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")  # RFC 4180 CRLF
    rows = parse_csv(raw.decode())
    assert parse_csv(ws.ok("export", "payments")) == rows  # csv is the default, on stdout
    got = [(r["invoice_id"], r["kind"], r["month"], r["invoice_status"]) for r in rows]
    assert got == [
        ("INV-1", "first_month", "1", "paid"),
        ("INV-3", "sprint", "", "paid"),
        ("INV-4", "renewal", "2", "paid_late"),
        ("INV-5", "renewal", "3", "paid"),
    ]
    for row in rows:
        tx = story.paid_by[row["invoice_id"]]
        assert row["tx_hash"] == tx and row["block_time"] == chain.block_time(tx)
        assert row["explorer_url"] == f"{EXPLORER}/tx/{tx}"
        assert (row["client"], row["retainer_id"], row["asset"]) == ("Acme GmbH", "RET-1", "USDC")
        assert (row["chain"], row["chain_id"]) == ("local", "31337")
        assert row["from"] in (chain.payer, chain.stranger)
    amounts = [(r["amount"], r["amount_base_units"]) for r in rows]
    assert amounts[0] == ("1500", "1500000000") and amounts[1] == ("250.000001", "250000001")
    assert [r["block_time"] for r in rows] == sorted(r["block_time"] for r in rows)

    as_json: list[dict[str, Any]] = json.loads(ws.ok("export", "payments", "--format", "json"))
    assert [list(r) for r in as_json] == [list(COLUMNS)] * 4
    assert [{k: "" if v is None else str(v) for k, v in r.items()} for r in as_json] == rows


def test_export_filters_by_dates_and_retainer(story: Story) -> None:
    """--from/--to select by block time (--to a whole day, inclusive) and --retainer by
    retainer; a retainer without payments gives the header alone."""
    ws = story.ws
    every = parse_csv(ws.ok("export", "payments"))
    commands = [
        ("--from", "2026-04-01", "--to", "2026-04-30"),
        ("--from", "2026-03-03", "--to", "2026-03-03"),
        ("--to", "2026-03-06T12:00:00Z"),
        ("--retainer", "RET-1"),
        ("--retainer", "RET-2"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        april, one_day, until, ret1, ret2 = pool.map(
            lambda args: parse_csv(ws.ok("export", "payments", *args)), commands
        )
    assert april == [r for r in every if "2026-04-01" <= r["block_time"] < "2026-05-01"]
    assert "INV-4" in [r["invoice_id"] for r in april] and "INV-1" not in str(april)
    assert [r["invoice_id"] for r in one_day] == ["INV-1"]
    assert [r["invoice_id"] for r in until] == ["INV-1", "INV-3"]  # inclusive to the second
    assert ret1 == every and ret2 == []


def test_export_refuses_bad_dates_and_retainers(story: Story) -> None:
    """A date that does not parse, --to before --from, an unknown retainer or format: exit 2
    with one line naming the value, nothing on stdout."""
    ws = story.ws
    cases = {
        ("--from", "2026-13-01"): "'2026-13-01'",
        ("--to", "yesterday"): "'yesterday'",
        ("--from", "2026-04-02", "--to", "2026-04-01"): "'2026-04-01'",
        ("--retainer", "RET-99"): "'RET-99'",
        ("--retainer", "INV-1"): "'INV-1'",
        ("--format", "xlsx"): "'xlsx'",
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda args: ws.run("export", "payments", *args), cases))
    for (args, named), result in zip(cases.items(), results, strict=True):
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("proofwatch: error: "), result.stderr
        assert named in lines[0], (args, lines[0])
        assert result.stdout == ""


def test_invoice_html_escapes_what_the_operator_typed(story: Story, tmp_path: Path) -> None:
    """Client name, scope and approval note are HTML-escaped in the invoice document."""
    ws = story.ws.copy(tmp_path / "ws")
    add = ("retainer", "add", "--chain", "local", "--asset", "USDC", "--monthly", "10")
    rid = ws.ok(*add, "--client", "Evil <b>Co</b> & Sons", "--scope", "<script>x()</script>")
    ws.ok("retainer", "approve", rid.strip(), "--by", "Mallory", "--note", '"><img src=x>')
    issued = ws.json("invoice", "issue", rid.strip())
    page = ws.ok("invoice", "show", issued["id"], "--format", "html")
    assert "Evil &lt;b&gt;Co&lt;/b&gt; &amp; Sons" in page
    assert "&lt;script&gt;x()&lt;/script&gt;" in page and "<script>" not in page
    assert "<img src=x>" not in page


def test_invoice_show_refuses_bad_format_options(story: Story) -> None:
    """An unknown --format, -o without --format html, --json with html and an unknown invoice
    are bad input: exit 2, one line naming the value, nothing written."""
    ws = story.ws
    out = ws.root / "never.html"
    cases = {
        ("INV-4", "--format", "pdf"): "'pdf'",
        ("INV-4", "-o", str(out)): "-o FILE",
        ("INV-4", "--format", "html", "--json"): "--json",
        ("INV-77", "--format", "html"): "'INV-77'",
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda args: ws.run("invoice", "show", *args), cases))
    for (args, named), result in zip(cases.items(), results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and named in lines[0], (args, result.stderr)
        assert result.stdout == ""
    assert not out.exists()
