"""Read models: the JSON the CLI and the status page print, read from the operator views.

Reading through the views keeps one definition of every field: ``--json`` output and the SQL
views can never disagree. Each query runs on an engine or on a DB-API ``Reader``
(``watcher.store.dbapi``: what the read commands use, without importing SQLAlchemy).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from watcher.errors import NotFound
from watcher.ids import parse_id
from watcher.store.dbapi import Reader

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

Row = dict[str, Any]
_JSON_COLUMNS = {"payments", "payers"}
_BOOL_COLUMNS = {"rpc_ok"}


def _rows(engine: Engine | Reader, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
    if isinstance(engine, Reader):
        out = engine.rows(sql, params)
    else:
        import sqlalchemy as sa

        with engine.connect() as conn:
            out = [dict(m) for m in conn.execute(sa.text(sql), params or {}).mappings()]
    for row in out:
        for key in _JSON_COLUMNS & row.keys():
            row[key] = json.loads(row[key]) if row[key] is not None else []
        for key in _BOOL_COLUMNS & row.keys():
            row[key] = None if row[key] is None else bool(row[key])
    return out


def retainers(engine: Engine | Reader) -> list[Row]:
    return _rows(engine, "SELECT * FROM v_retainers ORDER BY CAST(substr(id, 5) AS INTEGER)")


def retainer(engine: Engine | Reader, ref: str) -> Row:
    rid = f"RET-{parse_id(ref, 'RET')}"
    rows = _rows(engine, "SELECT * FROM v_retainers WHERE id = :id", {"id": rid})
    if not rows:
        raise NotFound(f"unknown retainer {ref!r}")
    row = rows[0]
    row["invoices"] = invoices(engine, retainer=rid)
    row["cycles"] = cycles(engine, retainer=rid)
    return row


def invoices(
    engine: Engine | Reader, *, status: str | None = None, retainer: str | None = None
) -> list[Row]:
    sql = "SELECT * FROM v_invoices WHERE 1 = 1"
    params: dict[str, Any] = {}
    if status is not None:
        sql += " AND status = :status"
        params["status"] = status
    if retainer is not None:
        sql += " AND retainer_id = :rid"
        params["rid"] = _known_retainer(engine, retainer)
    return _rows(engine, sql + " ORDER BY CAST(substr(id, 5) AS INTEGER)", params)


def _known_retainer(engine: Engine | Reader, ref: str) -> str:
    rid = f"RET-{parse_id(ref, 'RET')}"
    if not _rows(engine, "SELECT id FROM v_retainers WHERE id = :id", {"id": rid}):
        raise NotFound(f"unknown retainer {ref!r}")
    return rid


def invoice(engine: Engine | Reader, ref: str) -> Row:
    iid = f"INV-{parse_id(ref, 'INV')}"
    rows = _rows(engine, "SELECT * FROM v_invoices WHERE id = :id", {"id": iid})
    if not rows:
        raise NotFound(f"unknown invoice {ref!r}")
    return rows[0]


def payments(engine: Engine | Reader, *, unassigned: bool = False) -> list[Row]:
    sql = "SELECT * FROM v_payments"
    if unassigned:
        sql += " WHERE invoice_id IS NULL AND status != 'orphaned'"
    return _rows(engine, sql + " ORDER BY block_number, tx_hash, log_index NULLS FIRST")


def cycles(engine: Engine | Reader, *, retainer: str | None = None) -> list[Row]:
    sql = "SELECT * FROM v_cycles"
    params: dict[str, Any] = {}
    if retainer is not None:
        sql += " WHERE retainer_id = :rid"
        params["rid"] = _known_retainer(engine, retainer)
    return _rows(engine, sql + " ORDER BY starts_at, period_index", params)


def rows(engine: Engine | Reader, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
    """Rows of a read-only query over the operator views (JSON columns decoded)."""
    return _rows(engine, sql, params)


def known_retainer(engine: Engine | Reader, ref: str) -> str:
    """The id of retainer ``ref`` (``RET-1``); NotFound (exit 2) if there is none."""
    return _known_retainer(engine, ref)
