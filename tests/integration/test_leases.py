"""Chain leases and the daemons' rows, on a real database: one daemon per chain at a time,
takeover after expiry, a fence that refuses the commit of a daemon that lost its lease, and
work spread over the live daemons; on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tests.support.receivers import wait_for
from watcher.runtime.heartbeat import Registry
from watcher.runtime.leases import ChainLeases, LeaseLost
from watcher.runtime.locks import DaemonLocked, LeaseCheck
from watcher.runtime.status import status_document
from watcher.settings import ChainSettings, Settings
from watcher.store.db import fenced, make_engine, migrate, read_session, transaction
from watcher.store.tables import ChainLease, ChainState
from watcher.store.tables import Daemon as DaemonRow

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
CHAINS = ("alpha", "beta", "gamma", "delta")


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database of each store (SQLite file, PostgreSQL database)."""
    engine = make_engine(db_url)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def daemon(
    engine: Engine, clock: Clock, name: str, chains: tuple[str, ...] = CHAINS
) -> ChainLeases:
    """A registered daemon ``name`` (its row written) and its leases."""
    Registry(
        engine, clock, holder=name, host="h", pid=hash(name) % 10_000, lease=LEASE, shared=True,
        clock=clock,
    ).claim()  # fmt: skip
    return ChainLeases(engine, name, chains, lease=LEASE, clock=clock)


def holders(engine: Engine) -> dict[str, str | None]:
    with read_session(engine) as session:
        return {row.chain: row.holder for row in session.exec(select(ChainLease))}


def write_state(engine: Engine, chain: str, cursor: int) -> None:
    with transaction(engine) as session:
        state = session.get(ChainState, chain) or ChainState(chain=chain, chain_id=1)
        state.cursor = cursor
        session.add(state)


def cursor_of(engine: Engine, chain: str) -> int | None:
    with read_session(engine) as session:
        state = session.get(ChainState, chain)
    return None if state is None else state.cursor


def test_a_chain_is_held_by_one_daemon_until_its_lease_expires(engine: Engine) -> None:
    """The first daemon to poll a chain holds it; another is refused while the lease runs and
    takes it over once it has expired without renewal."""
    clock = Clock()
    first, second = (
        daemon(engine, clock, "first", ("alpha",)),
        daemon(engine, clock, "second", ("alpha",)),
    )
    assert first.hold("alpha")
    assert not second.hold("alpha")
    clock.at = T0 + LEASE - timedelta(seconds=1)
    assert not second.hold("alpha")
    assert first.hold("alpha")  # renewed by the poll: another full lease from now
    clock.at += LEASE
    assert second.hold("alpha")
    assert holders(engine) == {"alpha": "second"}
    assert not first.hold("alpha")
    assert first.held() == [] and second.held() == ["alpha"]


def test_the_heartbeat_renews_every_lease_the_daemon_holds(engine: Engine) -> None:
    """``renew`` extends the daemon's unexpired leases, so a long poll keeps its chain."""
    clock = Clock()
    first, second = (
        daemon(engine, clock, "first", ("alpha",)),
        daemon(engine, clock, "second", ("alpha",)),
    )
    assert first.hold("alpha")
    for _ in range(4):
        clock.at += LEASE / 2
        assert first.renew() == ["alpha"]
        assert not second.hold("alpha")


def test_a_daemon_that_lost_its_lease_commits_nothing(engine: Engine) -> None:
    """Inside ``fenced`` by its lease, a daemon whose lease another daemon took over has its
    transaction rolled back with ``LeaseLost``; the new holder's commits go through."""
    clock = Clock()
    first, second = (
        daemon(engine, clock, "first", ("alpha",)),
        daemon(engine, clock, "second", ("alpha",)),
    )
    assert first.hold("alpha")
    with fenced(first.fence("alpha")):
        write_state(engine, "alpha", 100)
    clock.at += LEASE + timedelta(seconds=1)
    assert second.hold("alpha")
    with fenced(first.fence("alpha")), pytest.raises(LeaseLost, match="held by second"):
        write_state(engine, "alpha", 200)
    assert cursor_of(engine, "alpha") == 100
    with fenced(second.fence("alpha")):
        write_state(engine, "alpha", 150)
    assert cursor_of(engine, "alpha") == 150


def test_an_expired_lease_fences_its_own_holder_too(engine: Engine) -> None:
    """A daemon paused past its lease (not yet taken over) may not commit either."""
    clock = Clock()
    first = daemon(engine, clock, "first", ("alpha",))
    assert first.hold("alpha")
    clock.at += LEASE
    with fenced(first.fence("alpha")), pytest.raises(LeaseLost):
        write_state(engine, "alpha", 1)
    assert cursor_of(engine, "alpha") is None


