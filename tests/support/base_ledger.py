"""One chain ("base", 8453) with USDC at 6 decimals, on a database the caller gives: the
settings and ledger context the store suites (and bench/settle.py) build without a node."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from watcher.ledger.context import Context
from watcher.settings import ChainSettings, Settings, TokenSettings, load_settings
from watcher.store.db import make_engine, migrate

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAYER = "0x52908400098527886E0F7030069857D2E4169EE7"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # the store suites' clock (``ctx`` fixture)


def base_settings(url: str, root: Path) -> Settings:
    """Settings built in code (no config file): the chain and its USDC, no RPC reachable."""
    chain = ChainSettings(
        name="base",
        chain_id=8453,
        rpc_urls=("http://127.0.0.1:9",),
        receiving_address=WALLET,
        finality="finalized",
        poll_seconds=6.0,
        start_block=0,
        native_symbol="ETH",
        tokens=(TokenSettings("USDC", USDC, 6),),
    )
    return Settings(config_path=root / "watcher.toml", database_url=url, chains=(chain,))


def base_context(root: Path, url: str, now: Callable[[], datetime]) -> Context:
    """A migrated database at ``url`` and a context loaded, as the CLI loads it, from a
    watcher.toml in ``root`` (the URL, with any password, in the .env beside it)."""
    (root / ".env").write_text(f"DATABASE_URL={url}\n")
    (root / "watcher.toml").write_text(
        f"""[database]
url = "${{DATABASE_URL}}"
[[chains]]
name = "base"
chain_id = 8453
rpc_urls = ["http://127.0.0.1:9"]
receiving_address = "{WALLET}"
[[chains.tokens]]
symbol = "USDC"
address = "{USDC}"
decimals = 6
"""
    )
    settings = load_settings(root / "watcher.toml")
    engine = make_engine(settings.database_url)
    migrate(engine)
    return Context(settings=settings, engine=engine, now=now)
