"""The retainer and invoice commands, run as the real program in a subprocess (CONTRACT.md).

Every command is declared in the tables below; the module fixture ``ran`` runs them all once,
side by side, each case on its own copy of a template, and each test checks its own outcome.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import (
    NOW,
    PAYER,
    USDC,
    WALLET,
    Outcome,
    Refusal,
    Run,
    Templates,
    Workspace,
    assert_refused,
    run_all,
)
from tests.support.postgres import STORES as ALL_STORES

STORES = ALL_STORES  # every command here runs on SQLite and on PostgreSQL

INVOICE_FIELDS = {
    "id",
    "retainer_id",
    "client",
    "kind",
    "period_index",
    "chain",
    "chain_id",
    "asset",
    "token_address",
    "price",
    "amount",
    "amount_base_units",
    "pay_to",
    "payment_uri",
    "status",
    "issued_at",
    "due_at",
    "paid_amount",
    "paid_amount_base_units",
    "overpaid_by",
    "payments",
    "cycle_id",
}
KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # Anvil's test key
ADD = ("retainer", "add", "--client", "Bad Co", "--chain", "base", "--asset", "USDC")
BAD_CHECKSUM = PAYER.replace("E0F7", "e0F7")
SHORT_ADDRESS = PAYER[:-2]


def _ids(rows: list[dict[str, object]]) -> list[object]:
    return [row["id"] for row in rows]


def _move_env(ws: Workspace) -> None:
    (ws.root / ".env").rename(ws.root / "secrets.env")


def _drop_variable(ws: Workspace) -> None:
    (ws.root / ".env").write_text("OTHER=1\n")


def _key_in_dotenv(ws: Workspace) -> None:
    with (ws.root / ".env").open("a") as env:
        env.write(f"SIGNER_KEY=0x{KEY}\n")


def _key_in_toml(ws: Workspace) -> None:
    ws.config.write_text(ws.config.read_text().replace(WALLET, KEY))


# --- what runs: chains of commands, single commands, refusals ------------------------------

SCENARIOS: dict[str, Run] = {
    "init-twice": Run("bare", ("init",), then=(("init",),)),
    "init-existing": Run("seeded", ("init",)),
    "retainer-flow": Run(
        "seeded",
        ("retainer", "add", "--client", "Globex", "--chain", "base", "--asset", "usdc",
         "--monthly", "1234.5", "--payer", PAYER.lower(), "--scope", "Audits",
         "--scope-cap", "20 hours", "--start", "2026-02-01"),
        then=(
            ("retainer", "show", "RET-4", "--json"),
            ("retainer", "approve", "RET-4", "--by", "Bob", "--note", "PO-77"),
            ("retainer", "list", "--json"),
            ("retainer", "list"),
            ("retainer", "show", "RET-4"),
        ),
    ),
    "void-and-cool": Run(
        "seeded",
        ("invoice", "issue", "RET-2", "--json"),
        then=(
            ("invoice", "issue", "RET-2", "--kind", "sprint", "--amount", "2000", "--json"),
            ("invoice", "void", "INV-1"),
            ("invoice", "issue", "RET-2", "--kind", "sprint", "--amount", "2000", "--json"),
            ("invoice", "show", "INV-1", "--json"),
        ),
    ),
}  # fmt: skip

COMMANDS: dict[str, Run] = {
    "config-check": Run("bare", ("config", "check")),
    "config-check-json": Run("bare", ("config", "check", "--json")),
    "list-before-init": Run("bare", ("retainer", "list")),
    "issue-text": Run("seeded", ("invoice", "issue", "RET-2", "--due", "2026-02-20")),
    "issue-json": Run(
        "seeded",
        ("invoice", "issue", "RET-3", "--json"),
        env=(("WATCHER_NOW", "2026-03-15T08:30:00+01:00"),),
    ),
    "list-all": Run("invoiced", ("invoice", "list", "--json")),
    "list-void": Run("invoiced", ("invoice", "list", "--status", "void", "--json")),
    "list-retainer": Run("invoiced", ("invoice", "list", "--retainer", "RET-3", "--json")),
    "list-both": Run(
        "invoiced", ("invoice", "list", "--status", "open", "--retainer", "RET-2", "--json")
    ),
    "list-text": Run("invoiced", ("invoice", "list", "--status", "open")),
    "show-json": Run("invoiced", ("invoice", "show", "INV-3", "--json")),
    "show-text": Run("invoiced", ("invoice", "show", "inv-1")),
    "options-after-command": Run(
        "invoiced",
        (
            "invoice",
            "list",
            "--status",
            "void",
            "--json",
            "--config",
            "{root}/watcher.toml",
            "--env-file",
            "{root}/secrets.env",
        ),
        prepare=_move_env,
        config=False,
    ),
    "config-from-environment": Run(
        "invoiced",
        ("invoice", "show", "INV-2", "--json", "--env-file={root}/secrets.env"),
        env=(("WATCHER_CONFIG", "{root}/watcher.toml"),),
        prepare=_move_env,
        config=False,
    ),
    "debug": Run("invoiced", ("invoice", "show", "INV-99", "--debug")),
}

BAD_INPUT: dict[str, Refusal] = {
    "payer-wrong-checksum": Refusal(
        "seeded", (*ADD, "--monthly", "100", "--payer", BAD_CHECKSUM),
        code=2, names=(repr(BAD_CHECKSUM), "wrong EIP-55 checksum"),
    ),
    "payer-wrong-length": Refusal(
        "seeded", (*ADD, "--monthly", "100", "--payer", SHORT_ADDRESS),
        code=2, names=(repr(SHORT_ADDRESS), "is not an EVM address"),
    ),
    "amount-too-many-decimals": Refusal(
        "seeded", (*ADD, "--monthly", "1.1234567"),
        code=2, names=("'1.1234567'", "7 decimal places"),
    ),
    "amount-negative": Refusal("seeded", (*ADD, "--monthly", "-5"), code=2, names=("'-5'",)),
    "amount-zero": Refusal(
        "seeded", (*ADD, "--monthly", "0"), code=2, names=("'0'", "greater than zero")
    ),
    "amount-exponent": Refusal("seeded", (*ADD, "--monthly", "1e3"), code=2, names=("'1e3'",)),
    "sprint-amount-exponent": Refusal(
        "seeded", ("invoice", "issue", "RET-2", "--kind", "sprint", "--amount", "1e3"),
        code=2, names=("'1e3'",),
    ),
    "unknown-chain": Refusal(
        "seeded", ("retainer", "add", "--client", "X", "--chain", "eth", "--asset", "USDC",
                   "--monthly", "1"),
        code=2, names=("unknown chain 'eth'",),
    ),
    "unknown-asset": Refusal(
        "seeded", ("retainer", "add", "--client", "X", "--chain", "base", "--asset", "DAI",
                   "--monthly", "1"),
        code=2, names=("unknown asset 'DAI'",),
    ),
    "unknown-retainer-issue": Refusal(
        "seeded", ("invoice", "issue", "RET-99"), code=2, names=("unknown retainer 'RET-99'",)
    ),
    "unknown-retainer-approve": Refusal(
        "seeded", ("retainer", "approve", "RET-42", "--by", "Bob"),
        code=2, names=("unknown retainer 'RET-42'",),
    ),
    "unknown-invoice-void": Refusal(
        "seeded", ("invoice", "void", "INV-7"), code=2, names=("unknown invoice 'INV-7'",)
    ),
    "malformed-retainer-id": Refusal(
        "seeded", ("retainer", "show", "XYZ"), code=2, names=("retainer id 'XYZ'", "RET-1")
    ),
    "bad-start-date": Refusal(
        "seeded", (*ADD, "--monthly", "100", "--start", "2026-02-30"),
        code=2, names=("start date '2026-02-30'",),
    ),
    "bad-due-date": Refusal(
        "seeded", ("invoice", "issue", "RET-2", "--due", "next friday"),
        code=2, names=("due date 'next friday'",),
    ),
    "unknown-kind": Refusal(
        "seeded", ("invoice", "issue", "RET-2", "--kind", "weekly"), code=2, names=("'weekly'",)
    ),
    "invalid-status": Refusal(
        "seeded", ("invoice", "list", "--status", "unpaid"),
        code=2, names=("'unpaid'", "open, pending"),
    ),
    "usage-missing-option": Refusal(
        "seeded", ("retainer", "add", "--client", "X"),
        code=2, names=("Missing option", "--chain"),
    ),
    "usage-unknown-option": Refusal(
        "seeded", ("invoice", "list", "--colour"), code=2, names=("No such option: --colour",)
    ),
    "bad-watcher-now": Refusal(
        "seeded", ("invoice", "issue", "RET-2"), env=(("WATCHER_NOW", "2026-01-31 noon"),),
        code=2, names=("WATCHER_NOW '2026-01-31 noon'",),
    ),
}  # fmt: skip

BAD_CONFIG: dict[str, Refusal] = {
    "missing-variable": Refusal(
        "seeded", (*ADD, "--monthly", "100"), prepare=_drop_variable,
        code=2,
        names=("invalid configuration", "chains[0].rpc_urls[0]", "${BASE_RPC_URL} is not set"),
    ),
    "private-key-in-dotenv": Refusal(
        "seeded", (*ADD, "--monthly", "100"), prepare=_key_in_dotenv,
        code=2, names=(".env:SIGNER_KEY", "private key"), hidden=(KEY,),
    ),
    "private-key-in-toml": Refusal(
        "seeded", ("invoice", "issue", "RET-2"), prepare=_key_in_toml,
        code=2, names=("chains[0].receiving_address", "private key"), hidden=(KEY,),
    ),
}  # fmt: skip

BY_STATE: dict[str, Refusal] = {
    "issue-before-approval": Refusal(
        "seeded", ("invoice", "issue", "RET-1"), code=3, names=("RET-1", "not approved")
    ),
    "second-month-while-first-open": Refusal(
        "invoiced", ("invoice", "issue", "RET-2"), code=3, names=("INV-1", "still unpaid")
    ),
    "void-twice": Refusal(
        "invoiced", ("invoice", "void", "INV-3"), code=3, names=("INV-3 is already void",)
    ),
}


@pytest.fixture(scope="module")
def ran(templates: Templates, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case above, run once on its own copy of its template."""
    tables = (SCENARIOS, COMMANDS, BAD_INPUT, BAD_CONFIG, BY_STATE)
    runs: dict[str, Run] = {name: run for table in tables for name, run in table.items()}
    assert len(runs) == sum(len(table) for table in tables), "duplicate case names"
    return run_all(runs, templates, tmp_path_factory.mktemp("runs"))


