"""The allocation queries settlement runs per chunk: what funds which invoice, in one query
each (``watcher.ledger.settlement`` decides; this module only reads)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from sqlmodel import Session, col, select

from watcher.store.tables import Allocation, Transfer

T = TypeVar("T")


def batches(values: list[T], size: int = 500) -> Iterator[list[T]]:
    """``values`` in slices that stay far below SQLite's limit of bound parameters."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def funded_by_invoice(session: Session, invoice_ids: list[int]) -> dict[int, int]:
    """What each invoice already has allocated (orphaned transfers excluded): one query."""
    funded = dict.fromkeys(invoice_ids, 0)
    if not invoice_ids:
        return funded
    rows = session.exec(
        select(Allocation.invoice_id, Transfer.amount)
        .join(Transfer, col(Allocation.transfer_id) == col(Transfer.id))
        .where(col(Allocation.invoice_id).in_(invoice_ids), Allocation.active)
        .where(Transfer.status != "orphaned")
    ).all()
    for invoice_id, amount in rows:
        funded[invoice_id] += amount
    return funded


def allocated_ids(session: Session, transfer_ids: list[int]) -> set[int]:
    """Which of these transfers already fund an invoice: one query."""
    if not transfer_ids:
        return set()
    rows = session.exec(
        select(Allocation.transfer_id).where(
            col(Allocation.transfer_id).in_(transfer_ids), Allocation.active
        )
    ).all()
    return set(rows)


def active_allocation(session: Session, transfer_id: int) -> Allocation | None:
    return session.exec(
        select(Allocation).where(Allocation.transfer_id == transfer_id, Allocation.active)
    ).first()
