"""Delivery throughput: one daemon against three sharing one PostgreSQL outbox.

Run: ``.venv/bin/python bench/delivery.py [--events 600] [--latency 0.02]``. Needs
PostgreSQL's server binaries (``make pg``). See bench/README.md ("Delivery throughput").

For each contender a fresh database gets ``--events`` outbox events (``cycle.opened``) and
one signed webhook channel to a real local receiver that takes ``--latency`` seconds to
answer each request (a receiver across a network). Then N worker processes, each running the
daemon's delivery job (``watcher.notify.outbox.deliver_due``, as ``proofwatch run`` does every
few seconds, here back to back), start together; the clock stops when every delivery is
``delivered``. Contenders: SQLite with one daemon (the embedded default, for reference),
PostgreSQL with one daemon, PostgreSQL with three (claims by ``FOR UPDATE SKIP LOCKED``).

Checks (exit 1 if one fails): every event accepted by the receiver exactly once, and never
two requests of one event in flight at once.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy.engine import Engine  # noqa: E402

from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.receivers import WebhookReceiver  # noqa: E402
from watcher.logs import configure  # noqa: E402
from watcher.notify.outbox import deliver_due  # noqa: E402
from watcher.settings import NotifySettings, Settings, WebhookSettings  # noqa: E402
from watcher.store.db import make_engine, migrate, transaction  # noqa: E402
from watcher.store.outbox import emit_many  # noqa: E402

SECRET = "bench-delivery-secret-0123456789"


def now() -> datetime:
    return datetime.now(UTC)


def settings_for(database_url: str, hook_url: str) -> Settings:
    return Settings(
        config_path=REPO / "bench" / "delivery.toml",  # never read
        database_url=database_url,
        chains=(),
        notify=NotifySettings(
            webhooks=(WebhookSettings(url=hook_url, secret=SECRET, name="crm"),), timeout=10.0
        ),
        secrets=(SECRET,),
    )


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM deliveries WHERE status != 'delivered')"
            " + (SELECT count(*) FROM outbox WHERE NOT fanned_out)"
        ).one()
    return int(row[0])


def worker(database_url: str, hook_url: str, ready: Event, go: Event) -> None:
    """One daemon's delivery job, back to back, until nothing is left to deliver."""
    configure(level=logging.WARNING, tty=False)
    engine = make_engine(database_url)
    settings = settings_for(database_url, hook_url)
    ready.set()
    go.wait()
    while True:
        report = deliver_due(engine, settings, now)
        if report.delivered == 0 and report.events_fanned_out == 0 and pending(engine) == 0:
            break
    engine.dispose()


@dataclass
class Result:
    name: str
    daemons: int
    seconds: float
    accepted: int
    distinct: int
    overlapping: int  # events with two requests in flight at once

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds


def run(name: str, database_url: str, daemons: int, events: int, latency: float) -> Result:
    engine = make_engine(database_url)
    migrate(engine)
    with transaction(engine) as session:
        emit_many(
            session,
            [("cycle.opened", {"n": i}, f"bench.delivery:{i}") for i in range(events)],
            now=now(),
        )
    ctx = multiprocessing.get_context("spawn")
    with WebhookReceiver(SECRET, latency=latency) as receiver:
        go = ctx.Event()
        readies = [ctx.Event() for _ in range(daemons)]
        procs = [
            ctx.Process(target=worker, args=(database_url, receiver.url(), ready, go))
            for ready in readies
        ]
        for proc in procs:
            proc.start()
        for ready in readies:
            ready.wait(60)
        began = time.monotonic()
        go.set()
        for proc in procs:
            proc.join(600)
        seconds = time.monotonic() - began
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise SystemExit(f"{name}: a worker exited with {failed}")
        accepted = [r.event_id for r in receiver.accepted()]
        overlapping = sum(1 for n in receiver.max_in_flight().values() if n > 1)
    left = pending(engine)
    engine.dispose()
    if left:
        raise SystemExit(f"{name}: {left} deliveries left pending")
    return Result(name, daemons, seconds, len(accepted), len(set(accepted)), overlapping)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.02, help="receiver seconds/request")
    args = parser.parse_args(argv)
    print(
        f"proofwatch delivery throughput  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"(Python {platform.python_version()}, {multiprocessing.cpu_count()} CPUs)\n"
        f"{args.events} events, one webhook channel, receiver latency {args.latency * 1000:g} ms",
        flush=True,
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pw-delivery-") as tmp, PostgresServer() as server:
        contenders = [
            ("SQLite", f"sqlite:///{Path(tmp) / 'watcher.db'}", 1),
            ("PostgreSQL", server.url(server.create_database()), 1),
            ("PostgreSQL", server.url(server.create_database()), 3),
        ]
        for name, url, daemons in contenders:
            results.append(run(name, url, daemons, args.events, args.latency))
    print(f"{'store':<12}{'daemons':>8}{'seconds':>10}{'events/s':>10}{'sent':>7}{'twice':>7}")
    for r in results:
        print(
            f"{r.name:<12}{r.daemons:>8}{r.seconds:>10.2f}{r.per_second:>10.1f}"
            f"{r.accepted:>7}{r.accepted - r.distinct + r.overlapping:>7}"
        )
    one = next(r for r in results if r.name == "PostgreSQL" and r.daemons == 1)
    three = next(r for r in results if r.name == "PostgreSQL" and r.daemons == 3)
    print(f"PostgreSQL, three daemons / one: {three.per_second / one.per_second:.2f}x")
    bad = [r for r in results if r.accepted != args.events or r.distinct != args.events
           or r.overlapping]  # fmt: skip
    for r in bad:
        print(f"FAIL {r.name} x{r.daemons}: {r.accepted} sent for {r.distinct} events, "
              f"{r.overlapping} sent twice at once")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
