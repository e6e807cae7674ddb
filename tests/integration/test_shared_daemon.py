"""Two in-process daemons sharing one PostgreSQL database: the chains are split between them,
no chain is polled by both at once, and when one stops the other takes its chains over,
announcing the recovery of an outage the first one had announced."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.integration.test_daemon import (
    FAST,
    DaemonThread,
    ScriptedRounds,
    dead_url,
    open_db,
    running,  # noqa: F401  (the fixture)  # pylint: disable=unused-import
    wait_until,
)
from watcher.runtime.daemon import Daemon
from watcher.settings import ChainSettings

CHAINS = ("north", "south")


def write_config(folder: Path, database_url: str) -> Path:
    env = [f"DATABASE_URL={database_url}"]
    blocks = []
    wallets = [
        "0xB3e9568A9cbB624403743340358c85CCce130893",
        "0x1111111111111111111111111111111111111111",
    ]
    for name, wallet in zip(CHAINS, wallets, strict=True):
        env.append(f"{name.upper()}_RPC_URL={dead_url()}")
        blocks.append(
            f'[[chains]]\nname = "{name}"\nchain_id = 31337\n'
            f'rpc_urls = ["${{{name.upper()}_RPC_URL}}"]\n'
            f'receiving_address = "{wallet}"\nfinality = "finalized"\npoll_seconds = 0.1\n'
            "idle_poll_seconds = 0.1\nstart_block = 0\n"
        )
    config = folder / "watcher.toml"
    config.write_text(
        '[database]\nurl = "${DATABASE_URL}"\n\n[daemon]\nlease_seconds = 10\n\n'
        + "\n".join(blocks)
    )
    (folder / ".env").write_text("\n".join(env) + "\n")
    return config


@dataclass
class Polls:
    """Every poll of both daemons: who polled which chain, and any two at once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)  # (daemon, chain)
    overlaps: int = 0


@dataclass
class Tracked(ScriptedRounds):
    name: str = ""
    shared: Polls = field(default_factory=Polls)

    def scan(self, chain: ChainSettings) -> object:
        with self.shared.lock:
            self.shared.in_flight[chain.name] = self.shared.in_flight.get(chain.name, 0) + 1
            self.shared.overlaps += self.shared.in_flight[chain.name] > 1
            self.shared.log.append((self.name, chain.name))
        try:
            return super().scan(chain)
        finally:
            with self.shared.lock:
                self.shared.in_flight[chain.name] -= 1


def events(engine: Engine, type_: str, chain: str) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT body FROM outbox WHERE type = :t ORDER BY seq"), {"t": type_}
        ).all()
    bodies = [json.loads(r[0]) for r in rows]
    return [b for b in bodies if b["data"].get("chain") == chain]


def test_two_daemons_split_the_chains_and_hand_them_over(
    tmp_path: Path,
    pg_url: str,
    running: Callable[[Daemon], DaemonThread],  # noqa: F811
) -> None:
    """A daemon alone polls both chains; a second one gets one of them; no chain is ever
    polled by both at once; when the first stops, the second polls both, and announces the
    recovery of the outage the first had announced on its chain."""
    db = open_db(write_config(tmp_path, pg_url))
    polls = Polls()
    rounds_a, rounds_b = Tracked(name="a", shared=polls), Tracked(name="b", shared=polls)
    a = Daemon(db.context(), rounds=rounds_a, intervals=FAST, install_signals=False)
    thread_a = running(a)
    assert a.leases is not None
    wait_until(lambda: a.leases is not None and a.leases.held() == list(CHAINS), "a to hold both")
    b = Daemon(db.context(), rounds=rounds_b, intervals=FAST, install_signals=False)
    running(b)
    assert b.leases is not None

    def split() -> bool:
        assert a.leases is not None and b.leases is not None
        return len(a.leases.held()) == 1 and len(b.leases.held()) == 1

    wait_until(split, "the chains to be split")
    (kept,) = a.leases.held()
    rounds_a.failing.add(kept)  # its node goes down: a announces the outage
    wait_until(lambda: events(db.engine, "watcher.degraded", kept), f"{kept} degraded")
    a.request_stop()
    thread_a.thread.join(30)
    assert thread_a.error is None
    wait_until(lambda: b.leases is not None and b.leases.held() == list(CHAINS), "b to hold both")
    wait_until(lambda: events(db.engine, "watcher.recovered", kept), f"{kept} recovered by b")
    mark = len(polls.log)
    wait_until(lambda: {c for d, c in polls.log[mark:] if d == "b"} == set(CHAINS), "b polls both")
    assert polls.overlaps == 0
    assert len(events(db.engine, "watcher.recovered", kept)) == 1
    assert all(d == "b" for d, _ in polls.log[mark:])
