"""The chain lease reaches the scanner's own commits: a poll fenced by a lease another daemon
has taken over stores nothing (no transfer, no cursor move, no poll record), while the new
holder's poll goes through; on a real Anvil node and on the scripted node."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.scan_harness import ETH, NODES, Harness, harness
from watcher.runtime.leases import ChainLeases, LeaseLost
from watcher.store.db import fenced, read_session
from watcher.store.tables import ChainState

LEASE = timedelta(seconds=30)


@pytest.fixture(params=NODES)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from harness(request, tmp_path, fast=True)


def test_a_poll_fenced_by_a_lost_lease_commits_nothing(h: Harness) -> None:
    """After another daemon took the chain's lease over, the first daemon's poll raises
    LeaseLost and leaves the cursor, the transfers and the chain's poll record as they were;
    the new holder's poll then finds the payment."""
    at = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    first = ChainLeases(h.engine, "first", ["anvil"], lease=LEASE, clock=lambda: at[0])
    second = ChainLeases(h.engine, "second", ["anvil"], lease=LEASE, clock=lambda: at[0])
    assert first.hold("anvil")
    with fenced(first.fence("anvil")):
        h.scan()
    before = h.state()
    h.pay(2 * ETH)
    h.node.mine(3)
    at[0] += LEASE + timedelta(seconds=1)
    assert second.hold("anvil")

    with fenced(first.fence("anvil")), pytest.raises(LeaseLost, match="held by second"):
        h.scan()

    with read_session(h.engine) as session:
        after = session.get(ChainState, "anvil")
    assert after is not None
    assert (after.cursor, after.cursor_hash, after.last_poll_at, after.last_error) == (
        before.cursor, before.cursor_hash, before.last_poll_at, before.last_error,
    )  # fmt: skip
    assert h.transfers() == []
    with fenced(second.fence("anvil")):
        h.scan()
    (found,) = h.transfers()
    assert found.amount == 2 * ETH
    assert h.state().cursor == h.node.head()
