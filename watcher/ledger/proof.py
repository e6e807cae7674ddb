"""The proof bundle of a paid invoice: frozen JSON (``proof-v1``); ``render`` prints it as HTML."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from watcher.errors import NotFound, Refused
from watcher.ids import fmt_id, parse_id
from watcher.ledger import queries
from watcher.schemas.proof import SCHEMA_VERSION
from watcher.store.dbapi import Reader

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def load_proof(engine: Engine | Reader, ref: str) -> dict[str, Any]:
    """The frozen bundle of ``ref``; refused while the invoice is not settled.

    Plain SQL on the ``invoices`` and ``proofs`` tables, so that ``proof INV`` can read it
    through the DB-API reader as well as through an engine."""
    number = parse_id(ref, "INV")
    found = queries.rows(engine, "SELECT status FROM invoices WHERE id = :id", {"id": number})
    if not found:
        raise NotFound(f"unknown invoice {ref!r}")
    sql = "SELECT bundle FROM proofs WHERE invoice_id = :id"
    proof = queries.rows(engine, sql, {"id": number})
    if not proof:
        raise Refused(
            f"{fmt_id('INV', number)} is {found[0]['status']}: a proof exists only once it "
            "is paid by final payments"
        )
    bundle: dict[str, Any] = json.loads(proof[0]["bundle"])
    # Bundles frozen before the version marker existed have the proof-v1 shape.
    return {"schema": SCHEMA_VERSION, **bundle}
