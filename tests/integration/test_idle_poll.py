"""Idle pacing of the daemon's scan job on a real Anvil behind the counting proxy.

The daemon runs in process with the real ``Watcher`` rounds and a pacer whose monotonic clock
the test drives: while the clock stands still, an idle chain is not polled at all however
often the scan job runs; a chain with an open invoice or a transfer awaiting finality is polled
at every run. Polls are counted as HTTP POSTs at the proxy, job runs that did not poll by the
pacer; every wait is on a condition with a deadline, nothing is timed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from tests.integration.test_daemon import (
    FAST,
    WALLETS,
    DaemonThread,
    Db,
    dbs,  # noqa: F401 (fixture)
    running,  # noqa: F401 (fixture)
    wait_until,
    write_config,
)
from tests.support.anvil import AnvilNode
from tests.support.rpcproxy import RpcProxy
from watcher.domain.billing import InvoiceStatus
from watcher.ledger import invoices as ledger
from watcher.runtime.daemon import Daemon
from watcher.runtime.locks import FileLock
from watcher.runtime.pacing import IdlePacer, chain_is_busy
from watcher.store.db import read_session
from watcher.store.tables import Transfer

pytestmark = pytest.mark.anvil

IDLE = 3600.0  # idle_poll_seconds: never reached unless the test moves the clock
RUNS = 5  # job runs that must pass without a poll to call a chain "not polled"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def proxy(anvil_fast: AnvilNode) -> Iterator[RpcProxy]:
    assert anvil_fast.url is not None
    with RpcProxy(anvil_fast.url) as started:
        yield started


def stored(db: Db) -> list[Transfer]:
    with read_session(db.engine) as session:
        return list(session.exec(select(Transfer)).all())


def test_idle_chain_polls_every_idle_poll_seconds_and_busy_chain_every_poll_seconds(
    tmp_path: Path,
    anvil_fast: AnvilNode,
    proxy: RpcProxy,
    dbs: Callable[[Path], Db],  # noqa: F811
    running: Callable[[Daemon], DaemonThread],  # noqa: F811
) -> None:
    """With no open invoice and nothing awaiting finality the daemon does not poll until
    idle_poll_seconds have passed on its clock; a transfer awaiting finality and an open
    invoice each bring it back to a poll at every run of the job, and it goes idle again when
    they are gone."""
    config = write_config(tmp_path, {"local": proxy.url}, poll_seconds=0.05, idle_poll_seconds=IDLE)
    db = dbs(config)
    chain = db.settings.chain("local")
    clock = Clock()
    pacer = IdlePacer(clock)
    daemon = Daemon(
        db.context(),
        intervals=FAST,
        lock=FileLock(tmp_path / "l", pid=1),
        install_signals=False,
        pacer=pacer,
    )
    thread = running(daemon)

    def idle_for(runs: int) -> int:
        """Wait for ``runs`` job runs without a poll; the POSTs seen meanwhile must not move."""
        skipped = wait_until(lambda: pacer.skipped["local"] or None, "an idle run")
        posts = proxy.posts
        wait_until(lambda: pacer.skipped["local"] >= skipped + runs, f"{runs} idle runs")
        assert proxy.posts == posts, "an idle chain was polled before idle_poll_seconds"
        return posts

    def polls_at_every_run(posts: int, polls: int = 3) -> None:
        skipped = pacer.skipped["local"]
        wait_until(lambda: proxy.posts >= posts + polls, f"{polls} polls with a frozen clock")
        assert pacer.skipped["local"] == skipped, "a busy chain skipped a run"

    # 1. Idle from the start: one poll, then none while the clock stands still.
    posts = idle_for(RUNS)
    assert posts >= 1
    assert not chain_is_busy(db.engine, chain)

    # 2. An inflow with no invoice: found by the next idle poll (after idle_poll_seconds), then
    #    its transfer awaits finality and the chain is polled at every run.
    payer = anvil_fast.accounts()[1]
    anvil_fast.rpc("eth_sendTransaction", {"from": payer, "to": WALLETS[0], "value": hex(10**15)})
    clock.advance(IDLE)
    wait_until(lambda: [t for t in stored(db) if t.status == "seen"], "the inflow, seen")
    polls_at_every_run(proxy.posts)

    # 3. Final (finalized = head - 2 here): idle again.
    anvil_fast.mine(3)
    wait_until(lambda: [t for t in stored(db) if t.status == "final"], "the inflow, final")
    posts = idle_for(RUNS)

    # 4. An open invoice: polled at every run without moving the clock.
    retainer = ledger.add_retainer(
        db.context(), client="Idle Co", chain="local", asset="ETH", monthly="1"
    )
    ledger.approve_retainer(db.context(), f"RET-{retainer.id}", by="test")
    invoice = ledger.issue_invoice(db.context(), f"RET-{retainer.id}")
    assert invoice.status == InvoiceStatus.OPEN
    polls_at_every_run(posts)

    # 5. Voided: idle again.
    ledger.void_invoice(db.context(), f"INV-{invoice.id}")
    idle_for(RUNS)
    thread.stop()
    assert thread.error is None
