"""Three daemons (real processes), four chains (four Anvil nodes), one PostgreSQL database:
the chains are spread over the daemons, a kill -9 of the daemon holding two chains hands them
to the others within the lease, and every invoice is paid once, every month opened once and
announced, with no delivery sent by two daemons at once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.shared_harness import SharedSite

DAEMONS = 3
CHAINS = 4
LEASE_SECONDS = 10


@pytest.fixture
def shared(tmp_path: Path, pg_url: str) -> Iterator[SharedSite]:
    site = SharedSite(tmp_path / "site", pg_url, chains=CHAINS, lease_seconds=LEASE_SECONDS)
    try:
        yield site.start()
    finally:
        site.close()


def spread(site: SharedSite) -> dict[int, list[str]] | None:
    """Daemon pid -> chains it leases, once every chain is held and no daemon holds more
    than its share (two); else None."""
    holders = site.holders()
    if len(holders) < CHAINS or None in holders.values():
        return None
    by_pid: dict[int, list[str]] = {}
    for chain, pid in sorted(holders.items()):
        assert pid is not None
        by_pid.setdefault(pid, []).append(chain)
    return by_pid if max(len(c) for c in by_pid.values()) <= 2 else None


def invoice_statuses(site: SharedSite) -> dict[str, str]:
    return {r["id"]: r["status"] for r in site.query("SELECT id, status FROM v_invoices")}


def test_three_daemons_share_four_chains_and_survive_a_kill_9(shared: SharedSite) -> None:
    """Payments on every chain are paid once each, before and after the daemon holding two
    chains is killed with SIGKILL; its chains are taken over from their cursors within the
    lease; every cycle.opened is delivered; the receiver never had one event in flight twice."""
    site = shared
    before = {c.name: site.issue(c, f"{c.name} early client") for c in site.chains}
    after = {c.name: site.issue(c, f"{c.name} late client") for c in site.chains}
    daemons = [site.start_daemon() for _ in range(DAEMONS)]
    by_pid = site.wait(lambda: spread(site), "the chains to be spread over the daemons")
    for chain in site.chains:
        site.pay(chain, before[chain.name][1])
    early = {invoice for invoice, _ in before.values()}
    site.wait(
        lambda: all(invoice_statuses(site)[i] == "paid" for i in early),
        "the first payment on every chain to be paid",
    )
    by_pid = spread(site) or by_pid
    victim = next(d for d in daemons if len(by_pid.get(d.pid, [])) == 2)
    taken = by_pid[victim.pid]
    victim.kill9()
    for chain in site.chains:
        site.pay(chain, after[chain.name][1])

    def taken_over() -> bool:
        holders = site.holders()
        return all(holders.get(c) not in (None, victim.pid) for c in taken)

    site.wait(taken_over, f"{taken} to be taken over", timeout=LEASE_SECONDS + 20)
    everything = early | {invoice for invoice, _ in after.values()}
    site.wait(
        lambda: all(invoice_statuses(site)[i] == "paid" for i in everything),
        "every invoice to be paid",
    )
    cycles = site.query("SELECT id FROM v_cycles")

    def delivered() -> bool:
        rows = site.query(
            "SELECT d.status FROM deliveries d JOIN outbox o ON o.id = d.event_id "
            "WHERE o.type = 'cycle.opened'"
        )
        return len(rows) == len(cycles) and all(r["status"] == "delivered" for r in rows)

    site.wait(delivered, "every cycle.opened to be delivered")

    assert sorted(invoice_statuses(site)) == sorted(everything)
    payments = site.query(
        "SELECT invoice_id, count(*) AS n FROM allocations WHERE active GROUP BY invoice_id"
    )
    assert [r["n"] for r in payments] == [1] * len(everything)
    per_retainer = Counter(r["retainer_id"] for r in site.query("SELECT retainer_id FROM cycles"))
    assert len(per_retainer) == len(everything) and set(per_retainer.values()) == {1}
    opened = {r["id"] for r in site.query("SELECT id FROM outbox WHERE type = 'cycle.opened'")}
    assert len(opened) == len(everything)
    assert opened <= {r.event_id for r in site.receiver.accepted()}
    assert set(site.receiver.max_in_flight().values()) == {1}
    for daemon in daemons:
        if daemon is not victim:
            assert daemon.alive(), daemon.log[-3000:]

    def listed() -> dict[int, Any]:
        status = site.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        return {d["pid"]: d for d in json.loads(status.stdout)["daemons"]}

    def survivors_hold_all() -> dict[int, Any] | None:
        # A snapshot, so waited for: under load a survivor's heartbeat (which renews its
        # leases) can run late, and a lease it still holds reads as expired for a moment.
        now = listed()
        held = sorted(c for d in daemons if d is not victim for c in now[d.pid]["chains"])
        return now if held == [c.name for c in site.chains] else None

    now = site.wait(survivors_hold_all, "the survivors to list every chain in status")
    assert now[victim.pid]["chains"] == []
    assert all(now[d.pid]["running"] for d in daemons if d is not victim)
    for daemon in daemons:
        if daemon is not victim:
            assert daemon.terminate() == 0
