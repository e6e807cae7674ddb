"""One Anvil chain shared by a module of CLI tests, and proofwatch workspaces that watch it.

The chain is set up once (a 6-decimal USDC, an 18-decimal DAI, balances for the payers) and
snapshotted; ``Chain.reset`` puts it back to that snapshot before each test, so every test sees
the same blocks and the same start block. Finality is deterministic: Anvil automines each
transaction into its own block, and with one-slot epochs ``finalized`` = ``latest - 2``, so a
payment mined in block B is final once two more blocks are mined, never by waiting.

A workspace is a config dir (watcher.toml + .env) with its database: a SQLite file beside the
config, or a PostgreSQL database on the session's test server (a module that sets ``STORES``
runs on each; a copy of a template is then ``CREATE DATABASE ... TEMPLATE``). ``Workspace.run``
runs the real program (``python -m watcher``) in a subprocess with ``WATCHER_NOW`` set.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.contract import Contract

from tests.support.anvil import AnvilNode
from tests.support.contracts import deploy, erc20_transfer, send_eth, wait_receipt
from tests.support.postgres import PostgresServer
from tests.support.stores import dump_rows, read_rows

SQLITE_URL = "sqlite:///data/watcher.db"

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"  # the consultant's receiving wallet
ELSEWHERE = "0x00000000000000000000000000000000C0FFEE01"  # somebody else's wallet
T0 = "2026-03-02T09:00:00Z"  # retainers approved and first invoices issued
GENESIS = "2026-03-01T00:00:00Z"  # the chain's clock starts here (``chain_node``), before T0
USDC_DECIMALS = 6
RPC_VAR = "PROOFWATCH_E2E_RPC_URL"
CLI_TIMEOUT = 90

#: Tables that say what was settled (not the scan cursor or its poll timestamps).
LEDGER_TABLES = (
    "retainers",
    "approvals",
    "invoices",
    "attachments",
    "transfers",
    "allocations",
    "cycles",
    "proofs",
    "outbox",
    "deliveries",
)


def epoch(when: str) -> int:
    """Unix seconds of an ISO 8601 UTC timestamp ("2026-03-02T09:00:00Z")."""
    return int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp())


def chain_node() -> AnvilNode:
    """An Anvil node (automine, finalized = latest - 2) whose clock starts at GENESIS, so a
    test can put each block at the time WATCHER_NOW says (``Chain.at``)."""
    return AnvilNode(slots_in_an_epoch=1, extra_args=["--timestamp", str(epoch(GENESIS))])


def usdc(amount: str) -> int:
    """Base units of a decimal USDC amount ("1500.000001" -> 1500000001)."""
    return int(Decimal(amount) * 10**USDC_DECIMALS)


@dataclass
class Chain:
    """The shared node, its tokens and dev accounts, and the snapshot every test starts from."""

    node: AnvilNode
    w3: Web3
    usdc: Contract
    dai: Contract
    accounts: list[str]
    start_block: int  # first block after the set-up: where every workspace starts scanning
    _snapshot: str = ""

    @property
    def payer(self) -> str:
        """RET-1's expected payer."""
        return self.accounts[1]

    @property
    def payer2(self) -> str:
        """RET-2's expected payer."""
        return self.accounts[2]

    @property
    def stranger(self) -> str:
        """An address no retainer lists."""
        return self.accounts[3]

    @property
    def broke(self) -> str:
        """An account that holds no token at all."""
        return self.accounts[4]

    def reset(self) -> None:
        """Back to the state right after the set-up (the snapshot is consumed and retaken)."""
        if self._snapshot:
            assert self.node.revert(self._snapshot), "evm_revert failed"
        self._snapshot = self.node.snapshot()
        assert self.node.block_number() == self.start_block - 1

    def pay(
        self, sender: str, base_units: int, *, to: str = WALLET, token: Contract | None = None
    ) -> str:
        """An ERC-20 transfer (USDC by default), mined in its own block; the 0x tx hash."""
        return erc20_transfer(self.w3, token or self.usdc, sender, to, base_units)

    def pay_eth(self, sender: str, wei: int, *, to: str = WALLET) -> str:
        return send_eth(self.w3, sender, to, wei)

    def pay_reverting(self, sender: str, base_units: int) -> str:
        """A USDC transfer to the wallet that is mined but reverts (the sender cannot cover it)."""
        tx = erc20_transfer(self.w3, self.usdc, sender, WALLET, base_units, gas=100_000)
        assert self.receipt(tx)["status"] == 0
        return tx

    def receipt(self, tx: str) -> Any:
        return wait_receipt(self.w3, tx)

    def mine(self, n: int = 1) -> None:
        self.node.mine(n)

    def at(self, when: str) -> None:
        """The next block is mined at ``when`` (later blocks follow from there): the chain's
        clock tells the same story as WATCHER_NOW."""
        self.node.rpc("evm_setNextBlockTimestamp", epoch(when))

    def mine_at(self, when: str, n: int = 1) -> None:
        """Mine ``n`` blocks, the first at ``when``."""
        self.at(when)
        self.mine(n)

    def block_time(self, tx: str) -> str:
        """The ISO 8601 UTC timestamp of the block that mined ``tx``."""
        number = self.receipt(tx)["blockNumber"]
        stamp = int(self.node.block(number)["timestamp"], 16)
        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def finalize(self) -> None:
        """Mine enough blocks for everything mined so far to be final (finalized = latest-2)."""
        self.mine(2)