# --- init and config ------------------------------------------------------------------------


def test_init_creates_the_database_and_is_safe_to_repeat(ran: dict[str, Outcome]) -> None:
    """init creates the database (the SQLite file beside the config) with the views; running it
    again is fine."""
    outcome = ran["init-twice"]
    assert "created database at schema version" in outcome.stdout(0)
    assert "is up to date" in outcome.stdout(1)
    assert outcome.ws.has_database()
    assert outcome.ws.pg is not None or outcome.ws.db.is_file()
    assert outcome.after is not None
    assert any("CREATE VIEW v_invoices" in line for line in outcome.after)


def test_init_on_an_existing_database_changes_nothing(ran: dict[str, Outcome]) -> None:
    """init on a database with retainers leaves every row and schema statement as it was."""
    outcome = ran["init-existing"]
    assert "is up to date" in outcome.stdout()
    assert outcome.before is not None
    assert outcome.after == outcome.before


def test_config_check_reports_ok(ran: dict[str, Outcome]) -> None:
    """config check validates without creating the database and never prints the RPC URL."""
    outcome = ran["config-check"]
    text = outcome.stdout()
    assert text.splitlines()[0] == f"config OK: {outcome.ws.config.resolve()}"
    assert f"chain base (id 8453) -> {WALLET}" in text
    assert "not-a-real-key" not in text
    assert outcome.after is None


