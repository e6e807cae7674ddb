"""Benchmark: settlement of 1,000 payments against 10,000 open invoices, SQLite vs PostgreSQL.

Issue 12, "Benchmark". It measures; it exits 1 only when a correctness check fails (an invoice
paid by the wrong transfer, a cycle or an event missing or doubled), never for a speed.

The same work on each store, in process, through the code the scanner runs:

- set-up (not timed): ``migrate``; one approved retainer and its first-month invoice through
  ``watcher.ledger.invoices``; 9,999 more retainers, approvals and first-month invoices
  bulk-inserted as copies of those, each invoice with its own unique amount (1000 USDC plus
  a tag of 1..10,000 base units); 1,000 USDC transfers to the wallet, each paying every 10th
  invoice by its exact amount, stored ``seen`` as the scanner stores them.
- timed: the catch-up path of ``Scanner._commit``: in chunks of ``--chunk`` payments (40, the
  share of one 196-block chunk in ``bench/scan.py``'s chain), one transaction each, in which
  ``Settlement.found`` matches the chunk's transfers, they turn ``final``, and
  ``Settlement.finalized`` settles their invoices (invoice paid, proof, cycle opened, events
  to the outbox).

proofwatch's log lines go to a file in the temporary directory. SQLite is a file there (WAL,
as ``make_engine`` sets it up); PostgreSQL is
the test suite's real server (tests/support/postgres.py: Debian's PostgreSQL 15 on a free
port, a temporary data directory, ``fsync=off``) with a new database per run. Each store runs
``--repeat`` times (default 3) on a fresh database, the stores taking turns; the median is
printed, with the CPU time of proofwatch's process and of the PostgreSQL server's processes
(from /proc) beside the wall clock: on a shared machine the wall clock follows the load.

    .venv/bin/python bench/settle.py [--payments 1000] [--invoices 10000] [--chunk 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlmodel import col, select  # noqa: E402

from tests.support.base_ledger import PAYER, USDC, WALLET, base_settings  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from watcher.domain import billing  # noqa: E402
from watcher.ledger import invoices as ledger  # noqa: E402
from watcher.ledger import token_decimals  # noqa: E402
from watcher.ledger.context import Context  # noqa: E402
from watcher.ledger.settlement import Settlement  # noqa: E402
from watcher.logs import configure  # noqa: E402
from watcher.store.db import make_engine, migrate, transaction  # noqa: E402
from watcher.store.tables import (  # noqa: E402
    Allocation,
    Approval,
    Cycle,
    Invoice,
    OutboxEvent,
    Retainer,
    Transfer,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PAID_AT = NOW + timedelta(hours=1)
PRICE = 1000 * 10**6


@dataclass
class Run:
    store: str
    seconds: float  # the timed settlement, all chunks (wall clock)
    found_seconds: float
    finalized_seconds: float
    setup_seconds: float
    cpu_seconds: float  # this process's CPU time during the timed part
    server_cpu_seconds: float  # PostgreSQL's server processes' CPU time then (0 for SQLite)
    counts: dict[str, int]
    problems: list[str]


_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu(pg: PostgresServer | None) -> float:
    """CPU seconds (user + system) used so far by the server's processes: the postmaster and
    its children (the backends serving this bench's connections among them)."""
    if pg is None or not pg.running:
        return 0.0
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if postmaster in (pid, ppid):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _copies(template: dict[str, Any], count: int, make: Any) -> list[dict[str, Any]]:
    return [{**template, **make(n)} for n in range(count)]


def build(ctx: Context, invoices: int, payments: int) -> list[int]:
    """The ledger and the seen transfers; returns the transfer ids in block order."""
    with transaction(ctx.engine) as session:
        token_decimals.record(session, ctx.settings.chain("base"), USDC, 6, NOW)
    first = ledger.add_retainer(ctx, client="Client 1", chain="base", asset="USDC", monthly="1000")
    ledger.approve_retainer(ctx, f"RET-{first.id}", by="bench")
    ledger.issue_invoice(ctx, f"RET-{first.id}")
    asset = ledger.asset_for(ctx.settings.chain("base"), "USDC")
    with transaction(ctx.engine) as session:
        retainer = session.exec(select(Retainer)).one()
        approval = session.exec(select(Approval)).one()
        invoice = session.exec(select(Invoice)).one()
        first_tag = invoice.amount - PRICE
        r_base = retainer.model_dump(exclude={"id", "approval_id"})
        a_base = approval.model_dump(exclude={"id", "retainer_id"})
        i_base = invoice.model_dump(exclude={"id", "retainer_id", "approval_id", "amount"})
        more = invoices - 1
        session.execute(
            insert(Retainer),
            _copies(r_base, more, lambda n: {"id": n + 2, "client": f"Client {n + 2}"}),
        )
        session.execute(
            insert(Approval), _copies(a_base, more, lambda n: {"id": n + 2, "retainer_id": n + 2})
        )
        session.execute(
            sa.update(Retainer).where(col(Retainer.id) > 1).values(approval_id=Retainer.id)
        )
        tags = [t for t in range(1, invoices + 1) if t != first_tag][:more]
        session.execute(
            insert(Invoice),
            [
                {
                    **i_base,
                    "id": n + 2,
                    "retainer_id": n + 2,
                    "approval_id": n + 2,
                    "amount": PRICE + tag,
                    "payment_uri": billing.payment_uri(asset, WALLET, PRICE + tag),
                }
                for n, tag in enumerate(tags)
            ],
        )
        if session.get_bind().dialect.name == "postgresql":  # explicit ids: move the sequences
            for table in ("retainers", "approvals", "invoices"):
                session.execute(
                    sa.text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
        amounts = session.exec(select(Invoice.amount).order_by(col(Invoice.id))).all()
        paid = amounts[:: max(1, invoices // payments)][:payments]
        rows = [
            {
                "uid": f"8453:0x{n:064x}:erc20:0",
                "chain": "base",
                "chain_id": 8453,
                "kind": "erc20",
                "tx_hash": f"0x{n:064x}",
                "log_index": 0,
                "block_number": 1000 + n,
                "block_hash": f"0x{n + 1:064x}",
                "block_time": PAID_AT,
                "from_address": PAYER,
                "to_address": WALLET,
                "asset": "USDC",
                "token_address": USDC,
                "decimals": 6,
                "amount": amount,
                "status": "seen",
                "detected_at": PAID_AT,
            }
            for n, amount in enumerate(paid)
        ]
        session.execute(insert(Transfer), rows)
        ids = session.exec(select(Transfer.id).order_by(col(Transfer.block_number))).all()
    return [i for i in ids if i is not None]


def settle(ctx: Context, ids: list[int], chunk: int) -> tuple[float, float, float]:
    """The timed part; returns (total, in found, in finalized) seconds."""
    settlement = Settlement(ctx.settings, ctx.now)
    in_found = in_final = 0.0
    start = time.perf_counter()
    for k in range(0, len(ids), chunk):
        with transaction(ctx.engine) as session:
            batch = list(
                session.exec(select(Transfer).where(col(Transfer.id).in_(ids[k : k + chunk])))
            )
            t0 = time.perf_counter()
            settlement.found(session, batch)
            t1 = time.perf_counter()
            for t in batch:
                t.status, t.finalized_at, t.final_block = "final", ctx.now(), 10**6
                session.add(t)
            session.flush()
            settlement.finalized(session, batch)
            t2 = time.perf_counter()
            in_found += t1 - t0
            in_final += t2 - t1
    return time.perf_counter() - start, in_found, in_final


def check(ctx: Context, invoices: int, payments: int) -> tuple[dict[str, int], list[str]]:
    """What must hold after the settlement, on either store."""
    problems: list[str] = []
    with transaction(ctx.engine) as session:
        statuses = Counter(session.exec(select(Invoice.status)).all())
        events = Counter(session.exec(select(OutboxEvent.type)).all())
        cycles = len(session.exec(select(Cycle.id)).all())
        pairs = session.exec(
            select(Invoice.amount, Transfer.amount, Invoice.status)
            .join(Allocation, col(Allocation.invoice_id) == Invoice.id)
            .join(Transfer, col(Transfer.id) == Allocation.transfer_id)
            .where(Allocation.active)
        ).all()
    if statuses.get("paid", 0) != payments:
        problems.append(f"{statuses.get('paid', 0)} invoices paid, expected {payments}")
    if statuses.get("open", 0) != invoices - payments:
        problems.append(f"{statuses.get('open', 0)} still open, expected {invoices - payments}")
    if cycles != payments:
        problems.append(f"{cycles} cycles opened, expected {payments}")
    for kind in ("cycle.opened", "payment.finalized", "payment.detected", "invoice.paid"):
        if kind in events and events[kind] != payments:
            problems.append(f"{events[kind]} {kind} events, expected {payments}")
    if events.get("cycle.opened", 0) != payments:
        problems.append(f"{events.get('cycle.opened', 0)} cycle.opened events")
    if len(pairs) != payments or any(a != b or s != "paid" for a, b, s in pairs):
        problems.append("an invoice is allocated a transfer of another amount, or not paid")
    counts = {
        "invoices paid": statuses.get("paid", 0),
        "still open": statuses.get("open", 0),
        "cycles": cycles,
        **{f"events {k}": v for k, v in sorted(events.items())},
    }
    return counts, problems


def run_once(
    store: str, url: str, root: Path, args: argparse.Namespace, pg: PostgresServer | None
) -> Run:
    engine = make_engine(url)
    try:
        migrate(engine)
        ctx = Context(settings=base_settings(url, root), engine=engine, now=lambda: PAID_AT)
        t0 = time.perf_counter()
        ids = build(ctx, args.invoices, args.payments)
        setup = time.perf_counter() - t0
        assert len(ids) == args.payments, len(ids)
        cpu0, server0 = time.process_time(), server_cpu(pg)
        total, found, final = settle(ctx, ids, args.chunk)
        cpu, server = time.process_time() - cpu0, server_cpu(pg) - server0
        counts, problems = check(ctx, args.invoices, args.payments)
        return Run(store, total, found, final, setup, cpu, server, counts, problems)
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=40, help="payments per transaction")
    parser.add_argument("--repeat", type=int, default=3, help="runs per store (median shown)")
    args = parser.parse_args()
    if not 0 < args.payments <= args.invoices:
        parser.error(f"--payments {args.payments} must be between 1 and --invoices")

    print(f"settlement of {args.payments:,} payments against {args.invoices:,} open invoices")
    print(f"chunks of {args.chunk} payments per transaction, {args.repeat} runs per store")
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    runs: dict[str, list[Run]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory(prefix="bench-settle-") as tmp, PostgresServer() as pg:
        # proofwatch's JSON log lines go to a file, as the daemon's go to its log
        log_file = (Path(tmp) / "proofwatch.log").open("a")
        saved, sys.stderr = sys.stderr, log_file
        try:
            configure(tty=False)
        finally:
            sys.stderr = saved
        with pg.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {row[0] if row else '?'} (tests/support/postgres.py, fsync=off)")
        for n in range(args.repeat):
            for store in runs:
                root = Path(tmp) / f"{store}-{n}"
                root.mkdir()
                if store == "sqlite":
                    url = f"sqlite:///{root / 'watcher.db'}"
                else:
                    url = pg.url(pg.create_database())
                run = run_once(store, url, root, args, pg if store == "postgresql" else None)
                runs[store].append(run)
                rate = args.payments / run.seconds
                print(
                    f"  run {n + 1} {store:<10} {run.seconds:7.2f} s  {rate:7.0f} payments/s  "
                    f"(cpu: proofwatch {run.cpu_seconds:.2f} s, server "
                    f"{run.server_cpu_seconds:.2f} s; load {os.getloadavg()[0]:.1f})"
                )

    def median(store: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs[store])

    print()
    print(f"  {'':34} {'SQLite':>12} {'PostgreSQL':>12}")
    rows = [
        ("settlement (median)", "seconds", "s"),
        ("  of which Settlement.found", "found_seconds", "s"),
        ("  of which Settlement.finalized", "finalized_seconds", "s"),
        ("  CPU of proofwatch's process", "cpu_seconds", "s"),
        ("  CPU of the PostgreSQL server", "server_cpu_seconds", "s"),
        ("set-up, not timed (median)", "setup_seconds", "s"),
    ]
    for label, field, unit in rows:
        mine, theirs = median("sqlite", field), median("postgresql", field)
        print(f"  {label:34} {mine:10.2f} {unit} {theirs:10.2f} {unit}")
    rates = [args.payments / median(s, "seconds") for s in runs]
    print(f"  {'payments settled per second':34} {rates[0]:12.0f} {rates[1]:12.0f}")
    print(f"  {'runs (s)':34} " + " ".join(
        f"{'/'.join(f'{r.seconds:.1f}' for r in runs[s]):>12}" for s in runs
    ))  # fmt: skip

    failed = False
    for store, store_runs in runs.items():
        for n, run in enumerate(store_runs):
            for problem in run.problems:
                failed = True
                print(f"CHECK FAILED ({store}, run {n + 1}): {problem}")
    counts = runs["sqlite"][0].counts
    same = all(r.counts == counts for rs in runs.values() for r in rs)
    if not same:
        failed = True
        print("CHECK FAILED: the stores ended with different counts")
    print()
    print("checks: " + ("FAILED" if failed else "all ok") + " (the same on both stores: " + (
        "yes" if same else "no") + ")")  # fmt: skip
    for key, value in counts.items():
        print(f"  {key}: {value:,}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
