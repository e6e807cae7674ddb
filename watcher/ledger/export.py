"""``export payments``: the bookkeeper's statement, one row per final payment of an invoice.

Rows are read from the operator views (``v_payments`` joined with ``v_invoices``), so the
fields are the JSON field names of the contract; ``COLUMNS`` is their stable order.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from watcher.domain.billing import parse_when
from watcher.errors import BadInput
from watcher.ledger import queries
from watcher.ledger.payloads import explorer_tx_url
from watcher.settings import Settings
from watcher.store.outbox import iso

#: The statement's columns, in order. Stable: later versions only append.
COLUMNS = (
    "block_time",
    "client",
    "retainer_id",
    "invoice_id",
    "kind",
    "month",
    "invoice_status",
    "asset",
    "amount",
    "amount_base_units",
    "chain",
    "chain_id",
    "tx_hash",
    "log_index",
    "block_number",
    "from",
    "explorer_url",
)

_SQL = """
SELECT p.block_time AS block_time, i.client AS client, i.retainer_id AS retainer_id,
       p.invoice_id AS invoice_id, i.kind AS kind, i.period_index AS month,
       i.status AS invoice_status, p.asset AS asset, p.amount AS amount,
       p.amount_base_units AS amount_base_units, i.chain AS chain, p.chain_id AS chain_id,
       p.tx_hash AS tx_hash, p.log_index AS log_index, p.block_number AS block_number,
       p."from" AS "from"
FROM v_payments p JOIN v_invoices i ON i.id = p.invoice_id
WHERE p.status = 'final'
"""


def _bounds(start: str | None, end: str | None) -> tuple[str | None, str | None]:
    """``[lo, hi)`` as ISO strings: ``--from`` inclusive; ``--to`` a whole day if a date,
    else inclusive to the second."""
    lo = parse_when(start, what="--from") if start is not None else None
    hi: datetime | None = None
    if end is not None:
        hi = parse_when(end, what="--to")
        hi += timedelta(days=1) if len(end.strip()) == 10 else timedelta(seconds=1)
    if lo is not None and hi is not None and hi <= lo:
        raise BadInput(f"--to {end!r} is before --from {start!r}")
    return iso(lo), iso(hi)


def payment_rows(
    engine: Engine,
    settings: Settings,
    *,
    start: str | None = None,
    end: str | None = None,
    retainer: str | None = None,
) -> list[dict[str, Any]]:
    """Final payments of invoices by block time, optionally within dates and one retainer."""
    lo, hi = _bounds(start, end)
    sql, params = _SQL, {}
    if lo is not None:
        sql += " AND p.block_time >= :lo"
        params["lo"] = lo
    if hi is not None:
        sql += " AND p.block_time < :hi"
        params["hi"] = hi
    if retainer is not None:
        params["rid"] = queries.known_retainer(engine, retainer)  # exit 2 if unknown
        sql += " AND i.retainer_id = :rid"
    sql += " ORDER BY p.block_time, p.block_number, p.tx_hash, p.log_index NULLS FIRST"
    rows = queries.rows(engine, sql, params)
    for row in rows:
        row["amount_base_units"] = str(row["amount_base_units"])
        row["explorer_url"] = explorer_tx_url(settings, str(row["chain"]), str(row["tx_hash"]))
    return [{key: row[key] for key in COLUMNS} for row in rows]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """RFC 4180: a header row, CRLF line ends, fields quoted where they need it."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[key] is None else row[key] for key in COLUMNS])
    return out.getvalue()
