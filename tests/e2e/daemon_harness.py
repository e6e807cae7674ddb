"""A real Anvil node, a proofwatch workspace watching it, and the daemon as a child process.

``Site`` owns everything a daemon end-to-end test starts: an Anvil node mining a block every
second with one-slot epochs (``finalized`` = ``latest - 2``), a 6-decimal demo USDC, a config
dir (watcher.toml + .env) with its SQLite file, the webhook receivers and every
``python -m watcher run`` process; ``close()`` stops all of them, killed or not.

The ledger (one approved retainer and its first-month invoice) is written in-process with
``watcher.ledger.invoices``, the code the ``retainer``/``invoice`` commands call and test end to end
elsewhere, to spare three process starts per test. Everything after that is the daemon's work,
watched from outside: the SQLite file is read through read-only connections as an operator may.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from web3.contract import Contract

from tests.support.anvil import AnvilNode
from tests.support.contracts import deploy, erc20_transfer, wait_receipt
from tests.support.receivers import Received, WebhookReceiver
from tests.support.service import DaemonProcess
from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.settings import load_settings
from watcher.store.db import make_engine, migrate

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-e2e-0123456789abcdef"
MONTHLY = "1500"
DEADLINE = 45.0  # seconds: a payment is final after ~3 blocks, deliveries run every 5 s
STOP_TIMEOUT = 30.0
T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def signature_ok(secret: str, received: Received, within: float = 300) -> bool:
    """CONTRACT.md's ``Proofwatch-Signature``, checked from its definition (not the sender's
    code): ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``, t recent."""
    header = received.headers.get("Proofwatch-Signature", "")
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or "v1" not in fields:
        return False
    message = fields["t"].encode() + b"." + received.body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) <= within
    return fresh and hmac.compare_digest(expected, fields["v1"])


class HoldingReceiver(WebhookReceiver):
    """A receiver that records one event type's requests, then holds its answer (a slow
    receiver) until ``release`` is set: the sender is left waiting mid-delivery."""

    def __init__(self, secret: str, *, hold: str) -> None:
        super().__init__(secret)
        self.hold = hold
        self.holding = threading.Event()  # a request of type ``hold`` is being held
        self.release = threading.Event()

    def _record(self, received: Received) -> None:
        super()._record(received)
        if received.json().get("type") == self.hold and not self.release.is_set():
            self.holding.set()
            self.release.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        self.release.set()  # never leave a handler thread waiting
        super().stop()


@dataclass(frozen=True)
class Hook:
    """One ``[[notify.webhooks]]`` entry."""

    url: str
    secret: str = SECRET
    events: tuple[str, ...] = ("*",)


class Site:
    """One Anvil node with a demo USDC, and one proofwatch workspace that watches it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "watcher.toml"
        self.db = root / "watcher.db"
        self.node = AnvilNode(slots_in_an_epoch=1, block_time=1)
        self.daemons: list[DaemonProcess] = []
        self.receivers: list[WebhookReceiver] = []
        self.usdc: Contract | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Site:
        self.root.mkdir(parents=True, exist_ok=True)
        self.node.start()
        self.w3 = self.node.web3()
        accounts = self.node.accounts()
        self.minter, self.client, self.consultant = accounts[0], accounts[1], accounts[9]
        self.usdc = deploy(self.w3, "TestToken", "USD Coin", "USDC", 6)
        tx = self.usdc.functions.mint(self.client, 10_000 * 10**6).transact({"from": self.minter})
        wait_receipt(self.w3, tx)
        self.start_block = self.node.block_number()
        return self

    def close(self) -> None:
        """Kill every daemon still running, stop every receiver and the node."""
        try:
            for daemon in self.daemons:
                with contextlib.suppress(Exception):
                    daemon.kill9()
        finally:
            for receiver in self.receivers:
                receiver.stop()
            self.node.stop()

    def receiver(self, receiver: WebhookReceiver | None = None) -> WebhookReceiver:
        """Start (and own) a signature-checking receiver."""
        receiver = receiver or WebhookReceiver(SECRET)
        self.receivers.append(receiver)
        return receiver.start()

    # -- the workspace ------------------------------------------------------------------------

    def configure(self, hooks: Sequence[Hook], *, rpc_urls: Sequence[str] = ()) -> None:
        """watcher.toml watching the node (poll every second), or through ``rpc_urls``; URLs
        and secrets in .env."""
        assert self.usdc is not None
        urls = list(rpc_urls) or [str(self.node.url)]
        variables = ["E2E_RPC_URL"] + [f"E2E_RPC_URL_{i}" for i in range(1, len(urls))]
        env = [f"{var}={url}" for var, url in zip(variables, urls, strict=True)]
        names = ", ".join(f'"${{{var}}}"' for var in variables)
        webhooks = []
        for i, hook in enumerate(hooks):
            env += [f"E2E_HOOK_{i}_URL={hook.url}", f"E2E_HOOK_{i}_SECRET={hook.secret}"]
            webhooks.append(  # named by position on purpose: the tests refer to webhook:<i>
                f'[[notify.webhooks]]\nname = "webhook:{i}"\nurl = "${{E2E_HOOK_{i}_URL}}"\n'
                f'secret = "${{E2E_HOOK_{i}_SECRET}}"\nevents = {json.dumps(list(hook.events))}\n'
            )
        (self.root / ".env").write_text("\n".join(env) + "\n")
        self.config.write_text(
            f"""\
[database]
url = "sqlite:///watcher.db"

[[chains]]
name = "local"
chain_id = {self.node.chain_id}
rpc_urls = [{names}]
receiving_address = "{self.consultant}"
finality = "finalized"
poll_seconds = 1
idle_poll_seconds = 1
start_block = {self.start_block}

[[chains.tokens]]
symbol = "USDC"
address = "{self.usdc.address}"
decimals = 6

[billing]
due_days = 7

"""
            + "\n".join(webhooks)
        )

    def issue_first_invoice(self) -> int:
        """Create the database, approve RET-1 (Acme GmbH, 1500 USDC a month, the client as
        payer) and issue INV-1 at the real clock; the base units INV-1 asks for."""
        settings = load_settings(self.config)
        engine = make_engine(settings.database_url)
        try:
            migrate(engine)
            ctx = Context(settings=settings, engine=engine, now=lambda: datetime.now(UTC))
            ledger.add_retainer(
                ctx, client="Acme GmbH", chain="local", asset="USDC", monthly=MONTHLY,
                payers=[self.client],
            )  # fmt: skip
            ledger.approve_retainer(ctx, "RET-1", by="Jane Doe (Acme CFO)")
            invoice = ledger.issue_invoice(ctx, "RET-1")
            return int(invoice.amount)
        finally:
            engine.dispose()

    def child_env(self) -> dict[str, str]:
        """This process's environment without anything that would steer the child."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WATCHER_", "PROOFWATCH_", "E2E_"))
        }
        return {**env, "PYTHONUNBUFFERED": "1"}

    def start_daemon(self) -> DaemonProcess:
        daemon = DaemonProcess(self.config, self.child_env(), stop_timeout=STOP_TIMEOUT)
        self.daemons.append(daemon)
        return daemon

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m watcher ARGS --config ...`` to completion."""
        return subprocess.run(
            [sys.executable, "-m", "watcher", *args, "--config", str(self.config)],
            cwd=REPO_ROOT,
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        """``proofwatch status --json``."""
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    # -- the chain ----------------------------------------------------------------------------

    def pay(self, base_units: int) -> str:
        """The client sends ``base_units`` of USDC to the consultant; the 0x tx hash."""
        assert self.usdc is not None
        return erc20_transfer(self.w3, self.usdc, self.client, self.consultant, base_units)

    # -- the database, read-only --------------------------------------------------------------

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def invoice(self) -> dict[str, Any]:
        (row,) = self.query("SELECT * FROM v_invoices WHERE id = 'INV-1'")
        return row

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Outbox rows (id, type, body as stored), in the order written."""
        rows = self.query("SELECT id, type, body FROM outbox ORDER BY seq")
        return [r for r in rows if type_ is None or r["type"] == type_]

    def deliveries(
        self, type_: str | None = None, *, channel: str | None = None
    ) -> list[dict[str, Any]]:
        """Delivery rows with their event's type, in event then channel order."""
        rows = self.query(
            "SELECT d.*, o.type FROM deliveries d JOIN outbox o ON o.id = d.event_id "
            "ORDER BY o.seq, d.channel"
        )
        return [
            r
            for r in rows
            if (type_ is None or r["type"] == type_)
            and (channel is None or r["channel"] == channel)
        ]

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY id", delivery_id
        )

    def wait(self, check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
        """``wait_until``, failing with the tail of the latest daemon's log."""
        try:
            return wait_until(check, what, timeout)
        except AssertionError as exc:
            tail = self.daemons[-1].log[-3000:] if self.daemons else ""
            raise AssertionError(f"{exc}\nlatest daemon log:\n{tail}") from None

    def heartbeat_of(self, daemon: DaemonProcess) -> str | None:
        """The daemon row's last heartbeat if ``daemon`` holds it (fails if it died)."""
        assert daemon.alive(), f"daemon exited early:\n{daemon.log[-3000:]}"
        rows = self.query("SELECT pid, last_heartbeat_at, stopped_at FROM daemon WHERE id = 1")
        if rows and rows[0]["pid"] == daemon.pid and rows[0]["stopped_at"] is None:
            return str(rows[0]["last_heartbeat_at"])
        return None


def by_event(requests: Sequence[Received]) -> dict[str, list[Received]]:
    """Requests grouped by their ``Proofwatch-Event-Id`` header, in arrival order."""
    groups: dict[str, list[Received]] = {}
    for received in requests:
        groups.setdefault(received.event_id or "", []).append(received)
    return groups


def of_type(requests: Sequence[Received], type_: str) -> list[Received]:
    return [r for r in requests if r.json()["type"] == type_]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A node with a demo USDC and a workspace; every daemon, receiver and node stopped after."""
    site = Site(tmp_path / "site")
    try:
        yield site.start()
    finally:
        site.close()
