"""The parts of the status document that read no database: the daemon's liveness rule,
one chain's entry from its ``v_status`` row, and the health verdict behind ``/healthz`` and
``status --check``.

Shared by the SQLAlchemy reader (``watcher.runtime.status``: the daemon's status server) and
the DB-API reader of the ``status`` command (``watcher.runtime.status_read``), which must not
import SQLAlchemy (start-up, issue 11).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from watcher.redact import redact_text

if TYPE_CHECKING:
    from watcher.settings import Settings

HEARTBEAT_SECONDS = 5.0
#: The daemon counts as running while its last heartbeat is at most this old.
RUNNING_WITHIN = timedelta(seconds=3 * HEARTBEAT_SECONDS)

Row = dict[str, Any]


def parse_ts(value: str | None) -> datetime | None:
    """An ISO 8601 UTC timestamp from a view (``2026-11-21T15:21:25Z``), or None."""
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def is_running(
    pid: int | None, stopped_at: datetime | None, beat: datetime | None, now: datetime
) -> bool:
    """A daemon row is running: it has a pid, has not stopped, and beat within RUNNING_WITHIN."""
    return (
        pid is not None and stopped_at is None and beat is not None and now - beat <= RUNNING_WITHIN
    )


def chain_entry(name: str, chain_id: int, row: Row | None, secrets: Sequence[str]) -> Row:
    row = row or {}
    error = row.get("last_error")
    return {
        "name": name,
        "chain_id": chain_id,
        "head": row.get("head"),
        "final_block": row.get("final_block"),
        "cursor": row.get("cursor"),
        "cursor_time": row.get("cursor_time"),  # the cursor block's timestamp: deadlines
        "lag_blocks": row.get("lag_blocks"),
        "last_poll_at": row.get("last_poll_at"),
        "rpc_ok": None if row.get("rpc_ok") is None else bool(row["rpc_ok"]),
        "last_ok_at": row.get("last_ok_at"),
        "degraded": bool(row.get("degraded")),
        "last_error": None if error is None else redact_text(error, secrets),
        "halted_by": row.get("halted_by"),  # the finality violation that stopped it, if any
    }


def health_problems(document: dict[str, Any], settings: Settings, now: datetime) -> list[str]:
    """Why the service is unhealthy, one sentence each; empty when healthy.

    Healthy means: the daemon's heartbeat is fresh, and every configured chain polled
    successfully (all the way to the head) within ``[status] stale_seconds`` with its cursor
    at most ``max_lag_blocks`` behind the head it last saw.
    """
    problems = []
    daemon = document["daemon"]
    if not daemon["running"]:
        if daemon["stopped_at"] is not None:
            problems.append(f"daemon stopped at {daemon['stopped_at']}")
        elif daemon["last_heartbeat_at"] is None:
            problems.append("daemon has never run on this database")
        else:
            problems.append(f"daemon heartbeat is stale (last at {daemon['last_heartbeat_at']})")
    stale = timedelta(seconds=settings.status.stale_seconds)
    for chain in document["chains"]:
        if not chain.get("configured", True):
            continue
        last_ok = parse_ts(chain["last_ok_at"])
        if last_ok is None:
            problems.append(f"chain {chain['name']} has not polled successfully yet")
        elif now - last_ok > stale:
            age = int((now - last_ok).total_seconds())
            why = f": {chain['last_error']}" if chain["last_error"] else ""
            problems.append(
                f"chain {chain['name']} last polled successfully {age} s ago "
                f"(stale after {settings.status.stale_seconds:g} s){why}"
            )
        if chain.get("halted_by"):
            problems.append(
                f"chain {chain['name']} is halted by finality violation {chain['halted_by']} "
                f"(proofwatch chain resume {chain['name']} --ack {chain['halted_by']})"
            )
        problems += _lag_problems(chain, settings)
    return problems


def _lag_problems(chain: Row, settings: Settings) -> list[str]:
    """The chain's cursor stuck behind the head beyond its ``max_lag_blocks``."""
    lag = chain.get("lag_blocks")
    limit = next((c.max_lag_blocks for c in settings.chains if c.name == chain["name"]), None)
    if lag is None or limit is None or lag <= limit:
        return []
    return [
        f"chain {chain['name']} cursor {chain['cursor']} is {lag} blocks behind the head "
        f"{chain['head']} (max_lag_blocks {limit})"
    ]
