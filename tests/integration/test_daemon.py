"""The daemon on a real SQLite file: lock, signals, outages, status while it runs, HTTP.

In-process tests drive ``Daemon`` with scripted rounds (no node); subprocess tests run
``python -m watcher run`` against a real Anvil, directly or behind the fault-injecting proxy.
Every wait polls a condition with a deadline; every process started here is stopped.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import col, select
from structlog.testing import capture_logs

from tests.support.anvil import AnvilNode, free_port
from tests.support.browser import chromium, needs_chromium
from tests.support.rpcproxy import RpcProxy
from tests.support.service import DaemonProcess
from watcher.errors import RpcError
from watcher.ledger import invoices as ledger
from watcher.ledger.context import Context
from watcher.notify.disabled import disable
from watcher.runtime.daemon import DEGRADED_AFTER, Daemon, Intervals, Outage
from watcher.runtime.http import StatusServer
from watcher.runtime.locks import DaemonLocked, FileLock, LeaseLock
from watcher.runtime.status import RUNNING_WITHIN, status_document
from watcher.settings import ChainSettings, Settings, load_settings
from watcher.store.db import make_engine, migrate, transaction
from watcher.store.outbox import emit
from watcher.store.tables import ChainState, Delivery, OutboxEvent
from watcher.store.tables import Daemon as DaemonRow

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = REPO_ROOT / "tools" / "promtool"  # `make tools` puts it there
SECRET = "SECRETKEY0123456789"
STATUS_TOKEN = "status-token-0123456789abcdef"
WALLETS = [
    "0xB3e9568A9cbB624403743340358c85CCce130893",
    "0x1111111111111111111111111111111111111111",
    "0x2222222222222222222222222222222222222222",
]
DEADLINE = 30.0
T = TypeVar("T")


# --- helpers ---------------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def write_config(
    folder: Path,
    chains: dict[str, str],
    *,
    poll_seconds: float = 0.5,
    idle_poll_seconds: float | None = None,
    listen: str | None = None,
    stale_seconds: float = 30,
    token: str | None = None,
) -> Path:
    """A config with one ``[[chains]]`` per (name, RPC URL); the URLs (and the status
    ``token``, if any) live in ``.env``. Idle chains poll as often as busy ones unless
    ``idle_poll_seconds`` says otherwise."""
    env, blocks = [], []
    for (name, url), wallet in zip(chains.items(), WALLETS, strict=False):
        var = name.upper().replace("-", "_") + "_RPC_URL"
        env.append(f"{var}={url}")
        blocks.append(
            f'[[chains]]\nname = "{name}"\nchain_id = 31337\nrpc_urls = ["${{{var}}}"]\n'
            f'receiving_address = "{wallet}"\nfinality = "finalized"\n'
            f"poll_seconds = {poll_seconds}\nstart_block = 0\n"
            f"idle_poll_seconds = {idle_poll_seconds or poll_seconds}\n"
        )
    status = f"[status]\nstale_seconds = {stale_seconds}\n"
    if listen:
        status += f'listen = "{listen}"\n'
    if token:
        status += 'token = "${STATUS_TOKEN}"\n'
        env.append(f"STATUS_TOKEN={token}")
    config = folder / "watcher.toml"
    config.write_text('[database]\nurl = "sqlite:///watcher.db"\n\n' + "\n".join(blocks) + status)
    (folder / ".env").write_text("\n".join(env) + "\n")
    return config


@dataclass
class Db:
    """A migrated database for one config: the settings, a writer and a read-only engine."""

    settings: Settings
    engine: Engine
    reader: Engine
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def document(self) -> dict[str, Any]:
        return status_document(self.reader, self.settings, self.now())

    def chain(self, name: str) -> dict[str, Any]:
        return next(c for c in self.document()["chains"] if c["name"] == name)

    def events(self, type_: str, chain: str | None = None) -> list[dict[str, Any]]:
        with self.reader.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT body FROM outbox WHERE type = ? ORDER BY seq", (type_,)
            ).all()
        bodies = [json.loads(r[0]) for r in rows]
        return [b for b in bodies if chain is None or b["data"].get("chain") == chain]

    def daemon_row(self) -> DaemonRow | None:
        with transaction(self.reader) as session:
            return session.get(DaemonRow, 1)

    def context(self) -> Context:
        return Context(self.settings, self.engine, self.now)


def open_db(config: Path) -> Db:
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    migrate(engine)
    return Db(settings, engine, make_engine(settings.database_url, readonly=True))


@pytest.fixture
def dbs() -> Iterator[Callable[[Path], Db]]:
    opened: list[Db] = []

    def factory(config: Path) -> Db:
        db = open_db(config)
        opened.append(db)
        return db

    yield factory
    for db in opened:
        db.engine.dispose()
        db.reader.dispose()


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHER_NOW", "WATCHER_CONFIG")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m watcher ARGS --config CONFIG`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args, "--config", str(config)],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def daemons() -> Iterator[Callable[[Path], DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path) -> DaemonProcess:
        process = DaemonProcess(config, child_env(), stop_timeout=DEADLINE)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def wait_for_heartbeat(db: Db, daemon: DaemonProcess) -> DaemonRow:
    def beating() -> DaemonRow | None:
        assert daemon.alive(), f"daemon exited early:\n{daemon.stderr}"
        row = db.daemon_row()
        return row if row is not None and row.pid == daemon.pid and not row.stopped_at else None

    return wait_until(beating, f"the heartbeat of pid {daemon.pid}")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return http_answer(url, headers)[:2]


def http_answer(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    """(status, body, response headers) of a GET; ``headers`` may override ``Host``."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def with_status(db: Db, **changes: Any) -> Settings:
    """``db``'s settings with some ``[status]`` keys changed."""
    return dataclasses.replace(
        db.settings, status=dataclasses.replace(db.settings.status, **changes)
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@dataclass
class ScriptedRounds:
    """Rounds whose scans succeed or fail on command, counting every poll."""

    failing: set[str] = field(default_factory=set)
    polls: Counter[str] = field(default_factory=Counter)
    renew_error: Exception | None = None
    renews: int = 0

    def scan(self, chain: ChainSettings) -> object:
        self.polls[chain.name] += 1
        if chain.name in self.failing:
            raise RpcError(f"chain {chain.name}: HTTP 503 from https://rpc.example/v2/{SECRET}")
        return None

    def renew(self) -> object:
        self.renews += 1
        if self.renew_error is not None:
            raise self.renew_error
        return None

    def deliver(self) -> object:
        return None


FAST = Intervals(heartbeat=0.1, deliver=0.1, renew=0.1)


class DaemonThread:
    """An in-process ``Daemon`` running in a thread; ``error`` holds what ``start()`` raised."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.daemon.start()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.daemon.request_stop()
        self.join()

    def join(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "daemon thread did not stop"


@pytest.fixture
def running() -> Iterator[Callable[[Daemon], DaemonThread]]:
    threads: list[DaemonThread] = []

    def start(daemon: Daemon) -> DaemonThread:
        thread = DaemonThread(daemon)
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.daemon.request_stop()
        thread.thread.join(DEADLINE)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- outages (pure) --------------------------------------------------------------------------

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_outage_is_due_after_three_failed_polls_and_only_once() -> None:
    """The third failed poll in a row makes the outage due; once announced it is not due again."""
    outage = Outage()
    assert [outage.failed(T0 + timedelta(seconds=i)) for i in range(3)] == [False, False, True]
    outage.announced = True
    assert outage.failed(T0 + timedelta(seconds=3)) is False
    assert (outage.failures, outage.since) == (4, T0)


def test_outage_is_due_after_a_minute_of_failure_with_fewer_polls() -> None:
    """Slow failing polls (timeouts) are announced once the outage, counted from the start of
    its first failed poll, has lasted a minute."""
    outage = Outage()
    assert outage.failed(T0 + timedelta(seconds=45), began=T0) is False
    assert outage.since == T0
    assert outage.failed(T0 + DEGRADED_AFTER, began=T0 + timedelta(seconds=46)) is True


def test_a_good_poll_ends_the_outage_and_keeps_the_lifetime_count() -> None:
    """After a success the next failure starts a new outage; the total keeps counting."""
    outage = Outage()
    outage.failed(T0)
    outage.failed(T0 + timedelta(seconds=1))
    outage.reset()
    assert (outage.failures, outage.since, outage.announced) == (0, None, False)
    outage.failed(T0 + timedelta(seconds=9))
    assert (outage.failures, outage.since, outage.total_failures) == (
        1,
        T0 + timedelta(seconds=9),
        3,
    )


# --- locks -----------------------------------------------------------------------------------


def test_file_lock_refuses_a_second_holder_and_names_its_pid(tmp_path: Path) -> None:
    """While one holder has the flock, another is refused with the holder's pid; after the
    release the lock can be taken again."""
    path = tmp_path / "watcher.db.lock"
    first, second = FileLock(path, pid=4242), FileLock(path, pid=5353)
    first.acquire()
    try:
        with pytest.raises(
            DaemonLocked, match=r"pid 4242\) is already running .*watcher\.db\.lock"
        ):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    assert path.read_text() == "5353\n"
    second.release()


def test_lease_lock_refuses_a_live_holder_and_takes_over_an_expired_one(
    tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """A lease with a fresh heartbeat refuses another daemon (naming pid and host); a stale
    or stopped one is taken over."""
    db = dbs(write_config(tmp_path, {"local": dead_url()}))
    clock = [T0]
    first = LeaseLock(db.engine, lambda: clock[0], pid=11, host="alpha")
    second = LeaseLock(db.engine, lambda: clock[0], pid=22, host="beta")
    first.acquire()
    clock[0] = T0 + RUNNING_WITHIN
    with pytest.raises(DaemonLocked, match=r"pid 11 on alpha\) holds the lease"):
        second.acquire()
    clock[0] = T0 + RUNNING_WITHIN + timedelta(seconds=1)
    second.acquire()
    row = db.daemon_row()
    assert row is not None and (row.pid, row.host, row.stopped_at) == (22, "beta", None)
    with transaction(db.engine) as session:
        stored = session.get(DaemonRow, 1)
        assert stored is not None
        stored.stopped_at = clock[0]
        session.add(stored)
    first.acquire()  # a stopped holder frees the lease at once
    row = db.daemon_row()
    assert row is not None and (row.pid, row.host) == (11, "alpha")


def test_daemon_that_loses_its_lease_stops_and_says_who_took_it(
    tmp_path: Path, dbs: Callable[[Path], Db], running: Callable[[Daemon], DaemonThread]
) -> None:
    """When another daemon's pid appears in the daemon row, the heartbeat notices, the
    daemon stops cleanly and start() raises DaemonLocked naming the new holder."""
    db = dbs(write_config(tmp_path, {"local": dead_url()}, poll_seconds=0.1))
    lock = LeaseLock(db.engine, db.now, pid=os.getpid(), host="this-host")
    daemon = Daemon(db.context(), rounds=ScriptedRounds(), intervals=FAST, lock=lock)
    thread = running(daemon)
    wait_until(daemon.started.is_set, "the scheduler to start")
    with transaction(db.engine) as session:
        row = session.get(DaemonRow, 1)
        assert row is not None
        row.pid, row.host = 999_999, "other-host"
        session.add(row)
    thread.join()
    assert isinstance(thread.error, DaemonLocked)
    assert "pid 999999 on other-host" in str(thread.error)


# --- the scheduler, in process ---------------------------------------------------------------


def test_running_job_finishes_before_the_daemon_stops(
    tmp_path: Path, dbs: Callable[[Path], Db], running: Callable[[Daemon], DaemonThread]
) -> None:
    """A stop request waits for the running scan to finish, then marks the daemon row stopped."""
    db = dbs(write_config(tmp_path, {"slow": dead_url()}, poll_seconds=0.1))
    entered, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    class SlowRounds(ScriptedRounds):
        def scan(self, chain: ChainSettings) -> object:
            entered.set()
            release.wait(DEADLINE)
            finished.append(True)
            return None

    daemon = Daemon(
        db.context(), rounds=SlowRounds(), intervals=FAST, lock=FileLock(tmp_path / "l", pid=1)
    )
    thread = running(daemon)
    wait_until(entered.is_set, "the scan to start")
    daemon.request_stop()
    thread.thread.join(0.5)
    assert thread.thread.is_alive(), "the daemon stopped while a scan was still running"
    row = db.daemon_row()
    assert row is not None and row.stopped_at is None
    release.set()
    thread.join()
    assert thread.error is None
    assert finished == [True]
    row = db.daemon_row()
    assert row is not None and row.pid == os.getpid() and row.stopped_at is not None


def test_failing_chain_is_degraded_once_and_recovered_once_while_others_keep_polling(
    tmp_path: Path, dbs: Callable[[Path], Db], running: Callable[[Daemon], DaemonThread]
) -> None:
    """Three failed polls emit one watcher.degraded (state degraded, rpc_ok false, error
    redacted); more failures emit nothing; a good poll emits one watcher.recovered; the
    healthy chain is polled throughout."""
    db = dbs(write_config(tmp_path, {"steady": dead_url(), "flaky": dead_url()}, poll_seconds=0.1))
    rounds = ScriptedRounds(failing={"flaky"})
    daemon = Daemon(
        db.context(), rounds=rounds, intervals=FAST, lock=FileLock(tmp_path / "l", pid=1)
    )
    thread = running(daemon)

    degraded = wait_until(lambda: db.events("watcher.degraded", "flaky"), "watcher.degraded")
    assert degraded[0]["data"]["failures"] == 3
    assert SECRET not in json.dumps(degraded)
    flaky = db.chain("flaky")
    assert (flaky["degraded"], flaky["rpc_ok"]) == (True, False)
    assert flaky["last_error"] is not None and SECRET not in flaky["last_error"]
    polls = dict(rounds.polls)
    wait_until(lambda: rounds.polls["flaky"] >= polls["flaky"] + 3, "three more failed polls")
    wait_until(lambda: rounds.polls["steady"] >= polls["steady"] + 3, "steady to keep polling")
    assert len(db.events("watcher.degraded", "flaky")) == 1
    assert daemon.poll_failures()["flaky"][0] >= 6
    assert db.events("watcher.degraded", "steady") == []

    rounds.failing.clear()
    recovered = wait_until(lambda: db.events("watcher.recovered", "flaky"), "watcher.recovered")
    assert recovered[0]["data"]["since"] == degraded[0]["data"]["since"]
    polls = dict(rounds.polls)
    wait_until(lambda: rounds.polls["flaky"] >= polls["flaky"] + 3, "three more good polls")
    assert len(db.events("watcher.recovered", "flaky")) == 1
    assert len(db.events("watcher.degraded", "flaky")) == 1
    assert db.chain("flaky")["degraded"] is False
    assert daemon.poll_failures()["flaky"][0] == 0
    thread.stop()
    assert thread.error is None


def test_a_crashing_job_is_logged_and_the_scheduler_keeps_running(
    tmp_path: Path, dbs: Callable[[Path], Db], running: Callable[[Daemon], DaemonThread]
) -> None:
    """A job that raises an unexpected exception is logged as job.crashed with its traceback,
    and every job keeps its schedule."""
    db = dbs(write_config(tmp_path, {"local": dead_url()}, poll_seconds=0.1))
    rounds = ScriptedRounds(renew_error=ZeroDivisionError("boom"))
    daemon = Daemon(
        db.context(), rounds=rounds, intervals=FAST, lock=FileLock(tmp_path / "l", pid=1)
    )
    with capture_logs() as logs:
        thread = running(daemon)
        wait_until(lambda: rounds.renews >= 3, "three renewal rounds")
        polls = rounds.polls["local"]
        wait_until(lambda: rounds.polls["local"] > polls, "another scan after the crashes")
        thread.stop()
    crashes = [e for e in logs if e["event"] == "job.crashed"]
    assert crashes and all(e["job"] == "renew" for e in crashes)
    assert crashes[0]["error"] == "ZeroDivisionError: boom"
    assert "ZeroDivisionError" in crashes[0]["traceback"]


# --- the HTTP listener, in process -----------------------------------------------------------


@pytest.fixture
def two_chains(tmp_path: Path, dbs: Callable[[Path], Db]) -> Db:
    """Two chains with fresh state rows, a live daemon row, an invoice and a dead delivery."""
    db = dbs(write_config(tmp_path, {"steady": dead_url(), "flaky": dead_url()}, stale_seconds=60))
    now = T0
    db.now = lambda: now
    with transaction(db.engine) as session:
        session.add(DaemonRow(id=1, pid=321, host="box", started_at=now, last_heartbeat_at=now))
        for name, head, final, cursor, ok in (
            ("steady", 120, 100, 118, True),
            ("flaky", 50, 30, 40, False),
        ):
            session.add(
                ChainState(
                    chain=name,
                    chain_id=31337,
                    head=head,
                    final_block=final,
                    cursor=cursor,
                    last_poll_at=now,
                    last_ok_at=now - timedelta(seconds=10),
                    rpc_ok=ok,
                    degraded=not ok,
                )
            )
        event_id = emit(session, "watcher.degraded", {"chain": "flaky"}, dedupe_key="k", now=now)
        session.execute(  # handed to its one channel, where it is dead-lettered
            sa.update(OutboxEvent).where(col(OutboxEvent.id) == event_id).values(fanned_out=True)
        )
        session.add(
            Delivery(event_id=event_id, channel="webhook:0", status="dead", next_attempt_at=now)
        )
    ctx = db.context()
    retainer = ledger.add_retainer(
        ctx, client="Acme <Research> & Co", chain="steady", asset="ETH", monthly="0.5"
    )
    ledger.approve_retainer(ctx, f"RET-{retainer.id}", by="Jane")
    ledger.issue_invoice(ctx, f"RET-{retainer.id}")
    return db


def test_healthz_is_200_when_fresh_and_503_with_reasons_when_a_chain_is_stale(
    two_chains: Db,
) -> None:
    """/healthz answers 200 while every chain polled successfully within stale_seconds, and
    503 naming the stale chain once one has not."""
    db = two_chains
    clock = [T0]
    server = StatusServer("127.0.0.1:0", db.reader, db.settings, lambda: clock[0]).start()
    try:
        status, body = http_get(f"{server.url}/healthz")
        assert status == 200
        assert json.loads(body)["ok"] is True
        clock[0] = T0 + timedelta(seconds=51)  # steady's last success is now 61 s old
        with transaction(db.engine) as session:
            row = session.get(DaemonRow, 1)
            assert row is not None
            row.last_heartbeat_at = clock[0]
            session.add(row)
            state = session.get(ChainState, "flaky")
            assert state is not None
            state.last_ok_at = clock[0]
            session.add(state)
        status, body = http_get(f"{server.url}/healthz")
        assert status == 503
        answer = json.loads(body)
        assert answer["ok"] is False
        assert answer["reasons"] == [
            "chain steady last polled successfully 61 s ago (stale after 60 s)"
        ]
    finally:
        server.stop()


def test_metrics_expose_chain_outbox_invoice_and_failure_gauges(two_chains: Db) -> None:
    """/metrics has head, final block, cursor, lag, rpc_ok and poll failures per chain, the
    outbox backlog and invoices by status, read at scrape time."""
    db = two_chains
    server = StatusServer(
        "127.0.0.1:0",
        db.reader,
        db.settings,
        db.now,
        poll_failures=lambda: {"steady": (0, 1), "flaky": (4, 9)},
    ).start()
    try:
        status, body = http_get(f"{server.url}/metrics")
    finally:
        server.stop()
    assert status == 200
    samples = metric_samples(body.decode())

    def chain(name: str, metric: str) -> float:
        return samples[(metric, (("chain", name),))]

    assert chain("steady", "proofwatch_chain_head_block") == 120
    assert chain("steady", "proofwatch_chain_final_block") == 100
    assert chain("steady", "proofwatch_chain_cursor_block") == 118
    assert chain("steady", "proofwatch_chain_lag_blocks") == 2
    assert chain("steady", "proofwatch_chain_rpc_ok") == 1
    assert chain("flaky", "proofwatch_chain_rpc_ok") == 0
    assert chain("flaky", "proofwatch_chain_degraded") == 1
    assert chain("flaky", "proofwatch_chain_consecutive_poll_failures") == 4
    assert chain("flaky", "proofwatch_chain_poll_failures_total") == 9
    assert samples[("proofwatch_outbox_pending", ())] == 0
    assert samples[("proofwatch_outbox_dead", ())] == 1
    assert samples[("proofwatch_invoices", (("status", "open"),))] == 1
    assert samples[("proofwatch_invoices", (("status", "paid"),))] == 0
    assert samples[("proofwatch_daemon_up", ())] == 1


def promtool() -> str:
    """``$PROMTOOL``, else ``tools/promtool``, else ``promtool`` on the PATH; never a skip."""
    found = os.environ.get("PROMTOOL") or (str(PROMTOOL) if PROMTOOL.exists() else None)
    found = found or shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: run `make tools` (Debian's prometheus package)")
    return found


def test_metrics_pass_promtool_check(two_chains: Db) -> None:
    """/metrics, with every family present (poll failures, a disabled channel), passes
    ``promtool check metrics`` with no lint problem."""
    db = two_chains
    with transaction(db.engine) as session:
        disable(session, "webhook:0", reason="HTTP 410", event_id="EVT-x", now=T0)
    server = StatusServer(
        "127.0.0.1:0",
        db.reader,
        with_status(db, token=STATUS_TOKEN),
        db.now,
        poll_failures=lambda: {"steady": (0, 1), "flaky": (4, 9)},
    ).start()
    try:
        status, body = http_get(f"{server.url}/metrics", bearer(STATUS_TOKEN))
    finally:
        server.stop()
    assert status == 200
    assert b'proofwatch_channel_disabled{channel="webhook:0"} 1.0' in body
    checked = subprocess.run(
        [promtool(), "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    assert checked.stdout + checked.stderr == b""  # no lint warning either


def test_status_page_escapes_values_and_unknown_paths_are_404(two_chains: Db) -> None:
    """The HTML page escapes stored text, names retainers and invoices, and other paths 404."""
    db = two_chains
    server = StatusServer("127.0.0.1:0", db.reader, db.settings, db.now).start()
    try:
        status, body = http_get(f"{server.url}/")
        missing, _ = http_get(f"{server.url}/admin")
    finally:
        server.stop()
    page = body.decode()
    assert status == 200 and missing == 404
    assert "Acme &lt;Research&gt; &amp; Co" in page
    assert "<Research>" not in page
    assert "INV-1" in page and "RET-1" in page
    assert "<script" not in page


def test_status_token_guards_the_page_and_metrics_but_not_healthz(two_chains: Db) -> None:
    """With ``[status] token`` the page and /metrics answer 401 with a challenge unless the
    request carries the token (Bearer, or Basic as the password); /healthz needs none."""
    db = two_chains
    settings = with_status(db, token=STATUS_TOKEN)
    server = StatusServer("127.0.0.1:0", db.reader, settings, db.now).start()
    basic = base64.b64encode(f"anyone:{STATUS_TOKEN}".encode()).decode()
    try:
        for path in ("/", "/metrics", "/admin"):
            status, body, headers = http_answer(f"{server.url}{path}")
            assert (status, body) == (401, b"token required\n"), path
            assert headers.get_all("WWW-Authenticate") == [
                'Bearer realm="proofwatch"',
                'Basic realm="proofwatch", charset="UTF-8"',
            ]
            assert http_get(f"{server.url}{path}", bearer(STATUS_TOKEN + "x"))[0] == 401
            assert http_get(f"{server.url}{path}", {"Authorization": STATUS_TOKEN})[0] == 401
        page = http_get(f"{server.url}/", bearer(STATUS_TOKEN))
        by_browser = http_get(f"{server.url}/", {"Authorization": f"Basic {basic}"})
        metrics = http_get(f"{server.url}/metrics", bearer(STATUS_TOKEN))
        health = http_get(f"{server.url}/healthz")
        missing = http_get(f"{server.url}/admin", bearer(STATUS_TOKEN))
    finally:
        server.stop()
    assert page[0] == by_browser[0] == 200 and b"INV-1" in page[1]
    assert metrics[0] == 200 and b"proofwatch_daemon_up" in metrics[1]
    assert health[0] == 200 and json.loads(health[1])["ok"] is True
    assert missing[0] == 404


def test_foreign_host_header_is_refused_on_every_path(two_chains: Db) -> None:
    """A Host header naming neither the listen host nor an allowed host (DNS rebinding) gets
    400 everywhere, token or not; localhost, another port and allowed_hosts are answered."""
    db = two_chains
    settings = with_status(db, token=STATUS_TOKEN, allowed_hosts=("status.example.com",))
    server = StatusServer("127.0.0.1:0", db.reader, settings, db.now).start()
    try:
        for path in ("/", "/metrics", "/healthz"):
            for host in ("evil.example", f"evil.example:{server.url.rsplit(':', 1)[1]}", "x:y"):
                headers = {**bearer(STATUS_TOKEN), "Host": host}
                answer = http_get(f"{server.url}{path}", headers)
                assert answer == (400, b"host not allowed\n"), (path, host)
        answered = {
            host: http_get(f"{server.url}/", {**bearer(STATUS_TOKEN), "Host": host})[0]
            for host in ("127.0.0.1:1", "localhost", "STATUS.example.com", "status.example.com:443")
        }
    finally:
        server.stop()
    assert answered == dict.fromkeys(answered, 200)


def test_without_a_token_the_page_is_open_but_the_host_is_still_checked(two_chains: Db) -> None:
    """No ``[status] token`` keeps today's open page; the Host check applies regardless."""
    db = two_chains
    server = StatusServer("127.0.0.1:0", db.reader, db.settings, db.now).start()
    try:
        open_page = http_get(f"{server.url}/")[0]
        rebound = http_get(f"{server.url}/", {"Host": "attacker.example"})[0]
    finally:
        server.stop()
    assert (open_page, rebound) == (200, 400)


def chromium_dom(url: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium's DOM of ``url`` after it loaded, in a fresh profile."""
    return chromium("--dump-dom", url, timeout=90)


@needs_chromium
def test_status_page_renders_in_headless_chromium(two_chains: Db) -> None:
    """Real headless Chromium loads the token-guarded status page with the token as its
    password; its DOM shows the client and the invoice, and without the token it does not."""
    db = two_chains
    settings = with_status(db, token=STATUS_TOKEN)
    server = StatusServer("127.0.0.1:0", db.reader, settings, db.now).start()
    try:
        result = chromium_dom(
            server.url.replace("http://", f"http://proofwatch:{STATUS_TOKEN}@") + "/"
        )
        refused = chromium_dom(f"{server.url}/")
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "<title>proofwatch status</title>" in dom
    assert "Acme &lt;Research&gt; &amp; Co" in dom
    assert ">INV-1<" in dom
    assert "degraded" in dom  # the flaky chain's state is shown
    assert "INV-1" not in refused.stdout  # headless Chromium ends at the 401 challenge:
    assert "ERR_INVALID_AUTH_CREDENTIALS" in refused.stderr or "token required" in refused.stdout


# --- the real daemon, as a process -----------------------------------------------------------


@pytest.mark.anvil
def test_second_daemon_on_the_same_database_is_refused(
    anvil: AnvilNode,
    tmp_path: Path,
    dbs: Callable[[Path], Db],
    daemons: Callable[[Path], DaemonProcess],
) -> None:
    """A second `proofwatch run` on the same database exits 1 with one line naming the
    running daemon's pid; the first keeps running."""
    assert anvil.url is not None
    config = write_config(tmp_path, {"local": anvil.url})
    db = dbs(config)
    first = daemons(config)
    wait_for_heartbeat(db, first)
    second = cli(config, "run")
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("proofwatch: error: another proofwatch daemon")
    assert f"pid {first.pid}" in lines[0]
    assert first.alive()
    assert first.stop() == 0


@pytest.mark.anvil
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_zero_and_marks_the_daemon_stopped(
    sig: signal.Signals,
    anvil: AnvilNode,
    tmp_path: Path,
    dbs: Callable[[Path], Db],
    daemons: Callable[[Path], DaemonProcess],
) -> None:
    """SIGTERM or SIGINT stops the daemon with exit code 0, the row records the stop, and
    status then reports it not running."""
    assert anvil.url is not None
    config = write_config(tmp_path, {"local": anvil.url})
    db = dbs(config)
    daemon = daemons(config)
    wait_for_heartbeat(db, daemon)
    wait_until(lambda: db.chain("local")["last_ok_at"], "a successful poll")
    assert daemon.stop(sig) == 0, daemon.stderr
    row = db.daemon_row()
    assert row is not None and row.pid == daemon.pid and row.stopped_at is not None
    events = [json.loads(line)["event"] for line in daemon.stderr.splitlines()]
    assert "daemon.stopping" in events
    assert events[-1] == "daemon.stopped"
    status = cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["daemon"]["running"] is False


@pytest.mark.anvil
@pytest.mark.slow
def test_stalled_rpc_shows_in_status_views_healthz_and_metrics_then_recovers(
    anvil: AnvilNode,
    tmp_path: Path,
    dbs: Callable[[Path], Db],
    daemons: Callable[[Path], DaemonProcess],
) -> None:
    """With one chain's RPC down, status JSON, v_status, /healthz and /metrics show it failing
    (error redacted), watcher.degraded is emitted once and the other chain keeps polling;
    when the RPC returns, watcher.recovered is emitted once and everything is green again."""
    assert anvil.url is not None
    port = free_port()
    with RpcProxy(anvil.url) as proxy:
        config = write_config(
            tmp_path,
            {"steady": anvil.url, "flaky": f"{proxy.url}/v2/{SECRET}"},
            listen=f"127.0.0.1:{port}",
            stale_seconds=5,
            token=STATUS_TOKEN,
        )
        db = dbs(config)
        daemon = daemons(config)
        wait_for_heartbeat(db, daemon)
        wait_until(
            lambda: all(c["last_ok_at"] for c in db.document()["chains"]), "both chains to poll"
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(f"{base}/healthz")[0] == 200, "/healthz 200")

        proxy.down = True
        wait_until(lambda: db.chain("flaky")["degraded"], "flaky to be degraded")
        status = cli(config, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert SECRET not in status.stdout
        chains = {c["name"]: c for c in json.loads(status.stdout)["chains"]}
        assert chains["flaky"]["rpc_ok"] is False
        assert chains["flaky"]["degraded"] is True
        assert "<redacted>" in chains["flaky"]["last_error"]
        assert chains["steady"]["rpc_ok"] is True
        db_path = tmp_path / "watcher.db"
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            view = conn.execute(
                "SELECT rpc_ok, degraded, last_error FROM v_status WHERE name = 'flaky'"
            ).fetchone()
        assert view[0] == 0 and view[1] == 1 and SECRET not in view[2]

        def healthz_names_flaky() -> bool:
            code, body = http_get(f"{base}/healthz")
            return code == 503 and any("flaky" in r for r in json.loads(body)["reasons"])

        wait_until(healthz_names_flaky, "/healthz 503 naming flaky")
        assert http_get(f"{base}/metrics")[0] == 401  # the token from .env guards it
        samples = metric_samples(http_get(f"{base}/metrics", bearer(STATUS_TOKEN))[1].decode())
        assert samples[("proofwatch_chain_degraded", (("chain", "flaky"),))] == 1
        assert samples[("proofwatch_chain_consecutive_poll_failures", (("chain", "flaky"),))] >= 3

        # More failed polls, and steady polls on: still exactly one degraded event.
        polled = db.chain("flaky")["last_poll_at"]
        steady_ok = db.chain("steady")["last_ok_at"]
        wait_until(lambda: db.chain("flaky")["last_poll_at"] != polled, "another failed poll")
        wait_until(lambda: db.chain("steady")["last_ok_at"] != steady_ok, "steady to poll on")
        assert len(db.events("watcher.degraded", "flaky")) == 1
        assert db.events("watcher.recovered") == []

        proxy.down = False
        wait_until(lambda: db.events("watcher.recovered", "flaky"), "watcher.recovered")
        wait_until(lambda: http_get(f"{base}/healthz")[0] == 200, "/healthz 200 again")
        flaky = db.chain("flaky")
        assert (flaky["rpc_ok"], flaky["degraded"], flaky["last_error"]) == (True, False, None)
        ok_at = flaky["last_ok_at"]
        wait_until(lambda: db.chain("flaky")["last_ok_at"] != ok_at, "another good poll")
        assert len(db.events("watcher.recovered", "flaky")) == 1
        assert len(db.events("watcher.degraded", "flaky")) == 1
        assert db.events("watcher.degraded", "steady") == []
        assert daemon.stop() == 0
    logs = daemon.stderr
    assert SECRET not in logs
    assert all(json.loads(line)["event"] for line in logs.splitlines())  # JSON when not a TTY


# --- operator commands -----------------------------------------------------------------------


def test_status_check_exits_one_with_the_reasons_when_no_daemon_runs(
    tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """`status --json --check` prints the document and exits 1 with one line of reasons."""
    config = write_config(tmp_path, {"local": dead_url()})
    dbs(config)
    result = cli(config, "status", "--json", "--check")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["health"]["ok"] is False
    assert document["daemon"]["running"] is False
    assert result.stderr.strip() == (
        "proofwatch: error: unhealthy: daemon has never run on this database; "
        "chain local has not polled successfully yet"
    )


def test_notify_retry_requeues_a_dead_delivery_once(
    tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """`notify retry EVT` puts a dead delivery back to pending (exit 0); a second retry is
    refused (exit 3) and an unknown event is bad input (exit 2)."""
    config = write_config(tmp_path, {"local": dead_url()})
    db = dbs(config)
    with transaction(db.engine) as session:
        event_id = emit(session, "cycle.opened", {"cycle": "CYC-1"}, dedupe_key="c1", now=T0)
        session.add(
            Delivery(
                event_id=event_id,
                channel="webhook:0",
                status="dead",
                attempts=9,
                next_attempt_at=T0,
            )
        )
    first = cli(config, "notify", "retry", event_id)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"{event_id}: 1 dead delivery re-queued"
    with transaction(db.reader) as session:
        delivery = session.exec(select(Delivery).where(Delivery.event_id == event_id)).one()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert cli(config, "notify", "retry", event_id).returncode == 3
    assert cli(config, "notify", "retry", "EVT-0000").returncode == 2
    with transaction(db.reader) as session:
        assert session.exec(select(OutboxEvent)).all()[0].id == event_id
