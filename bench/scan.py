"""Catch-up speed and RPC cost of `proofwatch scan` on a real Anvil chain, against a raw floor.

Run: ``make bench`` (= ``.venv/bin/python bench/scan.py``). Needs ``make tools`` (Anvil).

1. Builds a chain on a fresh Anvil node (temporary HOME, --no-mining, blocks mined in batches):
   ``--blocks`` blocks (default 5,000) holding 1,000 payments to the wallet (ERC-20 in two
   configured tokens, native top-level, internal through the Forwarder, incl. two-payments-in-
   one-tx ``forwardMany``) and 2,000 noise transactions (payments to other addresses, an
   unconfigured token paid to the wallet, reverted ERC-20 and reverted internal transfers to
   the wallet). 70 empty blocks close the chain so every payment is final at the end.
2. The floor: a minimal batched raw JSON-RPC fetch of the same data (``requests`` + JSON-RPC
   batches: eth_getLogs, trace_filter, eth_getBlockByNumber(full), receipts of candidate
   transactions), no database. Run once before and twice after proofwatch; the median counts.
3. proofwatch: the in-process ``proofwatch scan`` path (``Watcher(ctx).scan(chain)`` with the
   settlement hooks, a config file loaded by ``load_settings``, SQLite in a temp dir, structlog
   JSON lines written to a file), ``internal = "trace_filter"``, balance guard on (the default).
4. Requests per poll: idle (no new block), one new empty block, one new block with a payment,
   with 10 and with 10,000 open invoices.
5. The cost section (issue 11, ``bench/cost_run.py``; ``--cost-only`` runs only this): on a
   fresh standard chain and on a busy chain (``--busy-blocks`` blocks of ``--busy-noise``
   noise transactions), through a counting proxy: the floor without blocks, ``proofwatch
   scan`` as a whole process with ``internal = "trace_filter"`` and ``"off"``, ethereum-etl
   2.4.2; JSON-RPC calls by method, bytes received, compute units; then the steady state.

Exit status 1 when a correctness check fails (payments found != expected, ...); speed targets
are reported, never enforced.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlmodel import col, func, select  # noqa: E402

from bench.chain import (  # noqa: E402
    TRANSFER_TOPIC,
    WALLET,
    ChainBuilder,
    Rpc,
    addr_topic,
)
from bench.cost_run import cost_section  # noqa: E402
from tests.support.anvil import AnvilNode  # noqa: E402
from watcher.chain import scanner, sources  # noqa: E402
from watcher.chain.online import make_pool  # noqa: E402
from watcher.domain import billing  # noqa: E402
from watcher.ledger import invoices as ledger  # noqa: E402
from watcher.ledger import scanning, settle, settlement  # noqa: E402
from watcher.ledger.context import Context  # noqa: E402
from watcher.ledger.scanning import scan_chain  # noqa: E402
from watcher.ledger.settlement import Settlement  # noqa: E402
from watcher.logs import configure  # noqa: E402
from watcher.runtime.service import Watcher  # noqa: E402
from watcher.settings import ChainSettings, load_settings  # noqa: E402
from watcher.store.db import make_engine, migrate, read_session, transaction  # noqa: E402
from watcher.store.tables import Invoice, OutboxEvent, Transfer  # noqa: E402

FLOOR_BATCH = 100  # entries per JSON-RPC batch in the floor (= RpcPool's default max_batch)
TRACE_RANGE = 300  # Anvil refuses trace_filter over more than 300 blocks

# Targets from issue 3.
TARGET_RATIO = 0.7
TARGET_IDLE = 2


# --- the floor: a minimal batched raw JSON-RPC scan -----------------------------------------


@dataclass
class FloorResult:
    blocks: int
    seconds: float
    posts: int
    found: Counter[tuple[str, str, int]]
    http_seconds: float
    receipts: int  # candidate transactions whose receipt was read

    @property
    def speed(self) -> float:
        return self.blocks / self.seconds


def floor_scan(url: str, tokens: Sequence[str], first: int, last: int) -> FloorResult:
    """Everything proofwatch needs to find the payments in ``first..last``, fetched with the
    fewest POSTs: one for logs + traces over the whole range, blocks (full) and the candidate
    transactions' receipts in batches of FLOOR_BATCH."""
    rpc = Rpc(url)
    wallet = WALLET.lower()
    started = time.perf_counter()
    log_filter = {
        "fromBlock": hex(first),
        "toBlock": hex(last),
        "address": list(tokens),
        "topics": [TRANSFER_TOPIC, None, addr_topic(WALLET)],
    }
    trace_calls = [
        ("trace_filter", [{"fromBlock": hex(a), "toBlock": hex(min(last, a + TRACE_RANGE - 1)),
                           "toAddress": [WALLET]}])
        for a in range(first, last + 1, TRACE_RANGE)
    ]  # fmt: skip
    logs, *trace_parts = rpc.batch([("eth_getLogs", [log_filter]), *trace_calls])
    traces = [t for part in trace_parts for t in part]
    native: list[dict[str, Any]] = []
    for start in range(first, last + 1, FLOOR_BATCH):
        numbers = range(start, min(last, start + FLOOR_BATCH - 1) + 1)
        for block in rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in numbers]):
            native += [
                tx for tx in block["transactions"]
                if (tx.get("to") or "").lower() == wallet and int(tx["value"], 16) > 0
            ]  # fmt: skip
    frames = [
        t for t in traces
        if t["type"] == "call" and t["traceAddress"] and not t.get("error")
        and t["action"].get("callType") == "call" and t["action"]["to"].lower() == wallet
        and int(t["action"]["value"], 16) > 0
    ]  # fmt: skip
    candidates = sorted({tx["hash"] for tx in native} | {f["transactionHash"] for f in frames})
    status: dict[str, int] = {}
    for start in range(0, len(candidates), FLOOR_BATCH):
        part = candidates[start : start + FLOOR_BATCH]
        receipts = rpc.batch([("eth_getTransactionReceipt", [h]) for h in part])
        status.update({h: int(r["status"], 16) for h, r in zip(part, receipts, strict=True)})
    seconds = time.perf_counter() - started
    found: Counter[tuple[str, str, int]] = Counter()
    for lg in logs:
        found[("erc20", lg["transactionHash"].lower(), int(lg["data"], 16))] += 1
    for tx in native:
        if status[tx["hash"]] == 1:
            found[("native", tx["hash"].lower(), int(tx["value"], 16))] += 1
    for f in frames:
        if status[f["transactionHash"]] == 1:
            found[("internal", f["transactionHash"].lower(), int(f["action"]["value"], 16))] += 1
    rpc.close()
    return FloorResult(
        last - first + 1, seconds, rpc.posts, found, rpc.http_seconds, len(candidates)
    )


