"""Operating guards on a real SQLite file and a real Anvil node: one process at a time scans
and delivers, a halted chain resumes only on an acknowledged violation, health tells the truth.

Helpers come from ``test_daemon`` (configs, databases, the daemon as a child process).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.integration.test_daemon import (
    FAST,
    DaemonThread,
    Db,
    ScriptedRounds,
    cli,
    daemons,
    dbs,
    dead_url,
    http_get,
    metric_samples,
    open_db,
    running,
    two_chains,
    wait_for_heartbeat,
    wait_until,
    write_config,
)
from tests.support.anvil import AnvilError, AnvilNode
from tests.support.contracts import send_eth
from tests.support.rpcproxy import RpcFault, RpcProxy
from tests.support.service import DaemonProcess
from tests.unit.test_batch_size import BatchLimitProxy
from watcher.chain.rpc import RpcPool
from watcher.ledger.scanning import ScanReport, scan_chain
from watcher.runtime.daemon import Daemon
from watcher.runtime.http import StatusServer
from watcher.runtime.locks import DaemonLocked, FileLock, LeaseCheck, LeaseLock, command_lock
from watcher.runtime.status import RUNNING_WITHIN, health_problems, status_document
from watcher.settings import ChainSettings, Settings, StatusSettings
from watcher.store.db import SCHEMA_VERSION, make_engine, migrate, transaction
from watcher.store.outbox import emit
from watcher.store.tables import ChainState

__all__ = ["daemons", "dbs", "running", "two_chains"]  # fixtures used here

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class TamperingNode:
    """A scripted node beside Anvil: forwards every call to it, except that the header of
    block ``broken`` (when set) names a parent that is not the block before it, as a
    load-balanced provider does when its backends disagree while a range is read."""

    def __init__(self, node: AnvilNode) -> None:
        self.node = node
        self.broken: int | None = None

    def __call__(self, method: str, params: list[Any]) -> Any:
        try:
            result = self.node.rpc(method, *params)
        except AnvilError as exc:
            raise RpcFault(exc.code or -32000, str(exc.error.get("message"))) from None
        if (
            method == "eth_getBlockByNumber"
            and self.broken is not None
            and isinstance(result, dict)
            and int(result["number"], 16) == self.broken
        ):
            result = {**result, "parentHash": "0x" + "ee" * 32}
        return result


@dataclass
class Clock:
    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at


@dataclass
class ScanSite:
    """One chain through a tampering proxy in front of Anvil, on a migrated SQLite file."""

    node: AnvilNode
    proxy: RpcProxy
    tamper: TamperingNode
    engine: Engine
    settings: Settings
    clock: Clock = field(default_factory=Clock)

    @property
    def chain(self) -> ChainSettings:
        return self.settings.chains[0]

    def scan(self) -> ScanReport:
        pool = RpcPool(
            (self.proxy.url,), chain="local", timeout=5, backoff_base=0.01, sleep=lambda _s: None
        )
        try:
            return scan_chain(self.chain, pool, self.engine, self.clock)
        finally:
            pool.close()

    def health(self, seconds_later: float) -> list[str]:
        now = T0 + timedelta(seconds=seconds_later)
        return health_problems(status_document(self.engine, self.settings, now), self.settings, now)


@pytest.fixture
def scan_site(anvil: AnvilNode, tmp_path: Path) -> Iterator[ScanSite]:
    tamper = TamperingNode(anvil)
    chain = ChainSettings(
        name="local", chain_id=31337, rpc_urls=("http://placeholder",), receiving_address=WALLET,
        finality=2, poll_seconds=1, start_block=0, native_symbol="ETH", tokens=(),
        max_lag_blocks=2,
        internal="debug_trace",  # it reads every header: a broken link inside a range shows
    )  # fmt: skip
    url = f"sqlite:///{tmp_path / 'watcher.db'}"
    settings = Settings(
        config_path=tmp_path / "watcher.toml", database_url=url, chains=(chain,),
        status=StatusSettings(stale_seconds=30),
    )  # fmt: skip
    engine = make_engine(url)
    migrate(engine)
    with RpcProxy(tamper) as proxy:
        yield ScanSite(anvil, proxy, tamper, engine, settings)
    engine.dispose()


# --- trap 5: tick and scan take the daemon's lock -----------------------------------------------


@pytest.mark.anvil
def test_tick_and_scan_beside_a_running_daemon_exit_one_naming_its_pid(
    anvil: AnvilNode,
    tmp_path: Path,
    dbs: Callable[[Path], Db],
    daemons: Callable[[Path], DaemonProcess],
) -> None:
    """A cron `tick` or a `scan` while `run` works on the same database is refused with exit 1
    and one line naming the daemon's pid, and the daemon keeps running."""
    assert anvil.url is not None
    config = write_config(tmp_path, {"local": anvil.url})
    db = dbs(config)
    daemon = daemons(config)
    wait_for_heartbeat(db, daemon)
    for command in ("tick", "scan"):
        result = cli(config, command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("proofwatch: error: another proofwatch daemon"), lines
        assert f"pid {daemon.pid}" in lines[0]
        assert result.stdout == ""
    assert daemon.alive()
    assert daemon.stop() == 0


def test_a_daemon_is_refused_while_a_tick_holds_the_lock_and_names_it(tmp_path: Path) -> None:
    """While a one-off `tick` holds the lock, a daemon (or a `scan`) is refused naming the
    tick and its pid; once it is released the lock is free again."""
    db = open_db(write_config(tmp_path, {"local": dead_url()}))
    try:
        with command_lock(db.settings, db.engine, db.now, "tick"):
            lock_file = tmp_path / "watcher.db.lock"
            assert lock_file.read_text().split()[1] == "tick"
            with pytest.raises(DaemonLocked, match=r"proofwatch `tick` \(pid \d+\) is already"):
                Daemon(db.context(), install_signals=False).start()
            with (
                pytest.raises(DaemonLocked, match=r"`tick` \(pid \d+\)"),
                command_lock(db.settings, db.engine, db.now, "scan"),
            ):
                pass
        second = FileLock(tmp_path / "watcher.db.lock", pid=7, role="scan")
        second.acquire()
        second.release()
    finally:
        db.engine.dispose()
        db.reader.dispose()


def test_tick_exits_one_when_another_tick_holds_the_lock(
    tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """A second `tick` started while one runs is refused (exit 1) and writes nothing."""
    config = write_config(tmp_path, {"local": dead_url()})
    db = dbs(config)
    with command_lock(db.settings, db.engine, db.now, "tick"):
        result = cli(config, "tick", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "`tick` (pid" in result.stderr
    assert db.document()["chains"][0]["last_poll_at"] is None  # nothing was polled
    assert json.loads(cli(config, "status", "--json").stdout)["daemon"]["running"] is False


# --- trap 7: health that does not lie --------------------------------------------------------


@pytest.mark.anvil
def test_a_poll_ending_in_chain_moved_is_not_healthy_and_the_lag_shows(scan_site: ScanSite) -> None:
    """A poll that stops short of the head because the chain moved while it read leaves
    last_ok_at where it was and says why; the cursor stuck behind the head beyond
    max_lag_blocks makes the chain unhealthy at once, and staleness follows; a complete poll
    makes it healthy again."""
    site = scan_site
    site.node.mine(3)
    first = site.scan()
    assert first.cursor_after == 3
    assert site.health(1) == ["daemon has never run on this database"]

    site.node.mine(5)  # head 8; block 5 will not link to block 4
    site.tamper.broken = 5
    site.clock.at = T0 + timedelta(seconds=10)
    moved = site.scan()
    assert moved.cursor_after == 3
    entry = status_document(site.engine, site.settings, site.clock())["chains"][0]
    assert entry["last_ok_at"] == "2026-11-21T12:00:00Z"  # the good poll, not this one
    assert entry["last_poll_at"] == "2026-11-21T12:00:10Z"
    assert (entry["head"], entry["cursor"], entry["lag_blocks"]) == (8, 3, 5)
    assert "poll incomplete at blocks 4..8" in entry["last_error"]
    assert not moved.complete
    lag = "chain local cursor 3 is 5 blocks behind the head 8 (max_lag_blocks 2)"
    assert site.health(11)[1:] == [lag]
    stale = site.health(35)
    assert stale[1].startswith("chain local last polled successfully 35 s ago (stale after 30 s)")
    assert "poll incomplete" in stale[1]
    assert stale[2:] == [lag]

    site.tamper.broken = None
    site.clock.at = T0 + timedelta(seconds=40)
    done = site.scan()
    assert done.cursor_after == 8 and done.complete
    assert site.health(41) == ["daemon has never run on this database"]


@dataclass
class IncompleteRounds(ScriptedRounds):
    """Scans that return a report saying the poll stopped short of the head, on command."""

    short: set[str] = field(default_factory=set)

    def scan(self, chain: ChainSettings) -> object:
        super().scan(chain)
        complete = chain.name not in self.short
        return ScanReport(chain.name, 9, 7, 3, 3, 0, 0, 0, 1, complete=complete)


def test_daemon_counts_polls_that_stop_short_as_an_outage(
    tmp_path: Path,
    dbs: Callable[[Path], Db],
    running: Callable[[Daemon], DaemonThread],
) -> None:
    """Polls that keep stopping short of the head raise watcher.degraded once, like failing
    polls, and a complete poll raises watcher.recovered."""
    db = dbs(write_config(tmp_path, {"local": dead_url()}, poll_seconds=0.1))
    rounds = IncompleteRounds(short={"local"})
    daemon = Daemon(
        db.context(), rounds=rounds, intervals=FAST, lock=FileLock(tmp_path / "l", pid=1)
    )
    thread = running(daemon)
    wait_until(lambda: db.events("watcher.degraded", "local"), "watcher.degraded")
    assert db.events("watcher.recovered") == []
    rounds.short.clear()
    wait_until(lambda: db.events("watcher.recovered", "local"), "watcher.recovered")
    thread.stop()
    assert len(db.events("watcher.degraded", "local")) == 1


# --- trap 6: chain resume after a finality violation -----------------------------------------


def _transfers(config: Path) -> list[dict[str, Any]]:
    result = cli(config, "transfers", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def _chain_rows(db_file: Path) -> list[Any]:
    """Every row of chain_state and chain_resumes."""
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        state = conn.execute("SELECT * FROM chain_state").fetchall()
        return state + conn.execute("SELECT * FROM chain_resumes").fetchall()


def _chain_status(config: Path) -> dict[str, Any]:
    result = cli(config, "status", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    chain: dict[str, Any] = document["chains"][0]
    return {**chain, "reasons": document["health"]["reasons"]}


@pytest.mark.anvil
def test_chain_resume_acknowledges_a_violation_records_who_and_scanning_resumes(
    anvil_fast: AnvilNode, tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """After a reorg below a final payment the chain stays halted (status says by which
    event); `chain resume CHAIN --ack EVT` refuses bad chains and events (exit 2) and events
    or chains that do not fit (exit 3) writing nothing, then records who and when, and the
    next scan follows the reorg keeping the final payment as it was."""
    node = anvil_fast
    assert node.url is not None
    config = write_config(tmp_path, {"local": node.url})
    db = dbs(config)
    node.mine(2)
    tx = send_eth(node.web3(), node.accounts()[1], db.settings.chains[0].receiving_address, 10**18)
    node.mine(3)
    assert cli(config, "scan").returncode == 0
    (paid,) = _transfers(config)
    assert (paid["tx_hash"], paid["status"]) == (tx, "final")

    node.reorg(5)
    violated = cli(config, "scan")
    assert violated.returncode == 1
    (event,) = db.events("watcher.finality_violation")
    with db.reader.connect() as conn:
        eid = conn.exec_driver_sql(
            "SELECT id FROM outbox WHERE type = 'watcher.finality_violation'"
        ).scalar_one()
    assert f"proofwatch chain resume local --ack {eid}" in violated.stderr
    halted = _chain_status(config)
    assert halted["halted_by"] == eid and halted["last_resume"] is None
    assert any(f"halted by finality violation {eid}" in r for r in halted["reasons"])
    again = cli(config, "scan")
    assert again.returncode == 1 and f"halted by finality violation {eid}" in again.stderr

    with transaction(db.engine) as session:
        other = emit(session, "cycle.opened", {"chain": "local"}, dedupe_key="c1", now=T0)
    before = _chain_rows(tmp_path / "watcher.db")
    for args, code in [
        (("nope", "--ack", eid), 2),
        (("local", "--ack", "not-an-event"), 2),
        (("local", "--ack", "EVT-" + "0" * 20), 2),
        (("local", "--ack", eid, "--by", "   "), 2),
        (("local", "--ack", other), 3),
    ]:
        result = cli(config, "chain", "resume", *args)
        assert result.returncode == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    after = _chain_rows(tmp_path / "watcher.db")
    assert after == before

    resumed = cli(config, "chain", "resume", "local", "--ack", eid.upper(), "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert (record["chain"], record["event_id"]) == ("local", eid)
    assert record["by"] == getpass.getuser() and record["at"]
    assert cli(config, "chain", "resume", "local", "--ack", eid).returncode == 3  # not halted

    scanned = cli(config, "scan", "--json")
    assert scanned.returncode == 0, scanned.stderr
    report = json.loads(scanned.stdout)["local"]
    assert report["reorgs"] == 1 and report["cursor_after"] == node.block_number()
    (kept,) = _transfers(config)
    assert kept == paid  # the final payment and its proof are never rewritten
    status = _chain_status(config)
    assert status["halted_by"] is None
    assert status["last_resume"] == record
    assert not any("halted" in r for r in status["reasons"])
    assert len(db.events("watcher.finality_violation")) == 1
    assert event["data"]["chain"] == "local"
    node.mine(2)
    assert cli(config, "scan").returncode == 0  # and on it goes


def test_init_migrates_a_schema_2_file_to_halts_and_resumes_and_repeats_safely(
    tmp_path: Path,
) -> None:
    """A database from before chain halts (no halted_by/resume_ack, no chain_resumes) gets
    them from migrate, and migrating again (or from an older version) changes nothing."""
    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            for view in ("v_status",):
                conn.execute(f"DROP VIEW {view}")
            conn.execute("ALTER TABLE chain_state DROP COLUMN halted_by")
            conn.execute("ALTER TABLE chain_state DROP COLUMN resume_ack")
            conn.execute("DROP TABLE chain_resumes")
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        assert migrate(engine) == (2, SCHEMA_VERSION)
        assert migrate(engine) == (SCHEMA_VERSION, SCHEMA_VERSION)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(chain_state)")}
            resumes = {r[1] for r in conn.execute("PRAGMA table_info(chain_resumes)")}
            conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
            conn.commit()
        assert {"halted_by", "resume_ack"} <= columns
        assert resumes == {"id", "chain", "event_id", "resumed_by", "resumed_at", "cursor"}
        assert migrate(engine) == (1, SCHEMA_VERSION)  # every step again: no duplicate column
    finally:
        engine.dispose()


# --- trap 9: batches too big for the provider -------------------------------------------------


@pytest.mark.anvil
@pytest.mark.parametrize("mode", ["413", "stall"])
def test_a_scan_through_a_provider_with_a_small_batch_limit_finds_every_payment(
    mode: str, anvil: AnvilNode, tmp_path: Path
) -> None:
    """Behind a provider that takes at most 8 entries per batch (413, or no answer in time for
    bigger ones), a scan of 60 blocks shrinks its batches, reaches the head and finds both
    payments exactly once."""
    node = anvil
    assert node.url is not None
    w3, payer = node.web3(), node.accounts()[1]
    node.mine(20)
    txs = [send_eth(w3, payer, WALLET, 10**18)]
    node.mine(30)
    txs.append(send_eth(w3, payer, WALLET, 2 * 10**18))
    node.mine(8)
    chain = ChainSettings(
        name="local", chain_id=31337, rpc_urls=("http://placeholder",), receiving_address=WALLET,
        finality=2, poll_seconds=1, start_block=0, native_symbol="ETH", tokens=(),
        internal="debug_trace", max_batch=64,  # two entries per block: batches over the limit
    )  # fmt: skip
    engine = make_engine(f"sqlite:///{tmp_path / 'watcher.db'}")
    migrate(engine)
    with BatchLimitProxy(node.url, limit=8, mode=mode) as proxy:
        pool = RpcPool(
            (proxy.url,), chain="local", max_batch=64, timeout=1.0, backoff_base=0.01,
            sleep=lambda _s: None,
        )  # fmt: skip
        try:
            report = scan_chain(chain, pool, engine, Clock())
        finally:
            pool.close()
    try:
        assert report.complete and report.cursor_after == node.block_number()
        assert pool.max_batch <= 8
        assert max(proxy.sizes) > 8  # it did try bigger batches first
        with engine.connect() as conn:
            found = [r[0] for r in conn.exec_driver_sql("SELECT tx_hash FROM transfers")]
        assert sorted(found) == sorted(txs)
    finally:
        engine.dispose()


def test_on_a_shared_database_tick_refuses_while_a_live_daemon_holds_the_lease(
    tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """Where there is no lock file (PostgreSQL), a one-off command checks the daemon's lease:
    refused naming the holder while its heartbeat is fresh, allowed once it is stale, and it
    never takes the lease itself."""
    db = dbs(write_config(tmp_path, {"local": dead_url()}))
    clock = Clock(T0)
    LeaseLock(db.engine, clock, pid=11, host="alpha").acquire()
    check = LeaseCheck(db.engine, clock, role="tick")
    with pytest.raises(DaemonLocked, match=r"pid 11 on alpha\) holds the lease .*`tick`"):
        check.acquire()
    clock.at = T0 + RUNNING_WITHIN + timedelta(seconds=1)
    check.acquire()
    check.release()
    row = db.daemon_row()
    assert row is not None and (row.pid, row.host) == (11, "alpha")


def test_a_halted_chain_shows_on_healthz_metrics_and_the_status_page(two_chains: Db) -> None:
    """While a violation halts a chain, /healthz is 503 naming the event and the command to
    resume, /metrics has proofwatch_chain_halted 1 for it (0 for the other) and the page
    says so."""
    db = two_chains
    with transaction(db.engine) as session:
        state = session.get(ChainState, "flaky")
        assert state is not None
        state.halted_by = "EVT-0badc0ffee"
        session.add(state)
    server = StatusServer("127.0.0.1:0", db.reader, db.settings, db.now).start()
    try:
        code, body = http_get(f"{server.url}/healthz")
        assert code == 503
        answer = json.loads(body)
        assert (
            "chain flaky is halted by finality violation EVT-0badc0ffee "
            "(proofwatch chain resume flaky --ack EVT-0badc0ffee)"
        ) in answer["reasons"]
        assert {c["name"]: c["halted_by"] for c in answer["chains"]} == {
            "steady": None,
            "flaky": "EVT-0badc0ffee",
        }
        samples = metric_samples(http_get(f"{server.url}/metrics")[1].decode())
        assert samples[("proofwatch_chain_halted", (("chain", "flaky"),))] == 1
        assert samples[("proofwatch_chain_halted", (("chain", "steady"),))] == 0
        assert "halted by EVT-0badc0ffee" in http_get(f"{server.url}/")[1].decode()
    finally:
        server.stop()
