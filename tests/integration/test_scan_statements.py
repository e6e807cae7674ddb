"""How many SQL statements a chunk's commit costs: a fixed few per chunk, not one per transfer
(issue 11, the catch-up time of ``proofwatch scan``). Real SQLite files and PostgreSQL
(``db_url``), no chain: the inflows are built as the reader hands them over."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import event
from sqlmodel import func, select

from tests.support.base_ledger import PAYER, USDC, base_context
from watcher.chain.chunk import Inflow
from watcher.ledger.context import Context
from watcher.ledger.scanning_rows import store_inflows
from watcher.ledger.settlement import Settlement
from watcher.store.db import read_session, transaction
from watcher.store.tables import OutboxEvent, TokenDecimals, Transfer

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path: Path, db_url: str) -> Iterator[Context]:
    ctx = base_context(tmp_path, db_url, lambda: NOW)
    yield ctx
    ctx.engine.dispose()


def _inflows(ctx: Context, n: int) -> list[Inflow]:
    """``n`` inflows in block order, the kinds interleaved as on a real chain (native rows
    have no log index and no token, ERC-20 and internal rows have a log index)."""
    token = ctx.settings.chain("base").tokens[0]
    out = []
    for i in range(n):
        kind = ("erc20", "native", "internal")[i % 3]
        out.append(
            Inflow(
                kind=kind, tx_hash=f"0x{i:064x}", log_index=None if kind == "native" else i % 7,
                block_number=100 + i, block_hash=f"0x{i + 1:064x}", from_address=PAYER,
                amount=1_000 + i, token=token if kind == "erc20" else None,
            )
        )  # fmt: skip
    return out


class Statements:
    """Counts the SQL statements sent on an engine (an executemany counts once)."""

    def __init__(self, engine: Any) -> None:
        self.seen: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, _c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        words = statement.split()
        verb = words[0].upper()
        table = words[2] if verb in ("INSERT", "DELETE") else ""
        if verb == "SELECT" and "FROM" in words:
            table = words[words.index("FROM") + 1]
        self.seen[f"{verb} {table}".strip()] += 1


def test_storing_mixed_inflows_is_one_insert(ctx: Context) -> None:
    """300 new transfers of three kinds in block order are written by one INSERT statement
    (an executemany), not one per run of rows with the same empty columns."""
    chain = ctx.settings.chain("base")
    inflows = _inflows(ctx, 300)
    times = {i.block_number: NOW for i in inflows}
    counted = Statements(ctx.engine)
    with transaction(ctx.engine) as session:
        found = store_inflows(session, chain, inflows, times, NOW, structlog.get_logger())
    assert len(found) == 300
    assert counted.seen["INSERT transfers"] == 1
    with read_session(ctx.engine) as session:
        rows = session.exec(select(Transfer).order_by(Transfer.block_number)).all()
    assert [(t.kind, t.log_index, t.token_address) for t in rows[:3]] == [
        ("erc20", 0, USDC), ("native", None, None), ("internal", 2, None),
    ]  # fmt: skip


def test_matching_a_chunk_reads_each_tokens_decimals_once(ctx: Context) -> None:
    """Settlement's check that a token's decimals can be trusted reads the stored decimals
    once per token for a chunk of 300 transfers, not once per transfer."""
    chain = ctx.settings.chain("base")
    with transaction(ctx.engine) as session:
        session.add(
            TokenDecimals(chain="base", token_address=USDC, chain_id=8453, decimals=6, read_at=NOW)
        )
    inflows = _inflows(ctx, 300)
    times = {i.block_number: NOW for i in inflows}
    settlement = Settlement(ctx.settings, ctx.now)
    with transaction(ctx.engine) as session:
        found = store_inflows(session, chain, inflows, times, NOW, structlog.get_logger())
        counted = Statements(ctx.engine)
        settlement.found(session, found)
    assert counted.seen["SELECT token_decimals"] <= 1
    with read_session(ctx.engine) as session:
        query = select(func.count()).select_from(OutboxEvent)
        assert session.exec(query.where(OutboxEvent.type == "transfer.unassigned")).one() == 300
