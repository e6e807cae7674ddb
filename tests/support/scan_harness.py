"""The scanner suite's harness: one chain (``ChainDriver``: Anvil or the scripted node), a real
SQLite file, the settings of a chain watching ``WALLET``, and what the scan stored.

``harness(request, tmp_path, fast=...)`` is what a test module's fixtures yield: with the
parameter ``"anvil"`` it runs on a real Anvil node (the ``anvil`` / ``anvil_fast`` fixtures of
tests/integration/conftest.py), with ``"scripted"`` on a ``ScriptedNode`` with the same tags
(finalized = latest - 64, or latest - 2 when ``fast``). ``NODES`` are those parameters;
``NODE_MODES`` pairs each with each ``internal`` mode (``MODES``): the harness's chain then
reads native inflows that way (``Harness.internal``, ``Harness.needs_traces``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from web3 import Web3

from tests.support.anvil import AnvilNode
from tests.support.chain_driver import AnvilDriver, ChainDriver, ScriptedDriver
from tests.support.scripted_node import ScriptedNode
from watcher.chain.rpc import RpcPool
from watcher.ledger.scanning import ScanReport, scan_chain
from watcher.settings import ChainSettings, TokenSettings
from watcher.store.db import make_engine, migrate, read_session
from watcher.store.tables import BlockHash, ChainState, OutboxEvent, Transfer

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
WALLET = Web3.to_checksum_address("0xb3e9568a9cbb624403743340358c85ccce130893")
OTHER = Web3.to_checksum_address("0x00000000000000000000000000000000c0ffee01")
ETH = 10**18

NODES = [pytest.param("scripted"), pytest.param("anvil", marks=pytest.mark.anvil)]
MODES = ("trace_filter", "debug_trace", "off")
NODE_MODES = [
    pytest.param((node, mode), id=f"{node}-{mode}", marks=[pytest.mark.anvil] * (node == "anvil"))
    for node in ("scripted", "anvil")
    for mode in MODES
]


class RecordingHooks:
    """Scan hooks that record what they were told, and check they run inside a transaction."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def _record(self, name: str, session: Session, transfers: list[Transfer]) -> None:
        assert session.in_transaction()
        self.calls.append((name, [t.uid for t in transfers]))

    def found(self, session: Session, transfers: list[Transfer]) -> None:
        self._record("found", session, transfers)

    def orphaned(self, session: Session, transfers: list[Transfer]) -> None:
        assert all(t.status == "orphaned" for t in transfers)
        self._record("orphaned", session, transfers)

    def finalized(self, session: Session, transfers: list[Transfer]) -> None:
        assert all(t.status == "final" and t.finalized_at == NOW for t in transfers)
        self._record("finalized", session, transfers)

    def uids(self, name: str) -> list[str]:
        return [uid for call, uids in self.calls if call == name for uid in uids]


