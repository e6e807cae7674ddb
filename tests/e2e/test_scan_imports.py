"""``proofwatch scan --json`` starts without what scanning does not use (issue 11, the
whole-process time of ``scan``): the real program in a subprocess with ``-X importtime``
against a real Anvil node, the modules it imported read from that list."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.anvil import AnvilNode
from tests.support.one_chain import one_chain_config

REPO = Path(__file__).resolve().parents[2]

# Not for a scan: the notifier (apprise), ABI codecs and eth_utils (the reader decodes words
# and checksums itself), web3, a terminal's progress bar, SQLAlchemy's PostgreSQL dialect on
# a SQLite database; the renewal round and the invoicing it does (``tick`` and the daemon run
# them, a scan never does); the status document (the lock needs one constant of it).
NOT_FOR_SCAN = (
    "apprise",
    "web3",
    "eth_abi",
    "eth_utils",
    "rich.progress",
    "sqlalchemy.dialects.postgresql",
    "watcher.ledger.renewals",
    "watcher.ledger.invoices",
    "watcher.runtime.status",
    "watcher.runtime.status_read",
)


def imported(stderr: str) -> set[str]:
    """Every module name in an ``-X importtime`` report."""
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    with AnvilNode() as anvil:
        anvil.mine(3)
        yield anvil


def test_scan_imports_only_what_scanning_needs(node: AnvilNode, tmp_path: Path) -> None:
    """A scan to the head (exit 0, JSON report) imports neither the notifier, web3, the ABI
    codecs, the progress bar, the PostgreSQL dialect, the renewal round nor the status
    document."""
    assert node.url is not None
    config = one_chain_config(tmp_path, node.url, internal="trace_filter")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    base = [sys.executable, "-X", "importtime", "-m", "watcher", "--config", str(config)]
    init = subprocess.run(
        [*base, "init"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr[-2000:]
    traced = subprocess.run(
        [*base, "scan", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert traced.returncode == 0, traced.stderr[-2000:]
    assert '"cursor_after": 3' in traced.stdout
    names = imported(traced.stderr)
    assert {"sqlmodel", "requests", "watcher.chain.scanner"} <= names  # the list we think it is
    assert sorted(n for n in NOT_FOR_SCAN if n in names) == []