def test_chains_are_spread_over_the_live_daemons(engine: Engine) -> None:
    """A daemon alone takes every chain; when two more start it gives back all but its fair
    share (4 chains, 3 daemons: 2), which the others take; each chain has one holder."""
    clock = Clock()
    first = daemon(engine, clock, "first")
    assert all(first.hold(c) for c in CHAINS)
    second, third = daemon(engine, clock, "second"), daemon(engine, clock, "third")
    for leases in (first, second, third):
        for chain in CHAINS:
            leases.hold(chain)
    held = {d.holder: d.held() for d in (first, second, third)}
    assert len(held["first"]) == 2
    assert sorted(c for chains in held.values() for c in chains) == sorted(CHAINS)
    assert all(len(chains) <= 2 for chains in held.values())


def test_a_dead_daemons_chains_go_to_the_survivors(engine: Engine) -> None:
    """When a daemon stops beating, its chains are taken by the live daemons once its
    leases have expired, still at most a fair share each."""
    clock = Clock()
    names = ("first", "second", "third")
    registries = {
        n: Registry(engine, clock, holder=n, host="h", pid=i, lease=LEASE, shared=True, clock=clock)
        for i, n in enumerate(names)
    }
    leases = {n: ChainLeases(engine, n, CHAINS, lease=LEASE, clock=clock) for n in names}
    for n in names:
        registries[n].claim()
    for n in names:
        for chain in CHAINS:
            leases[n].hold(chain)
    victim = max(names, key=lambda n: len(leases[n].held()))
    assert len(leases[victim].held()) == 2
    survivors = [n for n in names if n != victim]
    for _ in range(4):  # the survivors' heartbeats and polls go on; the victim's stopped
        clock.at += LEASE / 3
        for n in survivors:
            registries[n].beat()
            leases[n].renew()
            for chain in CHAINS:
                leases[n].hold(chain)
    assert sorted(holders(engine)) == sorted(CHAINS)
    assert victim not in holders(engine).values()
    assert all(len(leases[n].held()) == 2 for n in survivors)


def test_release_all_frees_the_chains_at_once(engine: Engine) -> None:
    """A daemon that stops cleanly gives its leases back: another takes them without waiting."""
    clock = Clock()
    first, second = (
        daemon(engine, clock, "first", ("alpha",)),
        daemon(engine, clock, "second", ("alpha",)),
    )
    assert first.hold("alpha")
    first.release_all()
    assert second.hold("alpha")


def test_status_lists_every_daemon_with_the_chains_it_holds(pg_url: str, tmp_path: Path) -> None:
    """On a shared database ``status`` lists each daemon (host, pid, heartbeat) with the
    chains it leases now; a stopped daemon is listed as not running, holding none."""
    engine = make_engine(pg_url)
    migrate(engine)
    clock = Clock()
    clock.at = datetime.now(UTC)  # the status reads lease expiry by the real clock
    try:
        names = ("first", "second", "third")
        registries = [
            Registry(engine, clock, holder=n, host=f"host-{n}", pid=100 + i, lease=LEASE,
                     shared=True, clock=clock)
            for i, n in enumerate(names)
        ]  # fmt: skip
        for registry in registries:
            registry.claim()
        leases = [ChainLeases(engine, n, CHAINS, lease=LEASE, clock=clock) for n in names]
        for lease in leases:
            for chain in CHAINS:
                lease.hold(chain)
        leases[2].release_all()
        registries[2].stopped()
        settings = Settings(config_path=tmp_path / "w.toml", database_url=pg_url, chains=())
        listed = {d["host"]: d for d in status_document(engine, settings, clock())["daemons"]}
        assert set(listed) == {"host-first", "host-second", "host-third"}
        for i, name in enumerate(names[:2]):
            entry = listed[f"host-{name}"]
            assert (entry["pid"], entry["running"]) == (100 + i, True)
            assert entry["chains"] == leases[i].held() and entry["chains"]
        assert listed["host-third"]["running"] is False
        assert listed["host-third"]["chains"] == []
        assert sorted(listed["host-first"]["chains"] + listed["host-second"]["chains"]) == sorted(
            CHAINS
        )
    finally:
        engine.dispose()


def test_tick_refuses_while_any_daemon_is_alive_on_a_shared_database(pg_url: str) -> None:
    """A one-off ``tick`` or ``scan`` on a shared database is refused, naming pid and host,
    while any daemon's row is alive; allowed once that daemon has stopped."""
    engine = make_engine(pg_url)
    migrate(engine)
    clock = Clock()
    clock.at = datetime.now(UTC)  # LeaseCheck judges expiry by the real clock
    try:
        registry = Registry(
            engine, clock, holder="beta/77/x", host="beta", pid=77, lease=LEASE, shared=True,
            clock=clock,
        )  # fmt: skip
        registry.claim()
        check = LeaseCheck(engine, clock, role="tick")
        with pytest.raises(DaemonLocked, match=r"pid 77 on beta\) holds the lease .*`tick`"):
            check.acquire()
        registry.stopped()
        check.acquire()
    finally:
        engine.dispose()


