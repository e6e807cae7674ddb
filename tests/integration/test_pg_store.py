"""PostgreSQL as a store, beside SQLite: connection failures and secrets, 64-bit chain numbers,
and the orders that must not depend on the store."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.support.postgres import PostgresServer
from watcher.errors import WatcherError
from watcher.ledger import queries
from watcher.store.db import make_engine, migrate, transaction
from watcher.store.tables import ChainState, Transfer

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONFIG = f"""[database]
url = "postgresql+psycopg://postgres:${{DB_PASSWORD}}@127.0.0.1:{{port}}/postgres"
[[chains]]
name = "base"
chain_id = 8453
rpc_urls = ["http://127.0.0.1:9"]
receiving_address = "{WALLET}"
"""


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database of the current store."""
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _proofwatch(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", "--config", str(root / "watcher.toml"), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("reachable", [True, False], ids=["wrong-password", "closed-port"])
def test_an_unusable_database_is_one_error_line_without_the_password(
    pg_server: PostgresServer, tmp_path: Path, reachable: bool
) -> None:
    """A wrong password or a closed port: init and a read command exit 1 with one line naming
    the database, its password redacted (it used to be a multi-line internal error)."""
    port = pg_server.port if reachable else 9
    (tmp_path / "watcher.toml").write_text(CONFIG.replace("{port}", str(port)))
    (tmp_path / ".env").write_text("DB_PASSWORD=Not-The-Pass-4242\n")
    for args in (("init",), ("invoice", "list"), ("status",)):
        result = _proofwatch(tmp_path, *args)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("proofwatch: error: "), lines[0]
        assert f"postgresql+psycopg://postgres:<redacted>@127.0.0.1:{port}/postgres" in lines[0]
        assert "Not-The-Pass-4242" not in result.stderr + result.stdout


def test_an_unknown_driver_is_refused_without_the_password() -> None:
    """make_engine on a URL whose driver is not installed says so without echoing the password."""
    with pytest.raises(WatcherError) as refused:
        make_engine("postgresql+nosuchdriver://app:Secret-Pass-1@db/watcher")
    assert "Secret-Pass-1" not in str(refused.value)
    assert "postgresql+nosuchdriver://app:<redacted>@db/watcher" in str(refused.value)


def test_chain_numbers_above_32_bits_are_stored(engine: Engine) -> None:
    """Chain ids, block numbers and cursors above 2**31 (PostgreSQL's INTEGER) are kept exactly."""
    big = 2**40 + 7
    with transaction(engine) as session:
        session.add(ChainState(chain="palm", chain_id=11_297_108_109, cursor=big, head=big + 1))
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT chain_id, cursor, head FROM v_status")).one()
    assert tuple(row) == (11_297_108_109, big, big + 1)


def test_transfers_of_one_transaction_list_native_first_on_both_stores(engine: Engine) -> None:
    """A native inflow (no log index) and a token inflow in the same transaction list in the
    same order on SQLite and PostgreSQL: the native one first (NULLS FIRST, SQLite's order)."""
    tx = "0x" + "ab" * 32
    with transaction(engine) as session:
        for kind, log_index, asset in (("erc20", 3, "USDC"), ("native", None, "ETH")):
            session.add(
                Transfer(
                    uid=f"8453:{tx}:{kind}:{log_index or 0}", chain="base", chain_id=8453,
                    kind=kind, tx_hash=tx, log_index=log_index, block_number=5,
                    block_hash="0x" + "cd" * 32, from_address=WALLET, to_address=WALLET,
                    asset=asset, decimals=6, amount=1, detected_at=NOW,
                )
            )  # fmt: skip
    assert [p["kind"] for p in queries.payments(engine)] == ["native", "erc20"]
