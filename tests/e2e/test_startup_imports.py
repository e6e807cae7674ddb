"""Read commands start without the chain adapter or the notifier (issue 11 item 5).

Each command runs as the real program in a subprocess with ``-X importtime``; the modules it
imported are read from that list. ``status``, ``invoice list`` and ``proof`` must not import
web3 or apprise (together about 0.6 s of start-up), nor the other libraries only some commands
need (eth_utils, requests, segno, jsonschema).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Templates, Workspace
from tests.unit.test_proof_schema import bundle

NEVER = ("web3", "apprise")
NOT_FOR_READS = ("eth_utils", "eth_abi", "requests", "segno", "jsonschema")
#: What the read commands read without: the store's ORM (they read through the DB-API), the
#: logging library (they log nothing) and Rich (they print JSON).
NOT_FOR_JSON_READS = ("sqlalchemy", "sqlmodel", "structlog", "rich", "psycopg")


def imported(stderr: str) -> set[str]:
    """Top-level package names in an ``-X importtime`` report."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
    return names


@pytest.fixture
def paid(template_sets: Callable[[str], Templates], tmp_path: Path) -> Workspace:
    """The invoiced ledger (SQLite) with a frozen proof for INV-1 (as settlement writes it)."""
    ws = template_sets("sqlite").copy("invoiced", tmp_path / "ws")
    conn = sqlite3.connect(ws.db)
    with conn:
        conn.execute(
            "INSERT INTO proofs (invoice_id, bundle, created_at) VALUES (1, ?, ?)",
            (json.dumps(bundle()), datetime(2026, 1, 31, tzinfo=UTC).isoformat(" ")),
        )
    conn.close()
    return ws


def run_traced(paid: Workspace, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """``proofwatch ARGS`` under ``-X importtime`` to a successful end (the list on stderr)."""
    argv = [sys.executable, "-X", "importtime", "-m", "watcher", "--config", str(paid.config)]
    traced = subprocess.run(
        [*argv, *args],
        cwd=paid.root,
        env=paid.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert traced.returncode == 0, traced.stderr[-2000:]
    return traced


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--json"),
        ("invoice", "list", "--json"),
        ("proof", "INV-1"),
        ("proof", "INV-1", "--format", "html"),  # the receipt draws a QR code: segno
    ],
    ids=" ".join,
)
def test_read_command_imports_neither_web3_nor_apprise(
    paid: Workspace, args: tuple[str, ...]
) -> None:
    """A read command completes (exit 0) without importing web3, apprise, or the libraries
    only chain, notification and invoice-issuing commands need."""
    traced = run_traced(paid, args)
    names = imported(traced.stderr)
    assert "watcher" in names and "pydantic" in names  # the report is the import list
    assert [n for n in NEVER if n in names] == []
    allowed = {"segno"} if "html" in args else set()
    assert [n for n in NOT_FOR_READS if n in names and n not in allowed] == []


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--json"),
        ("invoice", "list", "--json"),
        ("proof", "INV-1"),
        ("proof", "INV-1", "--format", "html"),
        ("retainer", "list", "--json"),
        ("invoice", "show", "INV-1", "--json"),
        ("transfers", "--json"),
        ("cycles", "--json"),
    ],
    ids=" ".join,
)
def test_read_command_reads_without_the_orm_logging_or_rich(
    paid: Workspace, args: tuple[str, ...]
) -> None:
    """A read command on SQLite prints its answer without importing SQLAlchemy, SQLModel,
    structlog, Rich or psycopg: it reads through the DB-API."""
    traced = run_traced(paid, args)
    assert traced.stdout.strip()
    names = imported(traced.stderr)
    assert "watcher" in names
    assert [n for n in NOT_FOR_JSON_READS if n in names] == []
