"""The daemon (`proofwatch run`) on each store: it scans, settles and stops cleanly on SQLite
and on PostgreSQL alike, and its log never shows the database password."""

from __future__ import annotations

import pytest

from tests.e2e.chain_harness import Chain, Workspace, usdc
from tests.e2e.daemon_harness import wait_until
from tests.support.postgres import STORES as ALL_STORES
from tests.support.service import DaemonProcess

pytestmark = pytest.mark.anvil
STORES = ALL_STORES  # every test here runs on SQLite and on PostgreSQL

T1 = "2026-03-03T10:00:00Z"
T2 = "2026-03-03T10:30:00Z"


def test_the_daemon_settles_a_payment_and_stops_on_sigterm(ws: Workspace, chain: Chain) -> None:
    """A final payment of INV-1's unique amount is settled by the running daemon (paid, one
    cycle, one cycle.opened); status names the daemon; SIGTERM exits 0; no password logged."""
    chain.at(T1)
    chain.pay(chain.stranger, usdc("1500.000001"))
    chain.finalize()
    daemon = DaemonProcess(ws.config, ws.env(T2))
    try:
        wait_until(lambda: ws.status_of("INV-1") == "paid", "INV-1 paid by the daemon", 60)
        (row,) = ws.view("v_status")
        assert row["daemon_pid"] == daemon.pid
        assert daemon.alive()
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log[-3000:]
    assert ws.event_types().count("cycle.opened") == 1
    assert [c["status"] for c in ws.view("v_cycles")] == ["open"]
    (row,) = ws.view("v_status")
    assert row["daemon_stopped_at"] is not None
    if ws.pg is not None:
        assert ws.pg.password not in daemon.log
