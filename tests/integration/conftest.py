"""Fixtures that give each test its own real Anvil node (see tests/support/anvil.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.anvil import AnvilNode


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