# --- proofwatch -----------------------------------------------------------------------------

CONFIG = """\
[database]
url = "sqlite:///{db}"

[[chains]]
name = "anvil"
chain_id = 31337
rpc_urls = ["{url}"]
receiving_address = "{wallet}"
finality = "finalized"
poll_seconds = 2
start_block = 0
native_symbol = "ETH"
internal = "trace_filter"
balance_guard = true

[[chains.tokens]]
symbol = "USDC"
address = "{usdc}"
decimals = 6

[[chains.tokens]]
symbol = "DAI"
address = "{dai}"
decimals = 18
"""


class CountingSession(requests.Session):
    """Counts HTTP POSTs independently of RpcPool.request_count."""

    posts: int = 0
    seconds: float = 0.0

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        CountingSession.posts += 1
        started = time.perf_counter()
        try:
            return super().post(*args, **kwargs)
        finally:
            CountingSession.seconds += time.perf_counter() - started


class Phases:
    """Wall time spent inside a few functions of the scan path (cheap wrappers, no profiler).

    Nested: fetch_chunk and the receipt re-read include their HTTP time; commit includes
    settlement.found, which includes outbox.emit.
    """

    TARGETS: tuple[tuple[Any, str, str], ...] = (
        (sources, "fetch_chunk", "fetch_chunk (RPC + decoding)"),
        (scanning.StoreLedger, "commit_chunk", "commit (DB transaction per chunk)"),
        (scanning, "store_inflows", "  store_inflows (transfer rows)"),
        (Settlement, "found", "  settlement.found hook"),
        (settlement, "emit", "    outbox.emit (x1 per unassigned transfer)"),
        (settle, "emit", "    outbox.emit (x1 per unassigned transfer)"),  # the same label
        (scanner._ChainScan, "_finalize", "finality (receipt re-read + DB)"),
        (sources, "read_receipts", "receipts (RPC; in fetch_chunk and in finality)"),
        (Settlement, "finalized", "  settlement.finalized hook"),
    )

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        for owner, name, label in self.TARGETS:
            if hasattr(owner, name):  # a reader rewrite may have renamed one: time the rest
                setattr(owner, name, self._wrap(getattr(owner, name), label))

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        return timed

    def snapshot(self) -> tuple[dict[str, float], Counter[str]]:
        return dict(self.seconds), Counter(self.calls)


