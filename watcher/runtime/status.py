"""The status document (CONTRACT.md "Status") and the health verdict behind ``/healthz``.

Chains are read from the ``v_status`` view, so ``proofwatch status --json`` and an operator's
``SELECT * FROM v_status`` can never disagree. The daemon row and the outbox backlog are global:
``v_status`` repeats them on every chain row and has no row at all before a chain is first
polled, so they are read from their own tables with the view's definitions. Use a read-only
engine: with SQLite in WAL mode a reader never waits for the daemon's writes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, or_, select

from watcher.domain import billing
from watcher.domain.billing import InvoiceStatus, RetainerStatus
from watcher.domain.money import format_amount
from watcher.ledger.halts import last_resumes
from watcher.notify.disabled import disabled_channels
from watcher.runtime.status_doc import (
    HEARTBEAT_SECONDS,
    RUNNING_WITHIN,
    Row,
    chain_entry,
    health_problems,
    is_running,
    parse_ts,
)
from watcher.settings import Settings
from watcher.store.db import read_session, sqlite_path
from watcher.store.outbox import iso
from watcher.store.tables import ChainLease, Daemon, DaemonInstance, Invoice, Retainer

__all__ = [
    "HEARTBEAT_SECONDS",
    "RUNNING_WITHIN",
    "Row",
    "health_problems",
    "parse_ts",
    "rows",
    "status_document",
]


def rows(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
    """Every row of a read-only query, as plain dicts."""
    with engine.connect() as conn:
        return [dict(m) for m in conn.execute(sa.text(sql), params or {}).mappings()]


def daemon_status(engine: Engine, now: datetime) -> Row:
    """``{running, pid, last_heartbeat_at}`` plus host, started_at and stopped_at."""
    with read_session(engine) as session:
        row = session.get(Daemon, 1)
    if row is None:
        return {
            "running": False,
            "pid": None,
            "last_heartbeat_at": None,
            "host": None,
            "started_at": None,
            "stopped_at": None,
        }
    beat = row.last_heartbeat_at
    running = is_running(row.pid, row.stopped_at, beat, now)
    return {
        "running": running,
        "pid": row.pid,
        "last_heartbeat_at": iso(beat),
        "host": row.host,
        "started_at": iso(row.started_at),
        "stopped_at": iso(row.stopped_at),
    }


def daemons_status(engine: Engine, settings: Settings, now: datetime) -> list[Row]:
    """Every daemon with a row on this database, newest first: ``{host, pid, started_at,
    last_heartbeat_at, stopped_at, running, chains}``. ``chains``: those it holds a lease on
    (a shared database, by the wall clock), or every configured chain for a running daemon
    alone on SQLite."""
    wall = datetime.now(UTC)
    with read_session(engine) as session:
        daemons = session.exec(
            select(DaemonInstance).order_by(col(DaemonInstance.started_at).desc())
        ).all()
        leases = session.exec(select(ChainLease).where(col(ChainLease.expires_at) > wall)).all()
    held: dict[str, list[str]] = {}
    for lease in leases:
        if lease.holder is not None:
            held.setdefault(lease.holder, []).append(lease.chain)
    alone = sqlite_path(settings.database_url) is not None
    out = []
    for d in daemons:
        running = d.stopped_at is None and now - d.last_heartbeat_at <= RUNNING_WITHIN
        chains = [c.name for c in settings.chains] if alone and running else held.get(d.holder, [])
        out.append(
            {
                "host": d.host,
                "pid": d.pid,
                "started_at": iso(d.started_at),
                "last_heartbeat_at": iso(d.last_heartbeat_at),
                "stopped_at": iso(d.stopped_at),
                "running": running,
                "chains": sorted(chains),
            }
        )
    return out


def chain_statuses(engine: Engine, settings: Settings) -> list[Row]:
    """One entry per configured chain (in config order; never-polled chains have nulls),
    then any chain the database knows that is no longer configured (``configured: false``)."""
    by_name = {r["name"]: r for r in rows(engine, "SELECT * FROM v_status ORDER BY name")}
    resumes = last_resumes(engine)
    secrets = [*settings.secrets, *(u for c in settings.chains for u in c.rpc_urls)]
    out = []
    for chain in settings.chains:
        entry = chain_entry(chain.name, chain.chain_id, by_name.pop(chain.name, None), secrets)
        out.append({**entry, "last_resume": resumes.get(chain.name), "configured": True})
    for name, row in by_name.items():
        entry = chain_entry(name, row["chain_id"], row, secrets)
        out.append({**entry, "last_resume": resumes.get(name), "configured": False})
    return out


def invoice_counts(engine: Engine) -> dict[str, int]:
    """Invoices by status; every status is present (0 when none)."""
    counts = {status.value: 0 for status in InvoiceStatus}
    for row in rows(engine, "SELECT status, count(*) AS n FROM invoices GROUP BY status"):
        counts[row["status"]] = int(row["n"])
    return counts


def outbox_counts(engine: Engine) -> dict[str, int]:
    """Deliveries waiting (``pending``, including events not yet handed to their channels)
    and dead-lettered (``dead``), as in ``v_status``."""
    counts = {"pending": 0, "dead": 0}
    sql = "SELECT status, count(*) AS n FROM deliveries WHERE status IN ('pending', 'dead') "
    for row in rows(engine, sql + "GROUP BY status"):
        counts[row["status"]] = int(row["n"])
    for row in rows(engine, "SELECT count(*) AS n FROM outbox WHERE NOT fanned_out"):
        counts["pending"] += int(row["n"])
    return counts


_TagKey = tuple[str, int, str, str, int]  # chain, chain_id, asset, pay_to, decimals


def tag_usage(engine: Engine, settings: Settings, now: datetime) -> list[Row]:
    """Unique-amount tags per chain, asset and price: ``[{chain, chain_id, asset, price,
    price_base_units, used, left}]``, for every price a live retainer bills monthly or an
    invoice still holding its amount asks for, so an operator sees exhaustion coming."""
    since = now - timedelta(days=settings.billing.tag_cooling_days)
    held: dict[_TagKey, list[billing.IssuedAmount]] = {}
    prices: dict[_TagKey, set[int]] = {}
    with read_session(engine) as session:
        for r in session.exec(
            select(Retainer).where(Retainer.status != RetainerStatus.ENDED.value)
        ):
            k = (r.chain, r.chain_id, r.asset, r.pay_to, r.decimals)
            prices.setdefault(k, set()).add(r.monthly)
        for i in session.exec(
            select(Invoice).where(
                or_(
                    col(Invoice.status).in_([s.value for s in billing.UNSETTLED]),
                    col(Invoice.issued_at) >= since,
                    col(Invoice.paid_at) >= since,
                )
            )
        ):
            k = (i.chain, i.chain_id, i.asset, i.pay_to, i.decimals)
            issued = billing.IssuedAmount(i.amount, InvoiceStatus(i.status), i.issued_at, i.paid_at)
            held.setdefault(k, []).append(issued)
            prices.setdefault(k, set()).add(i.price)
    out = []
    for k in sorted(prices):
        chain, chain_id, asset, _pay_to, decimals = k
        amounts = billing.held_amounts(held.get(k, []), now, settings.billing.tag_cooling_days)
        for price in sorted(prices[k]):
            space = billing.tag_space(price, amounts, decimals)
            out.append(
                {
                    "chain": chain,
                    "chain_id": chain_id,
                    "asset": asset,
                    "price": format_amount(price, decimals),
                    "price_base_units": str(price),
                    "used": space.used,
                    "left": space.left,
                }
            )
    return out


def status_document(engine: Engine, settings: Settings, now: datetime) -> dict[str, Any]:
    """The ``proofwatch status --json`` document (CONTRACT.md), read at ``now``.

    Beyond the contract's fields: ``disabled_channels``, each notification channel disabled by
    a 410 Gone answer (``channel, disabled_at, reason, event_id, pending``), and ``daemons``,
    every daemon on the database with the chains it holds (``daemons_status``); ``daemon`` is
    the one that beat last.
    """
    return {
        "generated_at": iso(now),
        "daemon": daemon_status(engine, now),
        "daemons": daemons_status(engine, settings, now),
        "chains": chain_statuses(engine, settings),
        "invoices": invoice_counts(engine),
        "outbox": outbox_counts(engine),
        "disabled_channels": disabled_channels(engine),
        "tags": tag_usage(engine, settings, now),
    }