def setup_chain(node: AnvilNode) -> Chain:
    """Deploy the tokens, fund the payers, and take the snapshot tests start from."""
    w3 = node.web3()
    accounts = node.accounts()
    usdc_token = deploy(w3, "TestToken", "USD Coin", "USDC", USDC_DECIMALS)
    dai_token = deploy(w3, "TestToken", "Dai Stablecoin", "DAI", 18)
    for account in accounts[1:4]:
        for token, units in ((usdc_token, 10**6 * 10**6), (dai_token, 10**6 * 10**18)):
            tx = token.functions.mint(account, units).transact({"from": accounts[0]})
            wait_receipt(w3, tx)
    chain = Chain(node, w3, usdc_token, dai_token, accounts, node.block_number() + 1)
    chain.reset()
    return chain


def config_text(chain: Chain, *, tolerance: str = "0", url: str = SQLITE_URL) -> str:
    return f"""\
[database]
url = "{url}"

[[chains]]
name = "local"
chain_id = 31337
rpc_urls = ["${{{RPC_VAR}}}"]
receiving_address = "{WALLET}"
finality = "finalized"
poll_seconds = 1
start_block = {chain.start_block}
native_symbol = "ETH"

[[chains.tokens]]
symbol = "USDC"
address = "{chain.usdc.address}"
decimals = {USDC_DECIMALS}

[[chains.tokens]]
symbol = "DAI"
address = "{chain.dai.address}"
decimals = 18

[billing]
due_days = 7
renewal_lead_days = 5
grace_days = 3
underpay_tolerance = "{tolerance}"
"""