@dataclass
class Harness:
    node: ChainDriver
    engine: Engine
    tokens: list[TokenSettings] = field(default_factory=list)
    hooks: RecordingHooks = field(default_factory=RecordingHooks)
    pools: list[RpcPool] = field(default_factory=list)
    internal: str = "trace_filter"  # how the chain reads native inflows (the fixture's mode)

    @property
    def payer(self) -> str:
        return self.node.accounts[1]

    def token(self, symbol: str, decimals: int, *, configure: bool = True) -> str:
        """Deploy a test token, mint plenty to the payer, and (by default) configure it."""
        address = self.node.deploy_token(symbol, decimals)
        if configure:
            self.tokens.append(TokenSettings(symbol, address, decimals))
        return address

    def chain(self, **changes: Any) -> ChainSettings:
        defaults = {"tokens": tuple(self.tokens), "internal": self.internal}
        return chain_settings(self.node.url, **{**defaults, **changes})

    def needs_traces(self) -> None:
        """Skip a test about internal payments found by traces when the mode has none."""
        if self.internal == "off":
            pytest.skip("without traces internal payments are located by the balance guard")

    def pool(self, chain: ChainSettings) -> RpcPool:
        pool = make_pool(chain)
        self.pools.append(pool)
        return pool

    def scan(
        self, chain: ChainSettings | None = None, pool: RpcPool | None = None, **kw: Any
    ) -> ScanReport:
        chain = chain or self.chain()
        pool = pool or self.pool(chain)
        return scan_chain(chain, pool, self.engine, lambda: NOW, hooks=self.hooks, **kw)

    def transfers(self, **where: Any) -> list[Transfer]:
        with read_session(self.engine) as session:
            rows = session.exec(select(Transfer).order_by(col(Transfer.id))).all()
        return [t for t in rows if all(getattr(t, k) == v for k, v in where.items())]

    def state(self) -> ChainState:
        with read_session(self.engine) as session:
            state = session.get(ChainState, "anvil")
        assert state is not None
        return state

    def hashes(self) -> list[int]:
        """The block numbers whose hashes are kept."""
        with read_session(self.engine) as session:
            return sorted(b.number for b in session.exec(select(BlockHash)).all())

    def events(self, type_: str) -> list[dict[str, Any]]:
        with read_session(self.engine) as session:
            rows = session.exec(select(OutboxEvent).where(OutboxEvent.type == type_)).all()
        return [json.loads(r.body)["data"] for r in rows]

    def pay(self, wei: int, to: str = WALLET) -> str:
        """A native payment from the payer."""
        return self.node.pay_native(self.payer, to, wei)

    def forward(self, forwarder: str, wei: int, to: str = WALLET) -> str:
        """An internal payment through ``forwarder``."""
        return self.node.forward(forwarder, self.payer, [(to, wei)])


def chain_settings(url: str, tokens: Sequence[TokenSettings] = (), **changes: Any) -> ChainSettings:
    """The settings of the test chain watching ``WALLET`` through ``url``."""
    base = ChainSettings(
        name="anvil",
        chain_id=31337,
        rpc_urls=(url,),
        receiving_address=WALLET,
        finality="finalized",
        poll_seconds=1,
        start_block=0,
        native_symbol="ETH",
        tokens=tuple(tokens),
        internal="trace_filter",
        balance_guard=True,
    )
    return replace(base, **changes)


def make_pool(chain: ChainSettings) -> RpcPool:
    """A pool with a short timeout and no real sleeping between retries."""
    return RpcPool(
        chain.rpc_urls, chain=chain.name, expected_chain_id=chain.chain_id, timeout=5,
        backoff_base=0.01, sleep=lambda _s: None,
    )  # fmt: skip


@contextmanager
def driver(request: pytest.FixtureRequest, *, fast: bool) -> Iterator[ChainDriver]:
    """The chain of the test's node parameter (``"anvil"``, ``"scripted"``, ``"stamped"``: the
    scripted node naming ``blockTimestamp`` in receipts and logs; or a ``NODE_MODES`` pair)."""
    kind = request.param[0] if isinstance(request.param, tuple) else request.param
    if kind == "anvil":
        node: AnvilNode = request.getfixturevalue("anvil_fast" if fast else "anvil")
        yield AnvilDriver(node)
        return
    lags = {"safe_lag": 1, "finalized_lag": 2} if fast else {}
    with ScriptedNode(**lags, block_timestamps=kind == "stamped") as scripted:
        yield ScriptedDriver(scripted)


def harness(request: pytest.FixtureRequest, tmp_path: Path, *, fast: bool) -> Iterator[Harness]:
    """A harness on the test's node, with a fresh SQLite file."""
    with driver(request, fast=fast) as node:
        engine = make_engine(f"sqlite:///{tmp_path}/w.db")
        migrate(engine)
        h = Harness(node, engine)
        if isinstance(request.param, tuple):
            h.internal = request.param[1]
        try:
            yield h
        finally:
            for pool in h.pools:
                pool.close()
            engine.dispose()
