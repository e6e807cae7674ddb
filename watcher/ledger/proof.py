"""The proof bundle of a paid invoice: frozen JSON (``proof-v1``); ``render`` prints it as HTML."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from watcher.errors import NotFound, Refused
from watcher.ids import fmt_id, parse_id
from watcher.schemas.proof import SCHEMA_VERSION
from watcher.store.tables import Invoice, Proof


def load_proof(engine: Engine, ref: str) -> dict[str, Any]:
    """The frozen bundle of ``ref``; refused while the invoice is not settled."""
    with Session(engine) as session:
        invoice = session.get(Invoice, parse_id(ref, "INV"))
        if invoice is None:
            raise NotFound(f"unknown invoice {ref!r}")
        proof = session.get(Proof, invoice.id)
        if proof is None:
            raise Refused(
                f"{fmt_id('INV', invoice.id)} is {invoice.status}: a proof exists only once it "
                "is paid by final payments"
            )
        bundle: dict[str, Any] = json.loads(proof.bundle)
        # Bundles frozen before the version marker existed have the proof-v1 shape.
        return {"schema": SCHEMA_VERSION, **bundle}