def test_config_check_json(ran: dict[str, Outcome]) -> None:
    """config check --json prints one JSON document with ok, the config path and the chains."""
    outcome = ran["config-check-json"]
    assert outcome.json() == {
        "ok": True,
        "config": str(outcome.ws.config.resolve()),
        "chains": [{"name": "base", "chain_id": 8453}],
    }


def test_commands_before_init_ask_for_init(ran: dict[str, Outcome]) -> None:
    """Before init a command exits 1 telling to run init, and leaves no empty database behind."""
    outcome = ran["list-before-init"]
    assert outcome.result.returncode == 1
    assert outcome.result.stderr == (
        "proofwatch: error: database is not initialised: run `proofwatch init`\n"
    )
    assert not outcome.ws.has_database()


# --- retainers ------------------------------------------------------------------------------


def test_retainer_add_approve_list_show(ran: dict[str, Outcome]) -> None:
    """A new retainer is a draft with checksummed payers; approval records who and the hash."""
    flow = ran["retainer-flow"]
    assert flow.stdout(0) == "RET-4\n"
    shown = flow.json(1)
    assert shown["status"] == "draft"
    assert (shown["client"], shown["asset"], shown["token_address"]) == ("Globex", "USDC", USDC)
    assert (shown["monthly"], shown["monthly_base_units"]) == ("1234.5", "1234500000")
    assert shown["payers"] == [PAYER]
    assert (shown["scope"], shown["scope_cap"]) == ("Audits", "20 hours")
    assert shown["start_at"] == "2026-02-01T00:00:00Z"
    assert shown["created_at"] == NOW
    assert shown["pay_to"] == WALLET
    assert shown["approved_by"] is None
    assert (shown["invoices"], shown["cycles"]) == ([], [])

    match = re.fullmatch(r"RET-4 approved by Bob: (sha256:[0-9a-f]{64})\n", flow.stdout(2))
    assert match is not None, flow.stdout(2)

    listed = flow.json(3)
    assert _ids(listed) == ["RET-1", "RET-2", "RET-3", "RET-4"]
    assert [r["status"] for r in listed] == ["draft", "approved", "approved", "approved"]
    mine = listed[-1]
    assert (mine["approved_by"], mine["approved_at"]) == ("Bob", NOW)
    assert mine["terms_hash"] == mine["approved_terms_hash"] == match.group(1)
    table = flow.stdout(4)
    assert "RET-4" in table
    assert "1234.5 USDC" in table
    text = flow.stdout(5)
    assert re.search(r"^status\s+approved$", text, flags=re.MULTILINE)
    assert re.search(r"^approved_by\s+Bob$", text, flags=re.MULTILINE)