@dataclass
class Poll:
    label: str
    requests: int
    posts: int
    seconds: float
    found: int
    methods: Counter[str]
    http_seconds: float = 0.0
    phases: dict[str, tuple[float, int]] = field(default_factory=dict)


class Proofwatch:
    def __init__(self, tmp: Path, url: str, tokens: dict[str, tuple[str, int]]) -> None:
        self.config = tmp / "proofwatch.toml"
        self.config.write_text(
            CONFIG.format(
                db=tmp / "bench.db",
                url=url,
                wallet=WALLET,
                usdc=tokens["USDC"][0],
                dai=tokens["DAI"][0],
            )
        )
        settings = load_settings(self.config)
        engine = make_engine(settings.database_url)
        migrate(engine)
        self.ctx = Context(settings=settings, engine=engine, now=lambda: datetime.now(UTC))
        self.chain: ChainSettings = settings.chain("anvil")
        self.log_path = tmp / "proofwatch.log"
        self.log_file = self.log_path.open("a")  # structlog keeps the file it was configured with
        saved, sys.stderr = sys.stderr, self.log_file
        try:
            configure(settings.secrets, tty=False)
        finally:
            sys.stderr = saved
        self.phases = Phases()
        self.watcher = Watcher(self.ctx)
        pool = self.watcher.pool(self.chain)
        pool._http.session.close()
        pool._http.session = CountingSession()
        pool._http.session.headers.update({"Content-Type": "application/json", "User-Agent": "pw"})
        self.pool = pool

    def poll(self, label: str, profile: Path | None = None) -> tuple[Poll, Any]:
        before_posts, before_methods = CountingSession.posts, Counter(self.pool.counts_by_method)
        before_http, (before_s, before_n) = CountingSession.seconds, self.phases.snapshot()
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        report = self.watcher.scan(self.chain)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
        if profiler and profile:
            profiler.dump_stats(profile)
        methods = Counter(self.pool.counts_by_method)
        methods.subtract(before_methods)
        after_s, after_n = self.phases.snapshot()
        poll = Poll(
            label, report.requests, CountingSession.posts - before_posts, seconds, report.found,
            +methods, CountingSession.seconds - before_http,
            {k: (after_s[k] - before_s.get(k, 0.0), after_n[k] - before_n[k]) for k in after_n},
        )  # fmt: skip
        return poll, report

    def add_invoices(self, count: int) -> None:
        """``count`` open USDC invoices: the first 10 through the ledger functions, the rest
        bulk-inserted as copies of the first with distinct amounts."""
        with read_session(self.ctx.engine) as session:
            have = session.exec(select(func.count()).select_from(Invoice)).one()
        if have == 0:
            retainer = ledger.add_retainer(
                self.ctx, client="Bench Co", chain="anvil", asset="USDC", monthly="1000"
            )
            ref = f"RET-{retainer.id}"
            ledger.approve_retainer(self.ctx, ref, by="bench")
            for _ in range(min(count, 10)):
                ledger.issue_invoice(self.ctx, ref, kind="sprint", amount="1000")
            have = min(count, 10)
        if count <= have:
            return
        with transaction(self.ctx.engine) as session:
            template = session.exec(select(Invoice).order_by(col(Invoice.id))).first()
            assert template is not None
            asset = ledger.asset_for(self.chain, "USDC")
            now, cooling = self.ctx.now(), self.ctx.settings.billing.tag_cooling_days
            since = now - timedelta(days=cooling)
            issued = ledger.issued_amounts(session, 31337, "USDC", WALLET, since=since)
            taken = billing.held_amounts(issued, now, cooling)
            base = template.model_dump(exclude={"id"})
            rows: list[dict[str, Any]] = []
            tag = 1
            while len(rows) < count - have:
                amount = template.price + tag
                tag += 1
                if amount in taken:
                    continue
                uri = billing.payment_uri(asset, WALLET, amount)
                rows.append({**base, "amount": amount, "payment_uri": uri})
            session.execute(insert(Invoice), rows)

    def scanner_alone(self, db: Path) -> tuple[Poll, Any]:
        """The same catch-up by ``scan_chain`` with no hooks, on a fresh database and pool."""
        engine = make_engine(f"sqlite:///{db}")
        migrate(engine)
        pool = make_pool(self.chain)
        before_s, before_n = self.phases.snapshot()
        started = time.perf_counter()
        report = scan_chain(self.chain, pool, engine, lambda: datetime.now(UTC))
        seconds = time.perf_counter() - started
        after_s, after_n = self.phases.snapshot()
        phases = {k: (after_s[k] - before_s.get(k, 0.0), after_n[k] - before_n[k]) for k in after_n}
        pool.close()
        engine.dispose()
        poll = Poll("scanner alone", report.requests, 0, seconds, report.found, Counter())
        poll.phases = phases
        return poll, report

    def log_summary(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                counts["(not JSON)"] += 1
                continue
            if entry.get("level") not in ("debug", "info"):
                counts[f"{entry.get('level')}:{entry.get('event')}"] += 1
        return dict(counts)

    def open_invoices(self) -> int:
        with read_session(self.ctx.engine) as session:
            query = select(func.count()).select_from(Invoice).where(Invoice.status == "open")
            return int(session.exec(query).one())

    def stored(self) -> tuple[Counter[tuple[str, str, int]], Counter[str]]:
        with read_session(self.ctx.engine) as session:
            rows = session.exec(select(Transfer)).all()
        found = Counter((t.kind, t.tx_hash.lower(), t.amount) for t in rows)
        return found, Counter(t.status for t in rows)

    def events(self, kind: str) -> int:
        with read_session(self.ctx.engine) as session:
            query = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.type == kind)
            return int(session.exec(query).one())


