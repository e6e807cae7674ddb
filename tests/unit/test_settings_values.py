"""Settings value objects: their field rules hold however they are built; missing keys named."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from watcher.errors import ConfigError
from watcher.settings import (
    BillingSettings,
    ChainSettings,
    StatusSettings,
    TokenSettings,
    WebhookSettings,
    load_settings,
)

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


def chain(**changes: object) -> ChainSettings:
    base = ChainSettings("base", 8453, ("http://127.0.0.1:8545",), WALLET)
    return dataclasses.replace(base, **changes)


def test_a_chain_built_by_hand_gets_the_config_defaults_and_a_checksummed_address() -> None:
    """Built in code, a ChainSettings has the documented defaults and stores EIP-55 addresses."""
    built = ChainSettings("base", 8453, ["http://127.0.0.1:8545"], WALLET.lower())  # type: ignore[arg-type]
    assert built.receiving_address == WALLET
    assert built.rpc_urls == ("http://127.0.0.1:8545",)
    assert (built.finality, built.poll_seconds, built.start_block, built.tokens) == (
        "finalized",
        6.0,
        0,
        (),
    )


BAD_BUILDS: list[tuple[str, Callable[[], object], str]] = [
    ("chain_id", lambda: chain(chain_id=0), "0 must be an integer >= 1"),
    ("max_batch", lambda: chain(max_batch=True), "True must be an integer >= 1"),
    ("finality", lambda: chain(finality="latest"), "'latest' must be \"finalized\""),
    ("cross_check", lambda: chain(cross_check=True), "true needs at least two rpc_urls"),
    ("decimals", lambda: TokenSettings("USDC", WALLET, 37), "37 must be 0..36"),
    ("tolerance", lambda: BillingSettings(underpay_tolerance=Decimal(1)), "at least 0 and below 1"),
    ("listen", lambda: StatusSettings(listen="9464"), "'9464' must be host:port"),
    ("whsec", lambda: WebhookSettings("https://h.example", "whsec_!"), "the part after whsec_"),
]


@pytest.mark.parametrize(
    ("build", "why"), [b[1:] for b in BAD_BUILDS], ids=[b[0] for b in BAD_BUILDS]
)
def test_a_value_object_built_by_hand_refuses_a_bad_field(
    build: Callable[[], object], why: str
) -> None:
    """The rules a config is checked by also hold for objects built in code (and by replace)."""
    with pytest.raises(ValidationError, match=why):
        build()


def test_a_webhook_built_by_hand_may_have_a_short_secret() -> None:
    """The 16-character minimum is a rule for config files; code may build a short one."""
    assert WebhookSettings("https://h.example", "x").secret == "x"


def test_missing_required_keys_are_each_named_as_required(tmp_path: Path) -> None:
    """A [[chains]] table without its required keys names each of them, once."""
    path = tmp_path / "watcher.toml"
    path.write_text("[[chains]]\nchain_id = 1\n\n[[chains.tokens]]\nsymbol = 'USDC'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [
        "chains[0].name: is required",
        "chains[0].rpc_urls: is required",
        "chains[0].receiving_address: is required",
        "chains[0].tokens[0].address: is required",
        "chains[0].tokens[0].decimals: is required",
    ]
