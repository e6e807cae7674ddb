"""The status document (CONTRACT.md "Status") built from a DB-API ``Reader``: the one build of
it, for ``proofwatch status`` without SQLAlchemy (start-up, issue 11) and, through
``watcher.runtime.status`` on an engine's connection, for the daemon's status server.

Plain SELECTs on the ``v_status`` view and the tables behind it, with the rules of
``status_doc`` and the domain's tag arithmetic applied to the rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from watcher.domain import billing
from watcher.domain.billing import InvoiceStatus, RetainerStatus
from watcher.domain.money import format_amount
from watcher.runtime.status_doc import RUNNING_WITHIN, Row, chain_entry, is_running
from watcher.store.dbapi import Reader, utc

if TYPE_CHECKING:
    from watcher.settings import Settings


def iso(value: datetime | None) -> str | None:
    """As ``watcher.store.outbox.iso``: ISO 8601 UTC with a Z, to the second."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def daemon_status(reader: Reader, now: datetime) -> Row:
    """``{running, pid, last_heartbeat_at}`` plus host, started_at and stopped_at."""
    found = reader.rows(
        "SELECT pid, host, started_at, last_heartbeat_at, stopped_at FROM daemon WHERE id = 1"
    )
    if not found:
        return {
            "running": False,
            "pid": None,
            "last_heartbeat_at": None,
            "host": None,
            "started_at": None,
            "stopped_at": None,
        }
    row = found[0]
    beat, stopped = utc(row["last_heartbeat_at"]), utc(row["stopped_at"])
    return {
        "running": is_running(row["pid"], stopped, beat, now),
        "pid": row["pid"],
        "last_heartbeat_at": iso(beat),
        "host": row["host"],
        "started_at": iso(utc(row["started_at"])),
        "stopped_at": iso(stopped),
    }


def daemons_status(reader: Reader, settings: Settings, now: datetime) -> list[Row]:
    """Every daemon with a row on this database, newest first: ``{host, pid, started_at,
    last_heartbeat_at, stopped_at, running, chains}``. ``chains``: those it holds a lease on
    (a shared database, by the wall clock), or every configured chain for a running daemon
    alone on SQLite."""
    wall = datetime.now(UTC)  # leases expire by the wall clock, whatever WATCHER_NOW says
    daemons = reader.rows(
        "SELECT holder, host, pid, started_at, last_heartbeat_at, stopped_at FROM daemons "
        "ORDER BY started_at DESC"
    )
    held: dict[str, list[str]] = {}
    for lease in reader.rows("SELECT chain, holder, expires_at FROM chain_leases"):
        expires = utc(lease["expires_at"])
        if expires is not None and expires > wall and lease["holder"] is not None:
            held.setdefault(lease["holder"], []).append(lease["chain"])
    alone = reader.dialect == "sqlite"
    out = []
    for d in daemons:
        beat, stopped = utc(d["last_heartbeat_at"]), utc(d["stopped_at"])
        running = stopped is None and beat is not None and now - beat <= RUNNING_WITHIN
        mine = held.get(d["holder"], [])
        chains = [c.name for c in settings.chains] if alone and running else mine
        out.append(
            {
                "host": d["host"],
                "pid": d["pid"],
                "started_at": iso(utc(d["started_at"])),
                "last_heartbeat_at": iso(beat),
                "stopped_at": iso(stopped),
                "running": running,
                "chains": sorted(chains),
            }
        )
    return out


def last_resumes(reader: Reader) -> dict[str, Row]:
    """Per chain, the latest ``chain resume`` (as ``chain resume --json`` printed it)."""
    out: dict[str, Row] = {}
    sql = "SELECT chain, event_id, resumed_by, resumed_at, cursor FROM chain_resumes ORDER BY id"
    for r in reader.rows(sql):
        out[r["chain"]] = {
            "chain": r["chain"],
            "event_id": r["event_id"],
            "by": r["resumed_by"],
            "at": iso(utc(r["resumed_at"])),
            "cursor": r["cursor"],
        }
    return out


def chain_statuses(reader: Reader, settings: Settings) -> list[Row]:
    """One entry per configured chain (in config order; never-polled chains have nulls),
    then any chain the database knows that is no longer configured (``configured: false``)."""
    by_name = {r["name"]: r for r in reader.rows("SELECT * FROM v_status ORDER BY name")}
    resumes = last_resumes(reader)
    secrets = [*settings.secrets, *(u for c in settings.chains for u in c.rpc_urls)]
    out = []
    for chain in settings.chains:
        entry = chain_entry(chain.name, chain.chain_id, by_name.pop(chain.name, None), secrets)
        out.append({**entry, "last_resume": resumes.get(chain.name), "configured": True})
    for name, row in by_name.items():
        entry = chain_entry(name, row["chain_id"], row, secrets)
        out.append({**entry, "last_resume": resumes.get(name), "configured": False})
    return out


