"""Fixtures that give each test its own real Anvil node (see tests/support/anvil.py), and the
store suites' ledger context on the test's database (``ctx``; a module may define its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.anvil import AnvilNode
from tests.support.base_ledger import NOW, base_context
from watcher.ledger.context import Context


@pytest.fixture
def anvil() -> Iterator[AnvilNode]:
    """A fresh Anvil node with default finality (safe = latest-32, finalized = latest-64)."""
    with AnvilNode() as node:
        yield node


@pytest.fixture
def anvil_fast() -> Iterator[AnvilNode]:
    """A fresh Anvil node with one-slot epochs: safe = latest-1, finalized = latest-2."""
    with AnvilNode(slots_in_an_epoch=1) as node:
        yield node


@pytest.fixture
def ctx(tmp_path: Path, db_url: str) -> Iterator[Context]:
    """The base chain's ledger context on the test's database (SQLite or PostgreSQL), its clock
    stopped at ``base_ledger.NOW``."""
    ctx = base_context(tmp_path, db_url, lambda: NOW)
    yield ctx
    ctx.engine.dispose()
