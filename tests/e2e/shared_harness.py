"""Several daemons sharing one PostgreSQL database and several chains, as child processes.

``SharedSite`` owns everything such a test (or ``bench/chaos.py --database postgresql``)
starts: one Anvil node per chain (its own chain id, a block every second, one-slot epochs so
``finalized`` = ``latest - 2``), a 6-decimal demo USDC on each, a config dir (watcher.toml +
.env, the database URL and its password in .env) on a PostgreSQL database the caller gives,
one counting webhook receiver and every ``python -m watcher run`` process. ``close()`` stops
all of them, killed or not. The database is read with SQL, as an operator may.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from web3.contract import Contract

from tests.e2e.daemon_harness import SECRET, wait_until
from tests.support.anvil import AnvilNode
from tests.support.contracts import deploy, erc20_transfer, wait_receipt
from tests.support.receivers import WebhookReceiver
from tests.support.service import DaemonProcess
from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.settings import load_settings
from watcher.store.db import make_engine, migrate

REPO_ROOT = Path(__file__).resolve().parents[2]
FIRST_CHAIN_ID = 31_400


@dataclass
class Chain:
    """One Anvil node, its USDC, and who pays whom on it."""

    name: str
    node: AnvilNode
    usdc: Contract
    client: str
    consultant: str
    start_block: int


class SharedSite:
    """``chains`` Anvil nodes, one PostgreSQL database, a receiver and N daemons."""

    def __init__(
        self, root: Path, database_url: str, *, chains: int = 4, lease_seconds: float = 10
    ) -> None:
        self.root, self.database_url = root, database_url
        self.config = root / "watcher.toml"
        self.count, self.lease_seconds = chains, lease_seconds
        self.chains: list[Chain] = []
        self.daemons: list[DaemonProcess] = []
        self.receiver = WebhookReceiver(SECRET, latency=0.01)
        self.engine = make_engine(database_url)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SharedSite:
        self.root.mkdir(parents=True, exist_ok=True)
        self.receiver.start()
        for i in range(self.count):
            node = AnvilNode(
                slots_in_an_epoch=1,
                block_time=1,
                extra_args=["--chain-id", str(FIRST_CHAIN_ID + i)],
            ).start()
            self.chains.append(self._prepare(f"c{i}", node))
        self._configure()
        migrate(self.engine)
        return self

    def _prepare(self, name: str, node: AnvilNode) -> Chain:
        w3 = node.web3()
        accounts = node.accounts()
        minter, client, consultant = accounts[0], accounts[1], accounts[9]
        usdc = deploy(w3, "TestToken", "USD Coin", "USDC", 6)
        wait_receipt(w3, usdc.functions.mint(client, 10**12).transact({"from": minter}))
        return Chain(name, node, usdc, client, consultant, node.block_number())

    def close(self) -> None:
        """Kill every daemon still running, stop the receiver and the nodes."""
        try:
            for daemon in self.daemons:
                with contextlib.suppress(Exception):
                    daemon.kill9()
        finally:
            self.receiver.stop()
            for chain in self.chains:
                chain.node.stop()
            self.engine.dispose()

    def _configure(self) -> None:
        env = [f"DATABASE_URL={self.database_url}", f"HOOK_URL={self.receiver.url()}",
               f"HOOK_SECRET={SECRET}"]  # fmt: skip
        chains = []
        for i, c in enumerate(self.chains):
            env.append(f"RPC_{i}={c.node.url}")
            chains.append(
                f"""[[chains]]
name = "{c.name}"
chain_id = {c.node.chain_id}
rpc_urls = ["${{RPC_{i}}}"]
receiving_address = "{c.consultant}"
finality = "finalized"
poll_seconds = 1
start_block = {c.start_block}

[[chains.tokens]]
symbol = "USDC"
address = "{c.usdc.address}"
decimals = 6
"""
            )
        (self.root / ".env").write_text("\n".join(env) + "\n")
        self.config.write_text(
            '[database]\nurl = "${DATABASE_URL}"\n\n'
            + "\n".join(chains)
            + f"""
[billing]
due_days = 7

[daemon]
lease_seconds = {self.lease_seconds:g}

[[notify.webhooks]]
name = "crm"
url = "${{HOOK_URL}}"
secret = "${{HOOK_SECRET}}"
events = ["*"]
"""
        )

    # -- the ledger ---------------------------------------------------------------------------

    def issue(self, chain: Chain, client: str) -> tuple[str, int]:
        """An approved retainer on ``chain`` paid by its client, and its first invoice; the
        invoice id and the base units it asks for."""
        settings = load_settings(self.config)
        ctx = Context(settings=settings, engine=self.engine, now=lambda: datetime.now(UTC))
        retainer = ledger.add_retainer(
            ctx, client=client, chain=chain.name, asset="USDC", monthly="1500",
            payers=[chain.client],
        )  # fmt: skip
        ledger.approve_retainer(ctx, f"RET-{retainer.id}", by="Jane Doe")
        invoice = ledger.issue_invoice(ctx, f"RET-{retainer.id}")
        return f"INV-{invoice.id}", int(invoice.amount)

    def pay(self, chain: Chain, base_units: int) -> str:
        return erc20_transfer(
            chain.node.web3(), chain.usdc, chain.client, chain.consultant, base_units
        )

    # -- daemons ------------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "PROOFWATCH_"))}
        return {**env, "PYTHONUNBUFFERED": "1"}

    def start_daemon(self) -> DaemonProcess:
        daemon = DaemonProcess(self.config, self.child_env(), stop_timeout=30)
        self.daemons.append(daemon)
        return daemon

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "watcher", *args, "--config", str(self.config)],
            cwd=REPO_ROOT, env=self.child_env(), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    # -- the database, read with SQL ----------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(sa.text(sql), params).mappings()]

    def holders(self) -> dict[str, int | None]:
        """Chain -> pid of the daemon holding its unexpired lease (None: nobody)."""
        rows = self.query(
            "SELECT l.chain, d.pid FROM chain_leases l LEFT JOIN daemons d "
            "ON d.holder = l.holder AND l.expires_at > (now() AT TIME ZONE 'UTC')"
        )
        return {r["chain"]: r["pid"] for r in rows}

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        """``wait_until``, failing with the tail of every daemon's log."""
        try:
            return wait_until(check, what, timeout)
        except AssertionError as exc:
            tails = "\n".join(f"--- daemon {d.pid}:\n{d.log[-2000:]}" for d in self.daemons)
            raise AssertionError(f"{exc}\n{tails}") from None