# --- invoices -------------------------------------------------------------------------------


def test_invoice_issue_prints_exact_amount_address_uri_and_qr(ran: dict[str, Outcome]) -> None:
    """invoice issue shows the exact amount, wallet, EIP-681 URI, a QR and the --due date."""
    out = ran["issue-text"].stdout()
    uri = f"ethereum:{USDC}@8453/transfer?address={WALLET}&uint256=2000000001"
    assert "INV-1 (first_month) for Acme on base" in out
    assert "pay exactly: 2000.000001 USDC  (2000000001 base units)" in out
    assert f"to:          {WALLET}" in out
    assert f"token:       {USDC}" in out
    assert "due:         2026-02-20T23:59:59Z" in out
    assert f"uri:         {uri}" in out
    qr_lines = [line for line in out.splitlines() if line and set(line) <= set("█▀▄ ")]
    assert len(qr_lines) >= 15


def test_invoice_issue_json_has_the_contract_fields(ran: dict[str, Outcome]) -> None:
    """--json prints the CONTRACT.md Invoice shape; WATCHER_NOW sets issued_at and due_at."""
    invoice = ran["issue-json"].json()
    assert set(invoice) >= INVOICE_FIELDS
    assert {k: invoice[k] for k in INVOICE_FIELDS} == {
        "id": "INV-1",
        "retainer_id": "RET-3",
        "client": "Ether Ltd",
        "kind": "first_month",
        "period_index": 1,
        "chain": "base",
        "chain_id": 8453,
        "asset": "ETH",
        "token_address": None,
        "price": "0.5",
        "amount": "0.500000000000000001",
        "amount_base_units": "500000000000000001",
        "pay_to": WALLET,
        "payment_uri": f"ethereum:{WALLET}@8453?value=500000000000000001",
        "status": "open",
        "issued_at": "2026-03-15T07:30:00Z",
        "due_at": "2026-03-22T07:30:00Z",
        "paid_amount": "0",
        "paid_amount_base_units": "0",
        "overpaid_by": "0",
        "payments": [],
        "cycle_id": None,
    }


