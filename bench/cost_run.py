"""The cost section of ``bench/scan.py`` (issue 11, "Benchmark"): every contender on one chain
through one counting proxy, side by side, then the steady state.

Per chain (the standard chain of ``--blocks`` blocks, and the busy chain):

1. the floor (``bench.cost.floor_scan``), three runs, the median by time;
2. ``proofwatch scan`` as a whole process with ``internal = "trace_filter"`` and with
   ``"off"`` (each on its own database);
3. ethereum-etl 2.4.2 (its own virtualenv), blocks + transactions + token transfers;
4. the steady state, in process (``Watcher.scan`` on the databases of step 2, through the
   same proxy): one poll per new block for ``STEADY_BLOCKS`` blocks (the pace of a chain with
   an open invoice and 2-second blocks: scaled by 1,800 blocks an hour), one poll per 30 new
   blocks (the idle pace, ``idle_poll_seconds = 60``: scaled by 60 polls an hour), one poll
   over 1,000 new quiet blocks (standard chain only), and one new block holding a native
   payment ("one payment per hour" = 1,799 quiet blocks + that poll).

Correctness (exit 1 through ``check``): each contender's payments against what was sent;
``internal = "off"`` and ethereum-etl cannot see internal transfers, so their expected set is
the sent payments without the internal ones, and what they missed is printed.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chain import WALLET, BuiltChain, ChainBuilder
from bench.contenders import Proofwatch, ethereum_etl, floor_process
from bench.cost import CU_SOURCE, Meter, Tally, megabytes, table
from bench.floor import Batcher, floor_scan
from bench.kept_chain import standard_chain
from bench.speed import speed_summary
from tests.support.anvil import AnvilNode
from tests.support.rpcproxy import RpcProxy

STEADY_BLOCKS = 20  # polls of one new block each
IDLE_BLOCKS = 30  # blocks per idle poll: 60 s of 2-second blocks
IDLE_POLLS = 2
BLOCKS_PER_HOUR = 1800  # 2-second blocks
MODES = ("trace_filter", "off")

Out = Callable[..., None]
Check = Callable[[bool, str], None]


@dataclass
class ChainResult:
    """What the section measured on one chain, for the summary."""

    name: str
    blocks: int
    floor: Tally
    scans: dict[str, Tally]
    etl: Tally | None
    steady: dict[str, dict[str, Tally]]
    startup: dict[str, float] = field(default_factory=dict)  # mode -> an idle scan's seconds
    floor_inside: float = 0.0  # the floor in process (no interpreter start-up), seconds


def without_internal(payments: Counter[tuple[str, str, int]]) -> Counter[tuple[str, str, int]]:
    return Counter({k: n for k, n in payments.items() if k[0] != "internal"})


def compare(
    check: Check, label: str, found: Counter[tuple[str, str, int]], want: Counter[Any]
) -> None:
    missing, extra = want - found, found - want
    check(
        not missing and not extra,
        f"{label}: {sum(found.values())} payments found / {sum(want.values())} expected"
        + (f" (missing {sum(missing.values())}, extra {sum(extra.values())})" if missing or extra
           else ""),
    )  # fmt: skip


def run_chain(
    name: str, node: AnvilNode, built: BuiltChain, builder: ChainBuilder, tmp: Path,
    out: Out, check: Check, *, noise: int, quiet_thousand: bool,
) -> ChainResult:  # fmt: skip
    assert node.url is not None
    exp = built.expected.payments
    tokens = [a for a, _ in built.tokens.values()]
    last = built.head
    with RpcProxy(node.url, raw=True) as proxy:
        meter = Meter(proxy)
        out(f"\n== cost on the {name} ({last + 1:,} blocks, through a counting proxy) ==")
        floors = []
        for i in range(3):
            tally = floor_process(meter, proxy.url, WALLET, tokens, 0, last)
            floors.append(tally)
            compare(check, f"{name}: floor run {i + 1}", tally.found, exp)
        floor = sorted(floors, key=lambda t: t.seconds)[1]
        rpc = Batcher(proxy.url)
        meter.start()
        found = floor_scan(rpc, WALLET, tokens, 0, last)
        inside = meter.stop("floor in process")
        rpc.close()
        compare(check, f"{name}: floor in process", found, exp)
        floor.notes.append(
            "whole process (bench/floor.py), median of 3 runs by time: "
            + ", ".join(f"{t.seconds:.2f} s" for t in floors)
            + f"; in process (no start-up): {inside.seconds:.2f} s"
        )
        scans: dict[str, Tally] = {}
        startup: dict[str, float] = {}
        installs: dict[str, Proofwatch] = {}
        for mode in MODES:
            pw = Proofwatch(tmp / f"{name}-{mode}", proxy.url, WALLET, built.tokens, mode)
            installs[mode] = pw
            tally = pw.scan(meter, f'proofwatch scan, internal = "{mode}"')
            unexplained = pw.events("watcher.unexplained_balance")
            tally.notes.append(f"watcher.unexplained_balance events: {unexplained}")
            want = exp if mode == "trace_filter" else without_internal(exp)
            missed = sum((exp - tally.found).values())
            if mode == "off":
                tally.notes.append(f"internal payments it cannot see (missed): {missed}")
            compare(check, f"{name}: proofwatch {mode}", tally.found, want)
            idle = pw.scan(meter, "idle")  # nothing new: start-up + one idle poll
            startup[mode] = idle.seconds
            tally.notes.append(
                f"a second `proofwatch scan` with nothing to read took {idle.seconds:.2f} s "
                f"({idle.entries} calls): the process start-up; catch-up work without it "
                f"about {tally.seconds - idle.seconds:.2f} s"
            )
            scans[mode] = tally
        etl = ethereum_etl(meter, proxy.url, 0, last, tmp / f"{name}-etl", WALLET, tokens)
        if etl is None:
            out("  ethereum-etl: skipped, no .venv-etl (make .venv-etl)")
        else:
            missed = sum((exp - etl.found).values())
            etl.notes.append(f"internal payments it cannot see (missed): {missed}")
            compare(check, f"{name}: ethereum-etl", etl.found, without_internal(exp))
        rows = [floor, *scans.values(), *([etl] if etl else [])]
        out(f"  CU = Alchemy compute units ({CU_SOURCE})")
        table(rows, floor, out)
        if etl is not None:
            for mode, t in scans.items():
                out(f"  ethereum-etl's time / proofwatch {mode}'s = {etl.seconds / t.seconds:.1f}")
        steady = steady_state(
            name, builder, installs, meter, out, check, noise=noise, quiet_thousand=quiet_thousand
        )
        for pw in installs.values():
            pw.close()
    return ChainResult(name, last + 1, floor, scans, etl, steady, startup, inside.seconds)


def steady_state(
    name: str, builder: ChainBuilder, installs: dict[str, Proofwatch], meter: Meter, out: Out,
    check: Check, *, noise: int, quiet_thousand: bool,
) -> dict[str, dict[str, Tally]]:  # fmt: skip
    """Poll costs after the catch-up, per mode: per new block, per idle poll, per 1,000 quiet
    blocks, and a block with a payment."""
    pollers = {mode: pw.poller() for mode, pw in installs.items()}
    meter.proxy.count_method_bytes = True  # bytes by method: the steady state is not timed
    for poll in pollers.values():  # the blocks the previous contenders did not see: none
        poll()
    got: dict[str, dict[str, Tally]] = {m: {} for m in pollers}

    def blocks(n: int) -> None:
        for _ in range(n):
            if noise:
                builder.send(builder.noise(noise))
            builder.mine(1)

    def poll_all(key: str) -> dict[str, Any]:
        reports = {}
        for mode, poll in pollers.items():
            meter.start()
            reports[mode] = poll()
            tally = meter.stop(key)
            got[mode].setdefault(key, Tally(key)).add(tally)
        return reports

    for _ in range(STEADY_BLOCKS):
        blocks(1)
        poll_all("block")
    for _ in range(IDLE_POLLS):
        blocks(IDLE_BLOCKS)
        poll_all("idle")
    if quiet_thousand:  # twice: the first in a process may teach the sizer the node's limit
        builder.mine(1000)
        poll_all("thousand")
        builder.mine(1000)
        poll_all("thousand again")
    spec = builder.payment("native", builder.usdc, builder.dai, builder.payers)
    txs = [spec.tx]
    if noise:
        txs += builder.noise(noise)
    builder.send(txs)
    builder.mine(1)
    reports = poll_all("payment")
    for mode, report in reports.items():
        check(report.found == 1, f"{name}: steady state, {mode} found the new payment")

    out(f"\n  steady state on the {name} (in process, through the same proxy):")
    out(
        f"    {'':16} {'per new block':>24} {'idle poll (30 blocks)':>26} "
        f"{'1,000 quiet blocks':>22} {'block with a payment':>24}"
    )
    for mode, parts in got.items():
        cells = []
        for key, n in (("block", STEADY_BLOCKS), ("idle", IDLE_POLLS), ("thousand again", 1),
                       ("payment", 1)):  # fmt: skip
            t = parts.get(key)
            cells.append(
                "-" if t is None else f"{t.entries / n:.1f} calls {t.bytes / n / 1e3:,.1f} kB"
            )
        out(f"    {mode:16} {cells[0]:>24} {cells[1]:>26} {cells[2]:>22} {cells[3]:>24}")
    meter.proxy.count_method_bytes = False
    out("    calls by method (kB of their answers), summed over the polls of each kind:")
    for mode, parts in got.items():
        for key, t in parts.items():
            methods = ", ".join(
                f"{m} {n} ({t.method_bytes[m] / 1e3:,.1f} kB)"
                for m, n in sorted(t.calls.items(), key=lambda x: -x[1])
            )
            out(f"      {mode} {key}: {methods}")
    for mode, parts in got.items():
        block, idle, pay = parts["block"], parts["idle"], parts["payment"]
        per_block_calls, per_block_bytes = (
            block.entries / STEADY_BLOCKS,
            block.bytes / STEADY_BLOCKS,
        )
        hour_calls = per_block_calls * BLOCKS_PER_HOUR
        hour_bytes = per_block_bytes * BLOCKS_PER_HOUR
        pay_calls = per_block_calls * (BLOCKS_PER_HOUR - 1) + pay.entries
        pay_bytes = per_block_bytes * (BLOCKS_PER_HOUR - 1) + pay.bytes
        idle_calls, idle_bytes = idle.entries / IDLE_POLLS * 60, idle.bytes / IDLE_POLLS * 60
        out(
            f"    {mode}: per hour of 2-second blocks, polled every block (an open invoice): "
            f"{hour_calls:,.0f} calls, {megabytes(int(hour_bytes))}, "
            f"{block.cu / STEADY_BLOCKS * BLOCKS_PER_HOUR:,.0f} CU; with one payment an hour: "
            f"{pay_calls:,.0f} calls, {megabytes(int(pay_bytes))}; "
            f"idle pace (a poll a minute): {idle_calls:,.0f} calls, {megabytes(int(idle_bytes))}"
        )
    return got


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def cost_section(args: Any, tmp: Path, out: Out, check: Check) -> list[ChainResult]:
    """The standard chain of ``args.blocks`` blocks, then (``args.busy_blocks`` > 0) the busy
    chain; prints each and a summary against the issue's targets."""
    results = []
    node_args = ["--max-persisted-states", "100000"]
    with standard_chain(args, node_args) as (node, builder, built):  # --keep-chain: kept
        out(
            f"\n== cost: standard chain, {built.head + 1:,} blocks, "
            f"{sum(built.expected.by_kind.values())} payments {dict(built.expected.by_kind)}, "
            f"built in {built.seconds:.0f} s =="
        )
        results.append(
            run_chain("standard chain", node, built, builder, tmp, out, check,
                      noise=0, quiet_thousand=True)
        )  # fmt: skip
    if args.busy_blocks > 0:
        with AnvilNode(no_mining=True, extra_args=node_args) as node:
            builder = ChainBuilder(node, random.Random(args.seed + 1))
            built = builder.build_busy(args.busy_blocks, args.busy_noise)
            out(
                f"\n== cost: busy chain, {args.busy_blocks} blocks of {args.busy_noise} noise "
                f"txs + a payment every 5 blocks ({dict(built.expected.by_kind)}), then "
                f"{built.head + 1 - args.busy_blocks} more; built in {built.seconds:.0f} s =="
            )
            results.append(
                run_chain("busy chain", node, built, builder, tmp, out, check,
                          noise=args.busy_noise, quiet_thousand=False)
            )  # fmt: skip
    summary(results, out)
    return results


