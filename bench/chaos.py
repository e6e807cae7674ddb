"""Chaos run: a live `proofwatch run` daemon through reorgs, kill -9 and a lagging RPC node.

Run: ``.venv/bin/python bench/chaos.py [--seed N] [--kills 30] [--quick] [--database
postgresql --daemons 2]``. Needs ``make tools`` (Anvil; PostgreSQL's server for
``--database postgresql``). See bench/README.md ("Chaos run").

One Anvil node (blocks only when the driver mines them), a 6-decimal USDC and the Forwarder,
the fault-injecting RPC proxy in front of it (its lag mode switched on and off at random when
the proxy has ``lag_blocks``), a real local webhook receiver, and the daemon as a child process
watching the wallet with an N-confirmation finality policy. The driver, seeded, runs steps of
``--step-seconds``: lag on/off, a reorg of depth 1-5 (its transactions dropped or moved to
other blocks; dropped invoice payments are paid again later), payments of every kind (ERC-20,
native top-level, internal through ``forward`` and ``forwardMany``) and stray inflows, one
block, and at 30 random steps a kill -9 of the daemon at a random moment within the step,
restarted at once. With ``--database postgresql`` the data lives on a PostgreSQL server the run
starts (``tests.support.postgres``) and ``--daemons N`` daemons share it: each kill -9 hits
one of them at random (the chain's lease moves to another within ``lease_seconds``) and the
killed one is restarted at once. Then it stops the chaos, mines until everything is final and
delivered, and checks the result against the canonical chain: exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from web3.contract import Contract  # noqa: E402

from bench.chaos_checks import Check, Sent, canonical_inflows, verify  # noqa: E402
from bench.chaos_plan import Plan, Reorg, Step, build_plan  # noqa: E402
from tests.e2e.chain_harness import WALLET  # noqa: E402
from tests.e2e.daemon_harness import SECRET, Hook, Site, by_event, wait_until  # noqa: E402
from tests.support.anvil import AnvilNode  # noqa: E402
from tests.support.contracts import deploy, erc20_transfer, send_eth, wait_receipt  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.receivers import Received, WebhookReceiver  # noqa: E402
from tests.support.rpcproxy import RpcProxy  # noqa: E402
from watcher.ledger import invoices as ledger  # noqa: E402
from watcher.ledger.context import Context  # noqa: E402
from watcher.settings import load_settings  # noqa: E402
from watcher.store.db import make_engine, migrate  # noqa: E402

RPC_KEY = "chaos-api-key-5f1e"  # in the RPC URL's path, like a provider key: must never be logged
SETTLE_TIMEOUT = 240.0  # seconds for everything to become final and delivered after the chaos


class SlowReceiver(WebhookReceiver):
    """A receiver that records each request, then waits ``delay`` seconds before answering:
    a kill -9 in that window leaves a delivery the receiver has but the daemon never heard
    answered, so it is sent again (a duplicate, as CONTRACT.md allows)."""

    def __init__(self, secret: str, *, delay: float) -> None:
        super().__init__(secret)
        self.delay = delay

    def start(self) -> SlowReceiver:
        super().start()
        server = self._server
        assert server is not None
        plain = server.handle_error

        def quiet(request: Any, client_address: Any) -> None:
            """A sender killed while waiting for the answer is expected: no traceback."""
            if not isinstance(sys.exc_info()[1], ConnectionError):
                plain(request, client_address)

        server.handle_error = quiet  # type: ignore[method-assign]
        return self

    def _record(self, received: Received) -> None:
        super()._record(received)
        time.sleep(self.delay)


class ChaosSite(Site):
    """``Site`` with a node that mines only when told, the Forwarder, funded senders, the RPC
    proxy in front of the node, and a config with N confirmations and ``trace_filter``."""

    def __init__(self, root: Path, *, confirmations: int, database_url: str | None = None) -> None:
        super().__init__(root)
        self.node = AnvilNode()  # automine for the set-up, then off: the driver mines
        self.confirmations = confirmations
        self.database_url = database_url  # None: the SQLite file watcher.db
        self.engine = make_engine(database_url) if database_url else None
        self.proxy: RpcProxy | None = None
        self.forwarder: Contract | None = None
        self.senders: list[str] = []

    def start(self) -> ChaosSite:
        super().start()
        assert self.usdc is not None
        self.consultant = WALLET
        self.senders = self.node.accounts()[1:9]
        self.forwarder = deploy(self.w3, "Forwarder")
        for sender in self.senders:
            tx = self.usdc.functions.mint(sender, 10**6 * 10**6).transact({"from": self.minter})
            wait_receipt(self.w3, tx)
        self.node.rpc("evm_setAutomine", False)
        self.start_block = self.node.block_number() + 1
        assert self.node.url is not None
        self.proxy = RpcProxy(self.node.url).start()
        return self

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.proxy is not None:
                self.proxy.stop()
            if self.engine is not None:
                self.engine.dispose()

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Read-only SQL on the site's database (SQLite file or PostgreSQL)."""
        if self.engine is None:
            return super().query(sql, *params)
        assert not params, "positional parameters are SQLite's"
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.exec_driver_sql(sql).mappings()]

    def configure(self, hooks: Sequence[Hook]) -> None:
        assert self.usdc is not None and self.proxy is not None
        (hook,) = hooks
        (self.root / ".env").write_text(
            f"E2E_RPC_URL={self.proxy.url}/v2/{RPC_KEY}\n"
            f"E2E_HOOK_URL={hook.url}\nE2E_HOOK_SECRET={hook.secret}\n"
            f"E2E_DATABASE_URL={self.database_url or 'sqlite:///watcher.db'}\n"
        )
        self.config.write_text(f"""\
[database]
url = "${{E2E_DATABASE_URL}}"

[daemon]
lease_seconds = 10

[[chains]]
name = "local"
chain_id = {self.node.chain_id}
rpc_urls = ["${{E2E_RPC_URL}}"]
receiving_address = "{WALLET}"
finality = {self.confirmations}
poll_seconds = 1
idle_poll_seconds = 1
start_block = {self.start_block}
native_symbol = "ETH"
internal = "trace_filter"

[[chains.tokens]]
symbol = "USDC"
address = "{self.usdc.address}"
decimals = 6

[billing]
due_days = 7

[[notify.webhooks]]
url = "${{E2E_HOOK_URL}}"
secret = "${{E2E_HOOK_SECRET}}"
events = ["*"]
""")

    def issue_invoices(self, plan: Plan) -> list[tuple[str, int]]:
        """One approved retainer per planned invoice (no expected payers: invoices match by
        their unique amount), each with its first-month invoice: (id, base units) in plan
        order."""
        settings = load_settings(self.config)
        engine = make_engine(settings.database_url)
        issued: list[tuple[str, int]] = []
        try:
            migrate(engine)
            ctx = Context(settings=settings, engine=engine, now=lambda: datetime.now(UTC))
            for p in plan.invoices:
                ret = ledger.add_retainer(
                    ctx, client=f"Client {p.index + 1}", chain="local", asset=p.asset,
                    monthly=p.monthly,
                )  # fmt: skip
                ref = f"RET-{ret.id}"
                ledger.approve_retainer(ctx, ref, by="chaos")
                invoice = ledger.issue_invoice(ctx, ref)
                issued.append((f"INV-{invoice.id}", int(invoice.amount)))
        finally:
            engine.dispose()
        return issued