def test_void_keeps_the_unique_amount_out_of_reach_for_the_cooling_window(
    ran: dict[str, Outcome],
) -> None:
    """A voided invoice's amount is not reissued within billing.tag_cooling_days: the next
    invoice of that price gets a fresh tag (issue 8, trap 1: it used to reuse the voided one)."""
    flow = ran["void-and-cool"]
    first = flow.json(0)
    assert (first["kind"], first["amount"]) == ("first_month", "2000.000001")
    sprint = flow.json(1)
    assert (sprint["id"], sprint["kind"], sprint["price"]) == ("INV-2", "sprint", "2000")
    assert sprint["amount"] == "2000.000002"
    assert sprint["period_index"] is None
    assert flow.stdout(2) == "INV-1 void\n"
    again = flow.json(3)
    assert (again["id"], again["amount"], again["amount_base_units"]) == (
        "INV-3",
        "2000.000003",
        "2000000003",
    )
    assert again["payment_uri"].endswith("&uint256=2000000003")
    assert flow.json(4)["status"] == "void"


def test_invoice_list_json_has_every_invoice(ran: dict[str, Outcome]) -> None:
    """invoice list --json prints every invoice, in id order, with the contract's fields."""
    rows = ran["list-all"].json()
    assert _ids(rows) == ["INV-1", "INV-2", "INV-3"]
    assert all(set(row) >= INVOICE_FIELDS for row in rows)
    assert [row["status"] for row in rows] == ["open", "open", "void"]


def test_invoice_list_filters_by_status_and_retainer(ran: dict[str, Outcome]) -> None:
    """--status and --retainer narrow the list, alone and together."""
    assert _ids(ran["list-void"].json()) == ["INV-3"]
    assert _ids(ran["list-retainer"].json()) == ["INV-2"]
    assert _ids(ran["list-both"].json()) == ["INV-1"]


def test_invoice_list_table(ran: dict[str, Outcome]) -> None:
    """Without --json invoice list prints a table of the matching invoices only."""
    table = ran["list-text"].stdout()
    assert "INV-1" in table
    assert "INV-2" in table
    assert "INV-3" not in table


def test_invoice_show_json_of_a_sprint(ran: dict[str, Outcome]) -> None:
    """invoice show --json of a sprint has its own price, a unique amount and no month number."""
    sprint = ran["show-json"].json()
    assert (sprint["kind"], sprint["status"], sprint["period_index"]) == ("sprint", "void", None)
    assert (sprint["price"], sprint["amount"]) == ("250.5", "250.500001")
    assert sprint["retainer_id"] == "RET-2"


def test_invoice_show_text(ran: dict[str, Outcome]) -> None:
    """invoice show prints one field per line; ids are accepted in any case."""
    text = ran["show-text"].stdout()
    assert re.search(r"^id\s+INV-1$", text, flags=re.MULTILINE)
    assert re.search(r"^amount\s+2000\.000001$", text, flags=re.MULTILINE)
    assert re.search(r"^payment_uri\s+ethereum:", text, flags=re.MULTILINE)


def test_global_options_may_follow_the_command(ran: dict[str, Outcome]) -> None:
    """--config and --env-file work after the command name and its options."""
    assert _ids(ran["options-after-command"].json()) == ["INV-3"]


def test_config_defaults_to_watcher_config(ran: dict[str, Outcome]) -> None:
    """Without --config the config named by $WATCHER_CONFIG is used."""
    shown = ran["config-from-environment"].json()
    assert (shown["id"], shown["asset"]) == ("INV-2", "ETH")


def test_debug_shows_the_traceback(ran: dict[str, Outcome]) -> None:
    """With --debug an error also prints its traceback; the last line is still the message."""
    result = ran["debug"].result
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == "proofwatch: error: unknown invoice 'INV-99'"


# --- refusals: exit code, one line naming the value, database unchanged --------------------


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_naming_the_value(ran: dict[str, Outcome], case: str) -> None:
    """A bad address, amount, date, id, name or option exits 2 with one line naming it; no write."""
    assert_refused(ran[case], BAD_INPUT[case])


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_bad_config_exits_2_naming_the_key(ran: dict[str, Outcome], case: str) -> None:
    """A config with a missing ${VAR} or a private key exits 2 naming it, not the key; no write."""
    assert_refused(ran[case], BAD_CONFIG[case])


@pytest.mark.parametrize("case", list(BY_STATE))
def test_refused_by_state_exits_3(ran: dict[str, Outcome], case: str) -> None:
    """A well-formed request the ledger's state forbids exits 3 naming the object; no write."""
    assert_refused(ran[case], BY_STATE[case])