@dataclass
class Workspace:
    """A config dir watching the shared chain; commands run at ``now`` (WATCHER_NOW).

    Its database is the SQLite file ``data/watcher.db``, or, with ``pg``, the PostgreSQL
    database ``dbname`` on that server."""

    root: Path
    chain: Chain
    now: str = T0
    pg: PostgresServer | None = None
    dbname: str | None = None

    @property
    def config(self) -> Path:
        return self.root / "watcher.toml"

    @property
    def db(self) -> Path:
        return self.root / "data" / "watcher.db"

    @property
    def store(self) -> str:
        return "sqlite" if self.pg is None else "postgresql"

    @property
    def url(self) -> str:
        """The database URL in the config (a relative SQLite path, or the PostgreSQL URL)."""
        if self.pg is None:
            return SQLITE_URL
        assert self.dbname is not None
        return self.pg.url(self.dbname)

    @property
    def engine_url(self) -> str:
        """The database URL to open from the test process."""
        return f"sqlite:///{self.db}" if self.pg is None else self.url

    def write_config(self, *, tolerance: str = "0") -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text(self.chain, tolerance=tolerance, url=self.url))
        (self.root / ".env").write_text(f"{RPC_VAR}={self.chain.node.url}\n")

    def copy(self, where: Path) -> Workspace:
        """A private copy of this workspace (config and database) at ``where``; on PostgreSQL
        a new database made from this one (drop it with ``drop``)."""
        shutil.copytree(self.root, where)
        if self.pg is None:
            return Workspace(where, self.chain, self.now)
        copy = Workspace(where, self.chain, self.now, self.pg, self.pg.create_database(
            template=self.dbname))  # fmt: skip
        copy.config.write_text(copy.config.read_text().replace(self.url, copy.url))
        return copy

    def drop(self) -> None:
        """Drop the PostgreSQL database (nothing for SQLite: the directory goes with tmp_path)."""
        if self.pg is not None and self.dbname is not None:
            self.pg.drop_database(self.dbname)

    # -- running the program -----------------------------------------------------------------

    def env(self, now: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "PROOFWATCH_"))}
        env.update({"WATCHER_NOW": now or self.now, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})
        return env

    def run(self, *args: str, now: str | None = None) -> subprocess.CompletedProcess[str]:
        """``python -m watcher --config <ws>/watcher.toml ARGS...`` at ``now`` (or self.now)."""
        return subprocess.run(
            [sys.executable, "-m", "watcher", "--config", str(self.config), *args],
            cwd=self.root,
            env=self.env(now),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def ok(self, *args: str, now: str | None = None, quiet: bool = True) -> str:
        """Run, require exit 0 (and, if ``quiet``, nothing on stderr); return stdout."""
        result = self.run(*args, now=now)
        assert result.returncode == 0, (args, result.returncode, result.stderr[-3000:])
        if quiet:
            assert result.stderr == "", result.stderr
        return result.stdout

    def json(self, *args: str, now: str | None = None, quiet: bool = True) -> Any:
        """A command with ``--json``: its one JSON document (log lines may go to stderr
        unless ``quiet``)."""
        return self.json_doc(*args, "--json", now=now, quiet=quiet)

    def json_many(self, *commands: tuple[str, ...], now: str | None = None) -> list[Any]:
        """Several read commands side by side (each ends in ``--json`` unless it is ``proof``)."""

        def one(args: tuple[str, ...]) -> Any:
            return (
                self.json_doc(*args, now=now) if args[0] == "proof" else self.json(*args, now=now)
            )

        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            return list(pool.map(one, commands))

    def json_doc(self, *args: str, now: str | None = None, quiet: bool = True) -> Any:
        """A command whose stdout is one JSON document (e.g. ``proof INV``)."""
        return json.loads(self.ok(*args, now=now, quiet=quiet))

    def scan(self, now: str | None = None) -> dict[str, Any]:
        """``scan --json`` (logs go to stderr); the report of the one chain."""
        report: dict[str, Any] = json.loads(self.ok("scan", "--json", now=now, quiet=False))
        return report["local"]

    def tick(self, now: str | None = None) -> dict[str, Any]:
        """``tick --json``; its summary."""
        summary: dict[str, Any] = json.loads(self.ok("tick", "--json", now=now, quiet=False))
        assert summary["failed_chains"] == [], summary
        return summary

    def invoice(self, ref: str, now: str | None = None) -> dict[str, Any]:
        row: dict[str, Any] = self.json("invoice", "show", ref, now=now)
        return row

    # -- reading the database directly -------------------------------------------------------

    def dump(self, tables: Iterable[str] | None = None) -> list[str]:
        """``iterdump`` of the SQLite file: everything, or only the INSERTs into ``tables``
        (on PostgreSQL: every row of every table, or of ``tables``)."""
        if self.pg is not None:
            return dump_rows(self.engine_url, tables)
        conn = sqlite3.connect(self.db)
        try:
            lines = list(conn.iterdump())
        finally:
            conn.close()
        if tables is None:
            return lines
        prefixes = tuple(f'INSERT INTO "{t}" ' for t in tables)
        return [line for line in lines if line.startswith(prefixes)]

    def view(self, name: str, **where: str) -> list[dict[str, Any]]:
        """Rows of an operator SQL view (``v_invoices``, ``v_cycles``...), read directly as an
        operator may: the same fields as the ``--json`` output, without starting the program."""
        sql = f"SELECT * FROM {name}"
        if where:
            sql += " WHERE " + " AND ".join(f"{key} = :{key}" for key in where)
        rows = read_rows(self.engine_url, sql, where)
        for row in rows:
            if isinstance(row.get("payments"), str):
                row["payments"] = json.loads(row["payments"])
        return rows

    def status_of(self, ref: str) -> str:
        """An invoice's status, read from ``v_invoices``."""
        (row,) = self.view("v_invoices", id=ref)
        return str(row["status"])

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Outbox events (the full body: id, type, created_at, data), in the order written."""
        rows = read_rows(self.engine_url, "SELECT type, body FROM outbox ORDER BY seq")
        return [json.loads(r["body"]) for r in rows if type_ is None or r["type"] == type_]

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events()]


def build_template(chain: Chain, root: Path, pg: PostgresServer | None = None) -> Workspace:
    """Through the CLI at T0: RET-1 (Acme GmbH, 1500 USDC/month, expected payer) and RET-2
    (Globex, 900 USDC/month, its own payer), both approved, each with its first-month invoice
    (INV-1 asks 1500.000001, INV-2 asks 900.000001). On ``pg``'s new database, if given."""
    ws = Workspace(root, chain, pg=pg, dbname=pg.create_database() if pg else None)
    ws.write_config()
    ws.ok("init")
    add = ("retainer", "add", "--chain", "local", "--asset", "USDC")
    rid = ws.ok(*add, "--client", "Acme GmbH", "--monthly", "1500", "--payer", chain.payer,
                "--scope", "Support retainer: 20 h/month")  # fmt: skip
    assert rid.strip() == "RET-1"
    ws.ok("retainer", "approve", "RET-1", "--by", "Jane Doe", "--note", "PO-4711")
    rid = ws.ok(*add, "--client", "Globex", "--monthly", "900", "--payer", chain.payer2)
    assert rid.strip() == "RET-2"
    ws.ok("retainer", "approve", "RET-2", "--by", "Hank Scorpio")
    for ret, amount in (("RET-1", "1500.000001"), ("RET-2", "900.000001")):
        issued = ws.json("invoice", "issue", ret)
        assert (issued["status"], issued["amount"]) == ("open", amount), issued
    return ws


# --- the Anvil modules' chain: one node per module, a template ledger, a copy per test -------


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    """One Anvil node per module (automine, finalized = latest - 2) with the tokens and funded
    payers, its clock starting at GENESIS so each test mines its blocks at the times it says
    (``Chain.at``)."""
    with chain_node() as node:
        yield setup_chain(node)


def store_server(request: pytest.FixtureRequest, store: str) -> PostgresServer | None:
    """The session's PostgreSQL server when ``store`` is "postgresql" (started on first use)."""
    if store == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server


@pytest.fixture(scope="module")
def module_store(request: pytest.FixtureRequest) -> str:
    """The store a module's workspaces use: "sqlite" unless the module sets ``STORES`` (then
    each of them in turn, see ``pytest_generate_tests`` in tests/e2e/conftest.py)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="module")
def template(
    chain: Chain,
    module_store: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """The ledger every test of a module copies: two approved retainers with their first
    invoices (``chain_harness.build_template``), on the module's store."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    pg = store_server(request, module_store)
    built = build_template(chain, tmp_path_factory.mktemp(name) / "template", pg)
    yield built
    built.drop()


@pytest.fixture
def ws(chain: Chain, template: Workspace, tmp_path: Path) -> Iterator[Workspace]:
    """The chain back at its snapshot and a private copy of the template ledger."""
    chain.reset()
    copy = template.copy(tmp_path / "ws")
    yield copy
    copy.drop()