def summary(results: list[ChainResult], out: Out) -> None:
    speed_summary(results, out)  # bench/speed.py: whole-process times side by side
    out("\n== cost summary (targets of issue 11; reported, not enforced) ==")
    for r in results:
        for mode, t in r.scans.items():
            f = r.floor
            ratios = (t.seconds / f.seconds, t.entries / f.entries, t.bytes / f.bytes)
            met = ratios[0] <= 2 and ratios[1] <= 1.5 and ratios[2] <= 2
            out(
                f"  {r.name} ({r.blocks:,} blocks), {mode}: {ratios[0]:.1f}x the floor's time, "
                f"{ratios[1]:.1f}x its calls, {ratios[2]:.1f}x its bytes "
                f"(target <= 2 / 1.5 / 2: {'MET' if met else 'MISSED'})"
            )
            if r.etl is not None:
                speed = r.etl.seconds / t.seconds
                out(f"    ethereum-etl's time / proofwatch's: {speed:.1f} (target >= 10 on 20,000 "
                    "blocks)")  # fmt: skip
            thousand = r.steady.get(mode, {}).get("thousand")
            again = r.steady.get(mode, {}).get("thousand again")
            if thousand is not None and again is not None:
                limit = 10 if mode == "trace_filter" else 20
                verdict = "MET" if again.entries <= limit else "MISSED"
                extra = thousand.calls["trace_filter"] - again.calls["trace_filter"]
                out(f"    calls per 1,000 quiet blocks: {again.entries} (target <= {limit}: "
                    f"{verdict}); the first such poll in the process: {thousand.entries} "
                    f"({extra} more trace_filter: the refusal that taught the sizer)")  # fmt: skip
            block = r.steady.get(mode, {}).get("block")
            if block is not None:
                per_hour = block.bytes / STEADY_BLOCKS * BLOCKS_PER_HOUR
                out(f"    bytes per quiet hour, polled every block: {megabytes(int(per_hour))}")