def invoice_counts(reader: Reader) -> dict[str, int]:
    """Invoices by status; every status is present (0 when none)."""
    counts = {status.value: 0 for status in InvoiceStatus}
    for row in reader.rows("SELECT status, count(*) AS n FROM invoices GROUP BY status"):
        counts[row["status"]] = int(row["n"])
    return counts


def outbox_counts(reader: Reader) -> dict[str, int]:
    """Deliveries waiting (events not yet fanned out included) and dead-lettered."""
    counts = {"pending": 0, "dead": 0}
    sql = "SELECT status, count(*) AS n FROM deliveries WHERE status IN ('pending', 'dead') "
    for row in reader.rows(sql + "GROUP BY status"):
        counts[row["status"]] = int(row["n"])
    for row in reader.rows("SELECT count(*) AS n FROM outbox WHERE NOT fanned_out"):
        counts["pending"] += int(row["n"])
    return counts


def disabled_channels(reader: Reader) -> list[Row]:
    """As ``watcher.notify.disabled.disabled_channels``, in the order they were disabled."""
    waiting = {
        r["channel"]: int(r["n"])
        for r in reader.rows(
            "SELECT channel, count(*) AS n FROM deliveries WHERE status = 'pending' "
            "GROUP BY channel"
        )
    }
    sql = "SELECT channel, disabled_at, reason, event_id FROM disabled_channels "
    sql += "ORDER BY disabled_at"
    return [
        {
            "channel": r["channel"],
            "disabled_at": iso(utc(r["disabled_at"])),
            "reason": r["reason"],
            "event_id": r["event_id"],
            "pending": waiting.get(r["channel"], 0),
        }
        for r in reader.rows(sql)
    ]


def _required(value: datetime | None) -> datetime:
    if value is None:  # a NOT NULL column: the SQLAlchemy path would fail on it too
        raise ValueError("a NOT NULL timestamp is NULL")
    return value


_TagKey = tuple[str, int, str, str, int]  # chain, chain_id, asset, pay_to, decimals


def tag_usage(reader: Reader, settings: Settings, now: datetime) -> list[Row]:
    """Unique-amount tags per chain, asset and price: ``[{chain, chain_id, asset, price,
    price_base_units, used, left}]``, for every price a live retainer bills monthly or an
    invoice still holding its amount asks for, so an operator sees exhaustion coming."""
    since = now - timedelta(days=settings.billing.tag_cooling_days)
    unsettled = {s.value for s in billing.UNSETTLED}
    held: dict[_TagKey, list[billing.IssuedAmount]] = {}
    prices: dict[_TagKey, set[int]] = {}
    for r in reader.rows(
        "SELECT chain, chain_id, asset, pay_to, decimals, monthly FROM retainers "
        "WHERE status != :ended",
        {"ended": RetainerStatus.ENDED.value},
    ):
        k = (r["chain"], r["chain_id"], r["asset"], r["pay_to"], r["decimals"])
        prices.setdefault(k, set()).add(int(r["monthly"]))
    for i in reader.rows(
        "SELECT chain, chain_id, asset, pay_to, decimals, amount, price, status, issued_at, "
        "paid_at FROM invoices"
    ):
        issued_at, paid_at = _required(utc(i["issued_at"])), utc(i["paid_at"])
        recent = issued_at >= since or (paid_at is not None and paid_at >= since)
        if i["status"] not in unsettled and not recent:
            continue
        k = (i["chain"], i["chain_id"], i["asset"], i["pay_to"], i["decimals"])
        amount = int(i["amount"])
        issued = billing.IssuedAmount(amount, InvoiceStatus(i["status"]), issued_at, paid_at)
        held.setdefault(k, []).append(issued)
        prices.setdefault(k, set()).add(int(i["price"]))
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


def status_document(reader: Reader, settings: Settings, now: datetime) -> dict[str, Any]:
    """The ``proofwatch status --json`` document, read at ``now``."""
    return {
        "generated_at": iso(now),
        "daemon": daemon_status(reader, now),
        "daemons": daemons_status(reader, settings, now),
        "chains": chain_statuses(reader, settings),
        "invoices": invoice_counts(reader),
        "outbox": outbox_counts(reader),
        "disabled_channels": disabled_channels(reader),
        "tags": tag_usage(reader, settings, now),
    }
