"""How many SQL statements a chunk's commit costs: a fixed few per chunk, not one per transfer
(issue 11, the catch-up time of ``proofwatch scan``). Real SQLite files and PostgreSQL
(``db_url``), no chain: the inflows are built as the reader hands them over."""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog
from sqlalchemy import event
from sqlmodel import Session, func, select

from tests.support.base_ledger import NOW, PAYER, USDC
from watcher.chain.chunk import Block, Inflow
from watcher.chain.findings import Findings
from watcher.ledger.context import Context
from watcher.ledger.scanning import NoHooks, StoreLedger
from watcher.ledger.scanning_rows import store_inflows
from watcher.ledger.settlement import Settlement
from watcher.store.db import read_session, transaction
from watcher.store.tables import OutboxEvent, TokenDecimals, Transfer


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
    """Counts the SQL statements sent on an engine: ``seen`` per driver call (an executemany
    counts once), ``runs`` per time the database runs one (an executemany once per row)."""

    def __init__(self, engine: Any) -> None:
        self.seen: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(
        self, _c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, many: bool
    ) -> None:
        words = statement.split()
        verb = words[0].upper()
        table = words[2] if verb in ("INSERT", "DELETE") else ""
        if verb == "UPDATE":
            table = words[1]
        if verb == "SELECT" and "FROM" in words:
            table = words[words.index("FROM") + 1]
        self.seen[f"{verb} {table}".strip()] += 1
        self.runs[f"{verb} {table}".strip()] += len(params) if many else 1


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


class Recorder(NoHooks):
    """Hooks that keep what ``finalized`` was given, and the status each row had then."""

    def __init__(self) -> None:
        self.final: list[tuple[str, str]] = []

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        self.final += [(t.uid, t.status) for t in transfers]


def test_a_chunk_read_from_final_blocks_turns_final_in_two_updates(ctx: Context) -> None:
    """600 inflows read from blocks already final become ``final`` in the chunk's transaction
    by one set-based UPDATE per 500 rows (not the ORM's UPDATE run once per row), and the
    finalized hook sees them final."""
    chain = ctx.settings.chain("base")
    hooks = Recorder()
    ledger = StoreLedger(chain, ctx.engine, ctx.now, hooks)
    ledger.load(None)
    inflows = _inflows(ctx, 600)
    last, head = inflows[-1].block_number, "0x" + "ee" * 32
    findings = Findings(
        first=0, last=last, inflows=tuple(inflows), times={i.block_number: NOW for i in inflows},
        hashes=(Block(last, head, "0x" + "dd" * 32),), forget_up_to=-1, cursor_hash=head,
        cursor_time=NOW, balance=None,
        final_at_once=last,
    )  # fmt: skip
    counted = Statements(ctx.engine)
    result = ledger.commit_chunk(findings)
    assert (result.found, result.finalized) == (600, 600)
    assert counted.runs["UPDATE transfers"] == 2
    assert len(hooks.final) == 600 and {s for _, s in hooks.final} == {"final"}
    with read_session(ctx.engine) as session:
        rows = session.exec(select(Transfer)).all()
    assert {(t.status, t.final_block, t.finalized_at) for t in rows} == {("final", last, NOW)}