class Driver:
    """Runs the plan's steps against the site; records what it sent, killed and reorganised."""

    def __init__(
        self,
        site: ChaosSite,
        plan: Plan,
        issued: list[tuple[str, int]],
        step_seconds: float,
        daemons: int = 1,
    ) -> None:
        self.site, self.plan, self.issued = site, plan, issued
        self.step_seconds = step_seconds
        self.rng = random.Random(plan.seed + 1)  # senders, moved offsets, repay delays
        self.sent: list[Sent] = []
        self.repay_at: dict[int, list[int]] = {}  # step -> invoice indexes to pay again
        self.index_of = {ref: i for i, (ref, _) in enumerate(issued)}
        self.kills = 0
        self.repaid = 0  # invoice payments dropped by a reorg, to be paid again
        self.same_hash = 0  # payments sent again that were the dropped transaction itself
        self.died: list[str] = []  # log tails of daemons that exited on their own
        self.reorgs: Counter[tuple[int, str]] = Counter()
        self.lag_windows: list[int] = []
        self.lag_supported = site.proxy is not None and hasattr(site.proxy, "lag_blocks")
        self.pool = [site.start_daemon() for _ in range(daemons)]

    @property
    def daemon(self) -> Any:
        """The first daemon (the only one on SQLite)."""
        return self.pool[0]

    # -- the chain ---------------------------------------------------------------------------

    def _sender(self) -> str:
        return self.rng.choice(self.site.senders)

    def _send(self, kind: str, amounts: tuple[int, ...], invoice: str | None, step: int) -> None:
        site, frm = self.site, self._sender()
        assert site.usdc is not None and site.forwarder is not None
        if kind == "erc20":
            tx = erc20_transfer(site.w3, site.usdc, frm, WALLET, amounts[0], wait=False)
        elif kind == "native":
            tx = send_eth(site.w3, frm, WALLET, amounts[0], wait=False)
        elif kind == "internal":
            call = site.forwarder.functions.forward(WALLET)
            tx = call.transact({"from": frm, "value": amounts[0]}).to_0x_hex()
        else:
            call = site.forwarder.functions.forwardMany([WALLET] * len(amounts), list(amounts))
            tx = call.transact({"from": frm, "value": sum(amounts)}).to_0x_hex()
        known = next((s for s in self.sent if s.tx.lower() == tx.lower()), None)
        if known is not None:
            # A dropped transaction sent again by the same sender with the same nonce and
            # fields is the same signed transaction: the same hash, one payment.
            known.fate, known.step = "sent again", step
            self.same_hash += 1
            return
        self.sent.append(Sent(tx, kind, amounts, invoice, step))

    def _pay(self, index: int, step: int) -> None:
        p = self.plan.invoices[index]
        ref, amount = self.issued[index]
        if p.pay_kind == "many":  # the invoice and a stray amount, in one transaction
            self._send("many", (amount, 10**15 + self.rng.randint(1, 999)), ref, step)
        else:
            self._send(p.pay_kind, (amount,), ref, step)

    def _reorg(self, reorg: Reorg, step: int) -> None:
        node = self.site.node
        head = node.block_number()
        txs = [
            tx
            for n in range(head - reorg.depth + 1, head + 1)
            for tx in node.block(n)["transactions"]
        ]
        included: list[tuple[Any, int]] = []
        if reorg.move:
            offsets = sorted(self.rng.randint(0, reorg.depth - 1) for _ in txs)
            raws = [node.rpc("eth_getRawTransactionByHash", tx) for tx in txs]
            included = list(zip(raws, offsets, strict=True))
        node.reorg(reorg.depth, included)
        self.reorgs[(reorg.depth, "move" if reorg.move else "drop")] += 1
        ours = {s.tx.lower(): s for s in self.sent}
        for tx in txs:
            s = ours.get(tx.lower())
            if s is None:
                continue
            if node.rpc("eth_getTransactionReceipt", tx) is not None:
                s.fate = "moved"
                continue
            s.fate = "dropped"
            if s.invoice is not None:
                self.repaid += 1
                again = step + self.rng.randint(1, 4)
                self.repay_at.setdefault(again, []).append(self.index_of[s.invoice])

    # -- the daemon --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        for i, daemon in enumerate(self.pool):
            if not daemon.alive():
                self.died.append(daemon.log[-2000:])
                self.pool[i] = self.site.start_daemon()

    def _kill(self) -> None:
        self._check_alive()
        i = self.rng.randrange(len(self.pool))  # one of the daemons sharing the database
        assert self.pool[i].kill9() == -signal.SIGKILL
        self.kills += 1
        self.pool[i] = self.site.start_daemon()

    # -- the run -----------------------------------------------------------------------------

    def run_step(self, step: Step) -> None:
        began = time.monotonic()
        proxy = self.site.proxy
        if step.lag is not None and self.lag_supported and proxy is not None:
            proxy.lag_blocks = step.lag
            if step.lag:
                self.lag_windows.append(step.lag)
        if step.reorg is not None:
            self._reorg(step.reorg, step.index)
        for index in step.pays + self.repay_at.pop(step.index, []):
            self._pay(index, step.index)
        for kind, amount in step.noise:
            self._send(kind, (amount,), None, step.index)
        self.site.node.mine(1)
        if step.kill_after is not None:
            time.sleep(step.kill_after)
            self._kill()
        self._check_alive()
        time.sleep(max(0.0, began + self.step_seconds - time.monotonic()))

    def settle(self, timeout: float) -> tuple[bool, float]:
        """No more chaos: lag off, the dropped invoices paid again, N + 1 more blocks (one per
        step) so every payment is final, then no more blocks until every inflow is final, the
        cursor at the head and every event delivered; whether that happened, and how long."""
        proxy = self.site.proxy
        if self.lag_supported and proxy is not None:
            proxy.lag_blocks = 0
        last = len(self.plan.steps)
        for step in sorted(self.repay_at):
            for index in self.repay_at.pop(step):
                self._pay(index, last)
        began = time.monotonic()
        for _ in range(self.site.confirmations + 2):
            self.site.node.mine(1)
            self._check_alive()
            time.sleep(self.step_seconds)

        def done() -> bool:
            self._check_alive()
            return self._quiet()

        try:
            wait_until(done, "every inflow final and every event delivered", timeout)
        except AssertionError:
            return False, time.monotonic() - began
        return True, time.monotonic() - began

    def _quiet(self) -> bool:
        site = self.site
        waiting = site.query("SELECT count(*) AS n FROM transfers WHERE status = 'seen'")
        (state,) = site.query("SELECT cursor, head FROM chain_state") or [{"cursor": -1}]
        undelivered = site.query(
            "SELECT (SELECT count(*) FROM deliveries WHERE status != 'delivered')"
            " + (SELECT count(*) FROM outbox WHERE NOT fanned_out) AS n"
        )
        head = site.node.block_number()
        scanned = state["cursor"] == head
        return waiting == [{"n": 0}] and undelivered == [{"n": 0}] and scanned