def test_alone_on_sqlite_a_daemon_holds_every_chain_and_forgets_older_rows(
    tmp_path: Path,
) -> None:
    """On SQLite (one daemon, behind its file lock) a starting daemon drops the rows of
    earlier ones, and ``status`` lists it running with every configured chain."""
    url = f"sqlite:///{tmp_path / 'watcher.db'}"
    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    try:
        for pid in (11, 22):
            Registry(
                engine, lambda: now, holder=f"h/{pid}/x", host="h", pid=pid, lease=LEASE,
                shared=False,
            ).claim()  # fmt: skip
        chain = ChainSettings(
            name="base", chain_id=8453, rpc_urls=("http://127.0.0.1:9",),
            receiving_address="0xB3e9568A9cbB624403743340358c85CCce130893",
        )  # fmt: skip
        settings = Settings(config_path=tmp_path / "w.toml", database_url=url, chains=(chain,))
        (entry,) = status_document(engine, settings, now)["daemons"]
        assert (entry["pid"], entry["running"], entry["chains"]) == (22, True, ["base"])
    finally:
        engine.dispose()


def test_daemons_starting_together_on_a_fresh_database_all_start(pg_url: str) -> None:
    """A daemon that starts while another's first write of the ``daemon`` row is not yet
    committed waits for it and then starts too, instead of failing on a duplicate key."""
    engine = make_engine(pg_url)
    migrate(engine)
    now = datetime.now(UTC)
    try:
        registry = Registry(
            engine, lambda: now, holder="b/2/x", host="b", pid=2, lease=LEASE, shared=True,
        )  # fmt: skip
        errors: list[BaseException] = []

        def claim() -> None:
            try:
                registry.claim()
            except BaseException as exc:  # reported below
                errors.append(exc)

        with engine.connect() as other:
            tx = other.begin()
            other.execute(
                sa.text(
                    "INSERT INTO daemon (id, pid, host, started_at, last_heartbeat_at) "
                    "VALUES (1, 1, 'a', :t, :t)"
                ),
                {"t": now.replace(tzinfo=None)},
            )
            thread = threading.Thread(target=claim)
            thread.start()
            wait_for(lambda: waiting_on_a_lock(engine), what="the claim to wait for the row")
            tx.commit()
        thread.join(30)
        assert errors == []
        with read_session(engine) as session:
            row = session.get(DaemonRow, 1)
        assert row is not None and (row.pid, row.host) == (2, "b")
    finally:
        engine.dispose()


def waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
        ).scalar()
    return bool(waiting)


def test_the_status_command_prints_a_line_per_daemon(pg_url: str, tmp_path: Path) -> None:
    """``proofwatch status`` on a shared database prints each daemon's host, pid, state and
    chains; ``--json`` has them under ``daemons``."""
    engine = make_engine(pg_url)
    migrate(engine)
    clock = Clock()
    clock.at = datetime.now(UTC)
    try:
        for i, name in enumerate(("alpha", "beta")):
            Registry(
                engine, clock, holder=name, host=f"{name}-host", pid=300 + i, lease=LEASE,
                shared=True, clock=clock,
            ).claim()  # fmt: skip
        for name in ("alpha", "beta"):
            leases = ChainLeases(engine, name, ("north", "south"), lease=LEASE, clock=clock)
            leases.hold("north")
            leases.hold("south")
    finally:
        engine.dispose()
    (tmp_path / ".env").write_text(f"DATABASE_URL={pg_url}\n")
    config = tmp_path / "watcher.toml"
    config.write_text(
        '[database]\nurl = "${DATABASE_URL}"\n\n'
        + "".join(
            f'[[chains]]\nname = "{name}"\nchain_id = 1\nrpc_urls = ["http://127.0.0.1:9"]\n'
            f'receiving_address = "0xB3e9568A9cbB624403743340358c85CCce130893"\n\n'
            for name in ("north", "south")
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env["COLUMNS"] = "200"

    def status(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "watcher", "status", *args, "--config", str(config)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    text = status()
    lines = {line.split()[0]: line.strip() for line in text.splitlines() if "-host pid " in line}
    assert lines["alpha-host"].startswith("alpha-host pid 300 running (last heartbeat")
    assert lines["alpha-host"].endswith("): north")  # its share: one of the two chains
    assert lines["beta-host"].startswith("beta-host pid 301 running (last heartbeat")
    assert lines["beta-host"].endswith("): south")
    listed = {d["host"]: d["chains"] for d in json.loads(status("--json"))["daemons"]}
    assert listed == {"alpha-host": ["north"], "beta-host": ["south"]}
