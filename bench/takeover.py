"""Takeover delay: how long a chain goes unwatched after a kill -9 of the daemon scanning it.

Run: ``.venv/bin/python bench/takeover.py [--lease 30 10] [--runs 3] [--chains 4]``. Needs
``make tools`` (Anvil) and PostgreSQL's server. See bench/README.md ("Takeover after kill -9").

Per lease length and run: a fresh PostgreSQL database, ``--chains`` Anvil nodes (a block every
second, ``poll_seconds = 1``) and two ``proofwatch run`` daemons (``tests.e2e.shared_harness``).
Once every chain is leased, the daemon holding the most chains is killed with SIGKILL. For each
chain it held, the delay is from the moment the kill returned (the process is gone) to the
``last_ok_at`` of the first poll committed after it (by the other daemon: the dead one commits
nothing more), read from ``chain_state``; both times come from this host's wall clock. It
prints every delay, then per lease, for the killed daemon's first and second chain back (with
4 chains and 2 daemons it holds two), the median, min and max over the runs. Measures only:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.shared_harness import SharedSite  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.service import DaemonProcess  # noqa: E402

DAEMONS = 2
WAIT = 120  # seconds for any one condition: far above a 30 s lease


def held_by(site: SharedSite) -> dict[int, list[str]] | None:
    """Daemon pid -> the chains it leases, once every chain is leased and spread (each daemon
    holds some, none more than its share); else None."""
    holders = site.holders()
    if len(holders) < site.count or None in holders.values():
        return None
    by_pid: dict[int, list[str]] = {}
    for chain, pid in sorted(holders.items()):
        assert pid is not None
        by_pid.setdefault(pid, []).append(chain)
    share = math.ceil(site.count / DAEMONS)
    spread = len(by_pid) == DAEMONS and max(len(c) for c in by_pid.values()) <= share
    return by_pid if spread else None


class FirstPolls:
    """The first committed poll of each chain after ``since``, as seconds after it: checked
    every 0.1 s (``wait_until``) while the chains poll every second, so each chain's first
    ``last_ok_at`` past ``since`` is caught before the next poll overwrites it."""

    def __init__(self, site: SharedSite, chains: list[str], since: datetime) -> None:
        self.site, self.chains, self.since = site, chains, since
        self.seconds: dict[str, float] = {}

    def __call__(self) -> dict[str, float] | None:
        rows = self.site.query(
            "SELECT chain, last_ok_at FROM chain_state WHERE last_ok_at > :since",
            since=self.since.replace(tzinfo=None),  # stored as naive UTC
        )
        for row in rows:
            if row["chain"] in self.chains and row["chain"] not in self.seconds:
                at = row["last_ok_at"].replace(tzinfo=UTC)
                self.seconds[row["chain"]] = (at - self.since).total_seconds()
        return self.seconds if len(self.seconds) == len(self.chains) else None


def one_run(server: PostgresServer, root: Path, lease: float, chains: int) -> dict[str, float]:
    """The takeover delay of every chain the killed daemon held, in seconds."""
    name = server.create_database()
    site = SharedSite(root, server.url(name), chains=chains, lease_seconds=lease)
    try:
        site.start()
        daemons: list[DaemonProcess] = [site.start_daemon() for _ in range(DAEMONS)]
        by_pid = site.wait(lambda: held_by(site), "every chain to be leased", timeout=WAIT)
        victim = max(daemons, key=lambda d: len(by_pid.get(d.pid, [])))
        taken = by_pid[victim.pid]
        victim.kill9()
        killed = datetime.now(UTC)
        first = site.wait(FirstPolls(site, taken, killed), f"{taken} polled", timeout=WAIT)
        for daemon in daemons:
            if daemon is not victim:
                daemon.terminate()
        return dict(first)
    finally:
        site.close()
        server.drop_database(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lease", type=float, nargs="+", default=[30.0, 10.0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chains", type=int, default=4)
    args = parser.parse_args(argv)
    print(
        f"proofwatch takeover after kill -9  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"({platform.python_version()}, {platform.machine()}); {DAEMONS} daemons, "
        f"{args.chains} chains, poll_seconds 1, {args.runs} runs per lease",
        flush=True,
    )
    server = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="pw-takeover-") as tmp:
            for lease in args.lease:
                ranked: list[list[float]] = []  # per run: its chains' delays, fastest first
                for run in range(args.runs):
                    got = one_run(server, Path(tmp) / f"l{lease:g}-r{run}", lease, args.chains)
                    shown = ", ".join(f"{c} {s:.1f} s" for c, s in sorted(got.items()))
                    print(f"  lease_seconds {lease:g}, run {run + 1}: {shown}", flush=True)
                    ranked.append(sorted(got.values()))
                for rank in range(min(len(r) for r in ranked)):
                    each = [r[rank] for r in ranked]
                    print(
                        f"lease_seconds {lease:g}: chain {rank + 1} of the killed daemon's "
                        f"back in {statistics.median(each):.1f} s (median of {len(each)} runs; "
                        f"min {min(each):.1f}, max {max(each):.1f})",
                        flush=True,
                    )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