# --- the run --------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failed.append(what)


def diff(a: Counter[Any], b: Counter[Any]) -> str:
    missing, extra = a - b, b - a
    return f"missing {sorted(missing)[:3]} ({sum(missing.values())}), extra {sorted(extra)[:3]}"


def pay_native(rpc: Rpc, sender: str, wei: int) -> str:
    tx = {"from": sender, "to": WALLET, "value": hex(wei), "gas": hex(21_000)}
    tx_hash = str(rpc.call("eth_sendTransaction", tx))
    rpc.call("anvil_mine", "0x1")
    return tx_hash


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, {cpu}, Python {platform.python_version()}, load {load}"


def profile_path(directory: Path | None, name: str) -> Path | None:
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.prof"


def show_phases(out: Callable[..., None], poll: Poll) -> None:
    for _, _, label in Phases.TARGETS:
        seconds, calls = poll.phases.get(label, (0.0, 0))
        if calls:
            out(f"    {label:52} {seconds:7.2f} s  ({calls} calls)")
    out(f"    {'total':52} {poll.seconds:7.2f} s")


def show_profile(out: Callable[..., None], path: Path) -> None:
    """The project's own functions with the most cumulative time (cProfile inflates times)."""
    out(f"  cProfile (times inflated by the profiler) {path}, top watcher/ functions:")
    stats = pstats.Stats(str(path))
    rows = []
    for (filename, line, name), (_cc, calls, _tt, cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "/watcher/" in filename:
            short = filename.split("/watcher/", 1)[1]
            rows.append((cum, calls, f"watcher/{short}:{line} {name}"))
    for cum, calls, where in sorted(rows, reverse=True)[:15]:
        out(f"    {cum:7.2f} s {calls:7d}x  {where}")


def quiet_logs(path: Path) -> None:
    """proofwatch's in-process JSON log lines go to ``path``, not to the report."""
    saved, sys.stderr = sys.stderr, path.open("a")  # structlog keeps the file it was given
    try:
        configure((), tty=False)
    finally:
        sys.stderr = saved


def classic(
    args: argparse.Namespace, tmp_root: Path, out: Callable[..., None], check: Checks
) -> None:
    """Sections (a)-(e) of issue 3: in-process catch-up against the full-block floor, requests
    per poll, 10 vs 10,000 open invoices."""
    # Anvil keeps only the last ~3,500 states by default: the balance guard's eth_getBalance
    # at older blocks would fail ("BlockOutOfRangeError"). Persist them all to disk instead
    # (an archive node's behaviour; older states cost a disk read, as on a real archive node).
    anvil = AnvilNode(no_mining=True, extra_args=["--max-persisted-states", "100000"])
    with anvil as node:
        tmp = tmp_root / "classic"
        tmp.mkdir()
        assert node.url is not None
        out(f"\n== building the chain (anvil {node.url}, --no-mining) ==")
        built = ChainBuilder(node, random.Random(args.seed)).build(args.blocks)
        exp = built.expected
        out(
            f"  {built.head + 1} blocks (0..{built.head}), {built.transactions} txs in "
            f"{built.busy_blocks} blocks, {sum(exp.by_kind.values())} payments to the wallet "
            f"({dict(exp.by_kind)}), {len(exp.reverted)} reverted; built in {built.seconds:.1f} s "
            f"({built.mining:.1f} s of it in anvil_mine)"
        )
        tokens = [a for a, _ in built.tokens.values()]
        fifth = (built.head + 1) // 5 + 1
        spread = Counter(b // fifth for b in exp.payment_blocks)
        out(
            f"  paying txs per fifth of the chain: {[spread[i] for i in range(5)]}; "
            f"blocks {min(exp.payment_blocks)}..{max(exp.payment_blocks)}"
        )

        out("\n== (b) floor: minimal batched raw JSON-RPC, no database ==")
        floor1 = floor_scan(node.url, tokens, 0, built.head)
        out(
            f"  run 1: {floor1.blocks} blocks in {floor1.seconds:.2f} s = "
            f"{floor1.speed:,.0f} blocks/s, {floor1.posts} POSTs "
            f"(HTTP round trips {floor1.http_seconds:.2f} s; {floor1.receipts} receipts)"
        )

        pw = Proofwatch(tmp, node.url, built.tokens)
        pw.add_invoices(10)
        # Watcher.scan reads each token's decimals() once (stored) before scanning, through
        # the same pool but outside ScanReport.requests: read them first, so that the POSTs
        # counted below are the scan's own (the cost section counts everything, as a process).
        if hasattr(pw.watcher, "check_decimals"):
            pw.watcher.check_decimals(pw.chain)
        out("\n== (a) proofwatch catch-up: in-process `proofwatch scan` (Watcher.scan) ==")
        catchup, report = pw.poll("catch-up", profile_path(args.profile, "catch-up"))
        blocks = report.cursor_after - report.cursor_before
        speed = blocks / catchup.seconds
        out(
            f"  {blocks} blocks in {catchup.seconds:.2f} s = {speed:,.0f} blocks/s, "
            f"{catchup.requests} requests (HTTP POSTs counted separately: {catchup.posts})"
        )
        out(f"  entries by method: {dict(sorted(catchup.methods.items()))}")
        out(
            f"  report: found={report.found} finalized={report.finalized} "
            f"unexplained={report.unexplained} head={report.head} final={report.final_block}"
        )
        out(
            "  where the time went (wall, nested; HTTP round trips in all: "
            f"{catchup.http_seconds:.2f} s):"
        )
        show_phases(out, catchup)
        if args.profile:
            show_profile(out, args.profile / "catch-up.prof")

        out(
            "\n  diagnostic, not the measured path: the scanner alone (scan_chain without the"
            " settlement hooks, fresh database):"
        )
        alone, alone_report = pw.scanner_alone(tmp / "alone.db")
        alone_blocks = alone_report.cursor_after - alone_report.cursor_before
        alone_speed = alone_blocks / alone.seconds
        out(
            f"  {alone_blocks} blocks in {alone.seconds:.2f} s = "
            f"{alone_speed:,.0f} blocks/s, {alone.requests} requests"
        )
        show_phases(out, alone)

        floors = [floor1]
        for i in (2, 3):
            f = floor_scan(node.url, tokens, 0, built.head)
            floors.append(f)
            out(
                f"\n  floor run {i} (after proofwatch): {f.seconds:.2f} s = "
                f"{f.speed:,.0f} blocks/s, {f.posts} POSTs "
                f"(HTTP round trips {f.http_seconds:.2f} s)"
            )
        # The median of three runs: this machine is shared, single runs vary by +-30 %.
        floor = sorted(floors, key=lambda f: f.speed)[1]
        best = max(f.speed for f in floors)

        out("\n== (c) ratio ==")
        ratio = speed / floor.speed
        verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
        out(
            f"  proofwatch {speed:,.0f} blocks/s / floor {floor.speed:,.0f} blocks/s (median of 3) "
            f"= {ratio:.2f}x   target >= {TARGET_RATIO}x: {verdict}"
        )
        out(f"  (against the fastest floor run, {best:,.0f} blocks/s: {speed / best:.2f}x)")
        out(
            f"  requests: proofwatch {catchup.requests} / floor {floor.posts} = "
            f"{catchup.requests / floor.posts:.2f}x"
        )

        out("\n== correctness ==")
        stored, statuses = pw.stored()
        total = sum(exp.payments.values())
        check(
            report.found == total, f"payments found by the scan: {report.found} / expected {total}"
        )
        check(
            stored == exp.payments,
            f"stored transfers = expected (kind, tx, amount): {diff(exp.payments, stored)}",
        )
        by_kind = Counter(k for (k, _, _), n in stored.items() for _ in range(n))
        check(
            by_kind == exp.by_kind, f"by kind: found {dict(by_kind)} / expected {dict(exp.by_kind)}"
        )
        check(
            statuses.get("final", 0) == total,
            f"final after catch-up (all payments below the final block): {dict(statuses)}",
        )
        check(report.unexplained == 0, f"no unexplained balance events ({report.unexplained})")
        for i, f in enumerate(floors, 1):
            check(f.found == exp.payments, f"floor run {i} found {sum(f.found.values())} / {total}")
        check(report.cursor_after == built.head, f"cursor at head ({report.cursor_after})")
        check(
            catchup.posts == catchup.requests,
            f"HTTP POSTs counted on the session ({catchup.posts}) = ScanReport.requests",
        )
        check(alone_report.found == total, f"scanner alone found {alone_report.found} / {total}")

        out("\n== (d) requests per poll ==")
        rpc = Rpc(node.url)
        idle = [pw.poll(f"idle {i}")[0] for i in range(1, 4)]
        for p in idle:
            ms = p.seconds * 1000
            out(f"  {p.label}: {p.requests} request(s) {dict(p.methods)}  {ms:.0f} ms")
        worst_idle = max(p.requests for p in idle)
        out(f"  idle poll: {worst_idle} request(s)   target <= {TARGET_IDLE}: "
            f"{'MET' if worst_idle <= TARGET_IDLE else 'MISSED'}")  # fmt: skip
        rpc.call("anvil_mine", "0x1")
        empty, _ = pw.poll("one new empty block")
        out(f"  one new empty block: {empty.requests} requests {dict(empty.methods)}  "
            f"{empty.seconds * 1000:.0f} ms")  # fmt: skip
        payer = node.accounts()[1]
        pay_native(rpc, payer, 123_456_789)
        paid10, r10 = pw.poll("one new block with a payment, 10 open invoices")
        out(f"  one new block with a native payment: {paid10.requests} requests "
            f"{dict(paid10.methods)}  {paid10.seconds * 1000:.0f} ms")  # fmt: skip
        check(r10.found == 1, f"the new payment was found ({r10.found})")

        out("\n== (e) open invoices: 10 vs 10,000 ==")
        open10 = pw.open_invoices()
        started = time.perf_counter()
        pw.add_invoices(10_000)
        open10k = pw.open_invoices()
        out(f"  inserted {open10k - open10} invoices in {time.perf_counter() - started:.1f} s")
        check(open10 == 10 and open10k == 10_000, f"open invoices: {open10} then {open10k}")
        idle10k, _ = pw.poll("idle, 10,000 open invoices")
        pay_native(rpc, payer, 123_456_790)
        paid10k, r10k = pw.poll(
            "one new block with a payment, 10,000 open invoices",
            profile_path(args.profile, "poll-10000-invoices"),
        )
        check(r10k.found == 1, f"the new payment was found ({r10k.found})")
        rows = [
            ("idle poll", idle[-1], idle10k),
            ("poll, one new block with a payment", paid10, paid10k),
        ]
        out(f"  {'':38} {'10 open':>18} {'10,000 open':>18}")
        for label, a, b in rows:
            out(f"  {label:38} {a.requests:>5} req {a.seconds * 1000:>6.0f} ms "
                f"{b.requests:>5} req {b.seconds * 1000:>6.0f} ms")  # fmt: skip
        same = all(a.requests == b.requests for _, a, b in rows)
        out(f"  requests independent of open invoices: {'MET' if same else 'MISSED'}")
        out("  where the time of the 10,000-invoice poll with a payment went:")
        show_phases(out, paid10k)
        if args.profile:
            show_profile(out, args.profile / "poll-10000-invoices.prof")
        unassigned = pw.events("transfer.unassigned")
        check(unassigned == total + 2, f"transfer.unassigned events: {unassigned} / {total + 2}")
        rpc.close()

        out("\n== summary ==")
        out(f"  (a) proofwatch catch-up: {speed:,.0f} blocks/s, {catchup.requests} requests")
        out(
            f"  (b) floor:               {floor.speed:,.0f} blocks/s (median of 3 runs: "
            f"{', '.join(f'{f.speed:,.0f}' for f in floors)}), {floor.posts} requests"
        )
        out(f"  (c) ratio:               {ratio:.2f}x (target >= {TARGET_RATIO}x); the scanner "
            f"without settlement hooks: {alone_speed / floor.speed:.2f}x")  # fmt: skip
        out(f"  (d) idle poll:           {worst_idle} request(s) (target <= {TARGET_IDLE}); "
            f"one new empty block: {empty.requests}; one new block with a payment: "
            f"{paid10.requests}")  # fmt: skip
        out(f"  (e) poll with a payment: {paid10.requests} requests with 10 open invoices, "
            f"{paid10k.requests} with 10,000 ({paid10.seconds * 1000:.0f} ms vs "
            f"{paid10k.seconds * 1000:.0f} ms)")  # fmt: skip
        pw.pool.close()
        pw.ctx.engine.dispose()
        pw.log_file.close()
        out(f"  proofwatch log lines by level/event (warnings and errors): {pw.log_summary()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5000, help="blocks holding the txs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run the catch-up and the 10,000-invoice poll under cProfile (slower), stats in DIR",
    )
    parser.add_argument(
        "--cost-only", action="store_true", help="only the cost section (issue 11), not (a)-(e)"
    )
    parser.add_argument(
        "--busy-blocks", type=int, default=500, help="blocks of the busy chain (0: no busy chain)"
    )
    parser.add_argument("--busy-noise", type=int, default=120, help="noise txs per busy block")
    parser.add_argument(
        "--keep-chain", type=Path, metavar="DIR",
        help="cost section: keep the standard chain's node alive in DIR and reuse it next time "
        "(bench/kept_chain.py; stop it with `bench/kept_chain.py stop DIR`)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out: Callable[..., None] = print
    check = Checks()
    out(f"proofwatch scan benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ({machine()})")

    with tempfile.TemporaryDirectory(prefix="pw-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.cost_only:
            classic(args, tmp, out, check)
        quiet_logs(tmp / "cost.log")  # (classic closed its log file)
        cost_section(args, tmp, out, check)
    if check.failed:
        out(f"\nCORRECTNESS FAILED: {len(check.failed)} check(s): {check.failed}")
        return 1
    out("\nall correctness checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