def machine() -> str:
    return f"Python {platform.python_version()}, {platform.machine()}"


def warnings_in(logs: str) -> tuple[Counter[str], Counter[str]]:
    """Event names of the daemons' warning and error log lines (JSON lines), counted; and the
    error lines as "event: error" (their ``error`` field is redacted by the daemon)."""
    seen: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for line in logs.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
            seen[str(entry.get("event"))] += 1
            if entry.get("level") != "warning":
                errors[f"{entry.get('event')}: {str(entry.get('error', ''))[:160]}"] += 1
    return seen, errors


def report(driver: Driver, figures: dict[str, Any], delivered: Counter[str]) -> list[str]:
    sent = driver.sent
    kinds = Counter(s.kind for s in sent)
    pays = [s for s in sent if s.invoice is not None]
    fates = Counter(s.fate for s in sent)
    reorgs = sum(driver.reorgs.values())
    depths = Counter(d for d, _ in driver.reorgs.elements())
    modes = Counter(m for _, m in driver.reorgs.elements())
    dups = sum(n - 1 for n in delivered.values() if n > 1)
    lag = f"{len(driver.lag_windows)} windows, lag {sorted(set(driver.lag_windows))} blocks"
    if not driver.lag_supported:
        lag = "off (this proxy has no lag_blocks)"
    elif not driver.lag_windows:
        lag = "off (--max-lag 0)"
    return [
        f"kills:        {driver.kills} (kill -9, restarted at once); daemons that exited on "
        f"their own: {len(driver.died)}",
        f"reorgs:       {reorgs} (depth {dict(sorted(depths.items()))}; {dict(modes)})",
        f"lag mode:     {lag}",
        f"payments:     {len(sent)} txs to the wallet ({dict(kinds)}); {len(pays)} invoice "
        f"payments, {driver.repaid} dropped by a reorg and paid "
        f"again ({driver.same_hash} of them as the same signed tx); fates {dict(fates)}",
        f"transfers:    {dict(figures['transfers'])}",
        f"paid:         {figures['settled']} / {figures['invoices']} invoices, "
        f"{figures['cycles']} cycles",
        f"events:       {dict(sorted(figures['events'].items()))}",
        f"daemon warnings/errors: {dict(sorted(figures['warnings'].items()))}",
        *(f"  {n} x {text}" for text, n in figures["errors"].most_common(5)),
        f"deliveries:   {sum(delivered.values())} accepted webhook requests for "
        f"{len(delivered)} events; duplicates: {dups} (repeats after a kill, same id and body)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=None, help="kill -9s (default 30; quick 5)")
    parser.add_argument("--quick", action="store_true", help="a short run: 5 kills, 8 invoices")
    parser.add_argument("--invoices", type=int, default=None, help="default 24 (quick: 8)")
    parser.add_argument("--confirmations", type=int, default=6, help="finality policy N")
    parser.add_argument("--max-lag", type=int, default=8, help="proxy lag 1..N blocks; 0: off")
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument(
        "--receiver-delay", type=float, default=0.2, help="seconds the webhook takes to answer"
    )
    parser.add_argument("--keep", type=Path, help="keep the workspace and daemon logs here")
    parser.add_argument(
        "--database", choices=("sqlite", "postgresql"), default="sqlite",
        help="postgresql: start a PostgreSQL server for the run (see tests/support/postgres.py)",
    )  # fmt: skip
    parser.add_argument(
        "--daemons", type=int, default=None, help="daemons sharing the database (postgresql: 2)"
    )
    args = parser.parse_args(argv)
    daemons = args.daemons or (2 if args.database == "postgresql" else 1)
    if daemons > 1 and args.database == "sqlite":
        parser.error("--daemons above 1 needs --database postgresql (SQLite has one daemon)")
    kills = args.kills if args.kills is not None else (5 if args.quick else 30)
    invoices = args.invoices if args.invoices is not None else (8 if args.quick else 24)
    if args.confirmations <= 5:
        parser.error("--confirmations must be above 5: reorgs go 5 blocks deep")
    plan = build_plan(
        args.seed, kills=kills, invoices=invoices, max_lag=args.max_lag,
        step_seconds=args.step_seconds,
    )  # fmt: skip
    started = time.monotonic()
    print(
        f"proofwatch chaos run  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ({machine()})\n"
        f"seed {args.seed}: {len(plan.steps)} steps of {args.step_seconds:g} s, {plan.kills} "
        f"kills, {len(plan.invoices)} invoices, finality = {args.confirmations} confirmations; "
        f"{args.database}, {daemons} daemon{'s' if daemons > 1 else ''}",
        flush=True,
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="pw-chaos-"))
    server = PostgresServer().start() if args.database == "postgresql" else None
    url = server.url(server.create_database()) if server is not None else None
    site = ChaosSite(root / "site", confirmations=args.confirmations, database_url=url)
    failed: list[Check] = [Check("the run completed", False)]
    try:
        site.start()
        receiver = site.receiver(SlowReceiver(SECRET, delay=args.receiver_delay))
        site.configure([Hook(receiver.url(), SECRET)])
        issued = site.issue_invoices(plan)
        driver = Driver(site, plan, issued, args.step_seconds, daemons=daemons)
        for step in plan.steps:
            driver.run_step(step)
        chaos_seconds = time.monotonic() - started
        settled, settle_seconds = driver.settle(SETTLE_TIMEOUT)
        exit_code = max((d.terminate() for d in driver.pool), key=abs)
        groups = {k: v for k, v in by_event(receiver.accepted()).items() if k}
        delivered = Counter({k: len(v) for k, v in groups.items()})
        assert site.usdc is not None
        expected, canonical = canonical_inflows(
            site.node.rpc, driver.sent, token=site.usdc.address, wallet=WALLET
        )
        checks, figures = verify(
            query=site.query, expected=expected, canonical_txs=canonical, sent=driver.sent,
            invoice_amounts=dict(issued), delivered_ids=delivered,
            delivered_bodies={k: {r.body for r in v} for k, v in groups.items()},
            logs="".join(d.log for d in site.daemons), secret_marker=RPC_KEY,
            block_hash_at=lambda n: str(site.node.block(n)["hash"]),
        )  # fmt: skip
        figures["warnings"], figures["errors"] = warnings_in("".join(d.log for d in site.daemons))
        checks = [
            Check("everything final and delivered after the chaos", settled,
                  f"not within {SETTLE_TIMEOUT:g} s"),
            Check("no daemon exited on its own", not driver.died,
                  driver.died[0][-500:] if driver.died else ""),
            Check("the last daemons stop on SIGTERM with 0", exit_code == 0, f"exit {exit_code}"),
            *checks,
        ]  # fmt: skip
        print("\n".join(report(driver, figures, delivered)))
        print(
            f"wall time:    {time.monotonic() - started:.0f} s (chaos {chaos_seconds:.0f} s, "
            f"settling {settle_seconds:.0f} s)"
        )
        print("checks:")
        for c in checks:
            print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + ("" if c.ok else f": {c.detail}"))
        failed = [c for c in checks if not c.ok]
        print(json.dumps({"seed": args.seed, "ok": not failed, "failed": [c.name for c in failed]}))
        return 1 if failed else 0
    finally:
        site.close()
        if server is not None:
            server.stop()
        if failed or args.keep:
            print(f"workspace (config, watcher.db, daemon logs): {site.root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
