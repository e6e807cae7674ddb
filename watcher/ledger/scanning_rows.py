"""Transfer rows for scanning: inserting new inflows, reviving orphaned ones found again, and
the reader's view of a stored row (``Pending``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from watcher.chain.findings import Pending, transfer_uid
from watcher.chain.sources import NATIVE_DECIMALS, Inflow
from watcher.settings import ChainSettings
from watcher.store.tables import Transfer

IN_BATCH = 500  # ids per IN (...) query: far below SQLite's bound-parameter limit


def pending(t: Transfer) -> Pending:
    """What the chain reader needs of a stored transfer."""
    assert t.id is not None
    return Pending(
        id=t.id, uid=t.uid, kind=t.kind, tx_hash=t.tx_hash, log_index=t.log_index,
        block_number=t.block_number, block_hash=t.block_hash, token_address=t.token_address,
        amount=t.amount,
    )  # fmt: skip


def load_transfers(session: Session, ids: list[int]) -> dict[int | None, Transfer]:
    """Transfers by id, read in a few IN queries rather than one query per row."""
    rows: dict[int | None, Transfer] = {}
    for start in range(0, len(ids), IN_BATCH):
        query = select(Transfer).where(col(Transfer.id).in_(ids[start : start + IN_BATCH]))
        rows.update((t.id, t) for t in session.exec(query))
    return rows


def mark_final(session: Session, rows: Sequence[Transfer], now: datetime, final_block: int) -> None:
    """Turn ``rows`` (stored in this transaction) ``final``: one UPDATE per IN_BATCH rows,
    the loaded objects given the same values (no per-row UPDATE from the ORM's flush)."""
    session.flush()  # anything pending on these rows first
    ids = [t.id for t in rows]
    values = {"status": "final", "finalized_at": now, "final_block": final_block}
    for start in range(0, len(ids), IN_BATCH):
        query = update(Transfer).where(col(Transfer.id).in_(ids[start : start + IN_BATCH]))
        session.execute(query.values(**values).execution_options(synchronize_session=False))
    for row in rows:
        for name, value in values.items():
            set_committed_value(row, name, value)


def _by_uid(session: Session, uids: list[str]) -> list[Transfer]:
    rows: list[Transfer] = []
    for start in range(0, len(uids), IN_BATCH):
        query = select(Transfer).where(col(Transfer.uid).in_(uids[start : start + IN_BATCH]))
        rows.extend(session.exec(query))
    return rows


def store_inflows(
    session: Session,
    chain: ChainSettings,
    inflows: Sequence[Inflow],
    times: Mapping[int, datetime | None],
    now: datetime,
    log: Any,
) -> list[Transfer]:
    """Insert new transfers and revive orphaned ones found again; returns both, by block.
    ``times`` holds each block's timestamp (the payment's time for every deadline)."""
    uids = {transfer_uid(chain.chain_id, i.tx_hash, i.kind, i.log_index): i for i in inflows}
    existing = {t.uid: t for t in _by_uid(session, list(uids))}
    found: list[Transfer] = []
    fresh: list[dict[str, object]] = []
    for uid, i in uids.items():
        row = existing.get(uid)
        if row is None:
            token = i.token
            fresh.append({
                "uid": uid, "chain": chain.name, "chain_id": chain.chain_id, "kind": i.kind,
                "tx_hash": i.tx_hash, "log_index": i.log_index, "block_number": i.block_number,
                "block_hash": i.block_hash, "block_time": times.get(i.block_number),
                "from_address": i.from_address,
                "to_address": chain.receiving_address, "amount": i.amount, "detected_at": now,
                "asset": token.symbol if token else chain.native_symbol,
                "token_address": token.address if token else None,
                "decimals": token.decimals if token else NATIVE_DECIMALS,
                "status": "seen",
            })  # fmt: skip
            continue
        if row.status == "final" or (row.status == "seen" and row.block_hash == i.block_hash):
            continue  # known as it is (a rescan); a final row is never rewritten
        # orphaned and found again, or (rescan) seen on a branch since replaced
        refound = row.status == "orphaned"
        row.status, row.block_number, row.block_hash = "seen", i.block_number, i.block_hash
        row.unconfirmed_since = None
        row.block_time = times.get(i.block_number)
        row.from_address, row.amount = i.from_address, i.amount
        session.add(row)
        if refound:
            found.append(row)
    if fresh:  # one executemany, then load the rows back (cheaper than ORM construction)
        # render_nulls: the ORM would otherwise leave out each row's None columns and split
        # the rows into one INSERT per run of the same missing columns (native rows have no
        # log index or token): 630 statements for 1,000 mixed transfers instead of 1.
        session.execute(insert(Transfer).execution_options(render_nulls=True), fresh)
        found.extend(_by_uid(session, [str(r["uid"]) for r in fresh]))
    session.flush()
    found.sort(key=lambda t: (t.block_number, t.tx_hash, t.kind, t.log_index or 0))
    for row in found:
        log.info(
            "scan.found", kind=row.kind, tx=row.tx_hash, log_index=row.log_index,
            block=row.block_number, asset=row.asset, amount=str(row.amount),
            refound=row.uid in existing,
        )  # fmt: skip
    return found
