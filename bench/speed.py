"""The time half of ``bench/scan.py``'s cost summary (issue 11): per chain, ``proofwatch scan``
as a whole process, split into its start-up and its catch-up work, beside the floor and
ethereum-etl, all timed as whole processes by ``bench/cost_run.py``.

- **whole process**: ``python -m watcher scan --json`` from exec to exit, on a fresh database.
- **start-up**: a second ``proofwatch scan`` on the same database with nothing new to read
  (interpreter, imports, config, schema check, chain id, one idle poll).
- **catch-up work**: whole process minus start-up.
- the floor (``bench/floor.py``) as a whole process (median of 3) and in process (its RPC
  work alone: what any watcher must wait for).
- ethereum-etl / proofwatch: the issue's "at least 10x faster" ratio (both whole processes).

Printed, never asserted. Nothing here changes what the cost tables count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

TARGET_FLOOR = 2.0  # catch-up within 2x the floor's time
TARGET_ETL = 10.0  # proofwatch at least 10x faster than ethereum-etl (20,000 blocks)


def speed_summary(results: Sequence[Any], out: Callable[..., None]) -> None:
    """One block per chain (a ``bench.cost_run.ChainResult``)."""
    out("\n== time summary: whole processes (reported, not enforced) ==")
    for r in results:
        floor, inside = r.floor.seconds, r.floor_inside
        out(
            f"  {r.name} ({r.blocks:,} blocks): floor {floor:.2f} s whole process, "
            f"{inside:.2f} s in process"
            + (f"; ethereum-etl {r.etl.seconds:.2f} s" if r.etl is not None else "")
        )
        out(
            f"    {'proofwatch scan':28} {'whole':>7} {'start-up':>9} {'catch-up':>9} "
            f"{'whole/floor':>12} {'catch-up/floor in process':>26} {'etl/whole':>10}"
        )
        for mode, t in r.scans.items():
            startup = r.startup.get(mode)
            work = None if startup is None else t.seconds - startup
            etl = f"{r.etl.seconds / t.seconds:.1f}" if r.etl is not None else "-"
            out(
                f"    {'internal = ' + repr(mode):28} {t.seconds:7.2f} "
                f"{_s(startup):>9} {_s(work):>9} {t.seconds / floor:12.1f} "
                f"{_ratio(work, inside):>26} {etl:>10}"
            )
        out(
            f"    targets: whole process within {TARGET_FLOOR:g}x the floor's; "
            f"ethereum-etl / proofwatch >= {TARGET_ETL:g} (on 20,000 blocks)"
        )


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _ratio(a: float | None, b: float) -> str:
    return "-" if a is None or b <= 0 else f"{a / b:.1f}"
