"""Settings: TOML + .env + ${VAR} into one frozen Settings; every bad key reported at once."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from watcher.errors import BadInput, ConfigError
from watcher.settings import (
    AppriseSettings,
    BillingSettings,
    ChainSettings,
    DaemonSettings,
    NotifySettings,
    StatusSettings,
    TokenSettings,
    WebhookSettings,
    clock_from_env,
    config_path_from_env,
    load_settings,
    looks_like_secret_key,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "watcher.example.toml"
EXAMPLE_ENV = ROOT / "config" / ".env.example"

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
# Well-known test keys (Anvil account 0, and the eth-account docs key): never funded secrets.
KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
KEY2 = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
MNEMONIC_12 = "test test test test test test test test test test test junk"
MNEMONIC_24 = (
    "legal winner thank year wave sausage worth useful legal winner thank yellow "
    "legal winner thank year wave sausage worth useful legal winner thank year"
)
ENV_VARS = (
    "BASE_RPC_URL", "BASE_RPC_URL_BACKUP", "NOTIFY_URL", "OPS_NOTIFY_URL", "WEBHOOK_URL",
    "WEBHOOK_SECRET", "STATUS_TOKEN",
)  # fmt: skip
DOTENV = {
    "BASE_RPC_URL": "https://base.example/v2/abc123",
    "BASE_RPC_URL_BACKUP": "https://backup.example/key456",
    "NOTIFY_URL": "json://hooks.example/notify",
    "OPS_NOTIFY_URL": "ntfy://ntfy.example/ops",
    "WEBHOOK_URL": "https://hooks.example/proofwatch",
    "WEBHOOK_SECRET": "a-long-enough-webhook-secret",
    "STATUS_TOKEN": "status-token-abcdefghijklmnop",
}


def base_config() -> dict[str, Any]:
    """A valid config using every key, mirroring config/watcher.example.toml."""
    return {
        "database": {"url": "sqlite:///data/watcher.db"},
        "chains": [
            {
                "name": "base",
                "chain_id": 8453,
                "rpc_urls": ["${BASE_RPC_URL}", "${BASE_RPC_URL_BACKUP}"],
                "receiving_address": WALLET,
                "finality": "finalized",
                "poll_seconds": 6,
                "idle_poll_seconds": 120,
                "start_block": 22000000,
                "native_symbol": "ETH",
                "internal": "off",
                "balance_guard": True,
                "explorer_url": "https://basescan.org",
                "rpc_timeout": 10,
                "max_log_range": 2000,
                "reorg_depth": 128,
                "max_lag_blocks": 100,
                "max_batch": 100,
                "tokens": [{"symbol": "USDC", "address": USDC, "decimals": 6}],
            }
        ],
        "billing": {
            "due_days": 7,
            "renewal_lead_days": 5,
            "grace_days": 3,
            "underpay_tolerance": "0",
            "tag_cooling_days": 90,
        },
        "notify": {
            "urls": ["${NOTIFY_URL}"],
            "apprise_events": ["cycle.opened", "watcher.*"],
            "timeout": 10,
            "webhooks": [{"url": "${WEBHOOK_URL}", "secret": "${WEBHOOK_SECRET}", "events": ["*"]}],
            "apprise": [{"name": "ops", "url": "${OPS_NOTIFY_URL}", "events": ["watcher.*"]}],
        },
        "status": {
            "listen": "127.0.0.1:9464",
            "stale_seconds": 300,
            "token": "${STATUS_TOKEN}",
            "allowed_hosts": ["status.example.com"],
        },
        "daemon": {"lease_seconds": 30},
    }


# --- a tiny TOML writer, enough for configs -------------------------------------------------


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(type(value))


def _lines(table: dict[str, Any], prefix: str) -> list[str]:
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        ):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in nested:
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            lines += ["", f"[{full}]", *_lines(value, full)]
        else:
            for item in value:
                lines += ["", f"[[{full}]]", *_lines(item, full)]
    return lines


def to_toml(data: dict[str, Any]) -> str:
    return "\n".join(_lines(data, "")) + "\n"


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``chains[0].tokens[0].decimals``-style paths in a nested dict."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, *indexes = re.split(r"\[(\d+)\]", part)
        steps.append(name)
        steps += [int(i) for i in indexes if i]
    target: Any = data
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value


def write(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> Path:
    path = tmp_path / "watcher.toml"
    path.write_text(data if isinstance(data, str) else to_toml(data))
    values = DOTENV if env is None else env
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def refused(path: Path, env_file: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env_file)
    return info.value


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WATCHER_* variable or config variable from the caller's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("WATCHER_", "PROOFWATCH_")) or name in ENV_VARS:
            monkeypatch.delenv(name)


# --- a valid config -------------------------------------------------------------------------


def test_valid_config_loads_into_frozen_settings(tmp_path: Path) -> None:
    """Every key of a valid config lands in a frozen Settings with ${VAR}s interpolated."""
    settings = load_settings(write(tmp_path, base_config()))
    chain = settings.chain("base")
    assert chain == ChainSettings(
        name="base",
        chain_id=8453,
        rpc_urls=(DOTENV["BASE_RPC_URL"], DOTENV["BASE_RPC_URL_BACKUP"]),
        receiving_address=WALLET,
        finality="finalized",
        poll_seconds=6.0,
        idle_poll_seconds=120.0,
        start_block=22000000,
        native_symbol="ETH",
        tokens=(TokenSettings("USDC", USDC, 6),),
        internal="off",
        balance_guard=True,
        explorer_url="https://basescan.org",
        rpc_timeout=10.0,
        max_log_range=2000,
        reorg_depth=128,
        max_lag_blocks=100,
        max_batch=100,
    )
    assert settings.billing == BillingSettings(7, 5, 3, Decimal(0), tag_cooling_days=90)
    assert settings.notify == NotifySettings(
        urls=(DOTENV["NOTIFY_URL"],),
        apprise_events=("cycle.opened", "watcher.*"),
        webhooks=(WebhookSettings(DOTENV["WEBHOOK_URL"], DOTENV["WEBHOOK_SECRET"], ("*",)),),
        timeout=10.0,
        apprise=(AppriseSettings(DOTENV["OPS_NOTIFY_URL"], "ops", ("watcher.*",)),),
    )
    assert settings.status == StatusSettings(
        "127.0.0.1:9464", 300.0, DOTENV["STATUS_TOKEN"], ("status.example.com",)
    )
    assert settings.daemon == DaemonSettings(30.0)
    assert set(settings.secrets) == set(DOTENV.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.database_url = "sqlite://"  # type: ignore[misc]


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    """Only one chain's required keys are needed; everything else has its documented default."""
    path = write(
        tmp_path,
        {
            "chains": [
                {
                    "name": "base",
                    "chain_id": 8453,
                    "rpc_urls": ["http://127.0.0.1:8545"],
                    "receiving_address": WALLET,
                }
            ]
        },
        env={},
    )
    settings = load_settings(path)
    chain = settings.chains[0]
    assert (chain.finality, chain.poll_seconds, chain.native_symbol, chain.tokens) == (
        "finalized",
        6.0,
        "ETH",
        (),
    )
    assert chain.idle_poll_seconds == 60.0
    assert settings.billing == BillingSettings()
    assert settings.billing.tag_cooling_days == 180
    assert settings.notify.webhooks == ()
    assert settings.status.listen is None
    assert settings.daemon.lease_seconds == 30.0
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'watcher.db'}"


def test_standard_webhooks_secret_is_accepted(tmp_path: Path) -> None:
    """A whsec_ secret whose base64 part decodes to a 32-byte key loads unchanged."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="
    settings = load_settings(
        write(tmp_path, base_config(), env={**DOTENV, "WEBHOOK_SECRET": secret})
    )
    assert settings.notify.webhooks[0].secret == secret


def test_bad_standard_webhooks_secret_is_not_echoed(tmp_path: Path) -> None:
    """A whsec_ secret that does not decode is refused without quoting it."""
    secret = "whsec_this-is-not-base64!"
    error = refused(write(tmp_path, base_config(), env={**DOTENV, "WEBHOOK_SECRET": secret}))
    assert error.problems == [
        "notify.webhooks[0].secret: the part after whsec_ is not base64 (value not shown)"
    ]
    assert "this-is-not" not in str(error)


def test_status_token_in_the_toml_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A token written into the TOML itself is refused (it belongs in the environment) and
    the message never quotes it."""
    config = base_config()
    config["status"]["token"] = "written-into-the-toml-0123"
    error = refused(write(tmp_path, config))
    assert error.problems == [
        'status.token: must come from the environment, like "${STATUS_TOKEN}" (value not shown)'
    ]
    assert "written-into" not in str(error)


def test_short_status_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A token shorter than 16 characters (or with spaces) is refused, value not shown."""
    for token in ("short-token", "has spaces in the token value"):
        error = refused(write(tmp_path, base_config(), env={**DOTENV, "STATUS_TOKEN": token}))
        assert error.problems == [
            "status.token: must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / = - "
            "(value not shown)"
        ]
        assert token not in str(error)


def test_status_guard_defaults_to_no_token_and_no_extra_hosts(tmp_path: Path) -> None:
    """Without token and allowed_hosts the listener is open and answers only its own host."""
    config = base_config()
    del config["status"]["token"], config["status"]["allowed_hosts"]
    settings = load_settings(write(tmp_path, config))
    assert (settings.status.token, settings.status.allowed_hosts) == (None, ())


def test_lowercase_address_is_checksummed(tmp_path: Path) -> None:
    """An all-lowercase receiving address is accepted and stored EIP-55 checksummed."""
    config = base_config()
    config["chains"][0]["receiving_address"] = WALLET.lower()
    config["chains"][0]["tokens"][0]["address"] = USDC.lower()
    settings = load_settings(write(tmp_path, config))
    assert settings.chains[0].receiving_address == WALLET
    assert settings.chains[0].tokens[0].address == USDC


def test_finality_may_be_safe_or_a_confirmation_count(tmp_path: Path) -> None:
    """finality accepts "safe" and an integer number of confirmations."""
    config = base_config()
    config["chains"][0]["finality"] = 12
    assert load_settings(write(tmp_path, config)).chains[0].finality == 12
    config["chains"][0]["finality"] = "safe"
    assert load_settings(write(tmp_path, config)).chains[0].finality == "safe"


def test_unknown_chain_name_names_the_value(tmp_path: Path) -> None:
    """Asking Settings for a chain that is not configured is bad input naming it and the known."""
    settings = load_settings(write(tmp_path, base_config()))
    with pytest.raises(BadInput, match=r"unknown chain 'eth' \(configured: base\)"):
        settings.chain("eth")


# --- one bad value per key ------------------------------------------------------------------

BAD_VALUES: list[tuple[str, Any, str]] = [
    # (key, bad value, part of the reason)
    ("database.url", "mysql://db/watcher", "'mysql' is not a supported database"),
    ("database.url", "", "is not a database URL"),
    ("database.url", "postgresql+asyncpg://u:pw@db/w", "'postgresql+asyncpg' is not a supported"),
    ("database.url", "postgresql+psycopg:db/w", "is not a database URL"),
    ("chains", [], "at least one [[chains]] table is required"),
    ("chains[0].name", "Base Main", "'Base Main' must be lowercase"),
    ("chains[0].chain_id", 0, "0 must be an integer >= 1"),
    ("chains[0].chain_id", "8453", "'8453' must be an integer >= 1"),
    ("chains[0].rpc_urls", [], "must be a non-empty list"),
    ("chains[0].rpc_urls[1]", "ws://node.example", "is not an http(s) URL"),
    ("chains[0].receiving_address", WALLET[:-1], "is not an EVM address"),
    ("chains[0].receiving_address", WALLET.replace("B3e9", "b3E9"), "wrong EIP-55 checksum"),
    ("chains[0].finality", "latest", '\'latest\' must be "finalized", "safe"'),
    ("chains[0].finality", 0, '0 must be "finalized"'),
    ("chains[0].poll_seconds", 0, "0 must be a positive number"),
    ("chains[0].idle_poll_seconds", 0, "0 must be a positive number"),
    ("chains[0].idle_poll_seconds", "60", "'60' must be a positive number"),
    ("chains[0].start_block", -1, "-1 must be an integer >= 0"),
    ("chains[0].native_symbol", "E TH", "'E TH' is not a token symbol"),
    ("chains[0].internal", "sometimes", "'sometimes' must be one of trace_filter"),
    ("chains[0].balance_guard", "yes", "'yes' must be true or false"),
    ("chains[0].explorer_url", "basescan.org", "'basescan.org' is not an http(s) URL"),
    ("chains[0].rpc_timeout", -1, "-1 must be a positive number"),
    ("chains[0].max_log_range", 0, "0 must be an integer >= 1"),
    ("chains[0].max_trace_range", 0, "0 must be an integer >= 1"),
    ("chains[0].max_trace_range", "300", "'300' must be an integer >= 1"),
    ("chains[0].reorg_depth", 0, "0 must be an integer >= 1"),
    ("chains[0].max_lag_blocks", 0, "0 must be an integer >= 1"),
    ("chains[0].max_batch", 0, "0 must be an integer >= 1"),
    ("chains[0].cross_check", "yes", "'yes' must be true or false"),
    ("chains[0].unconfirmed_alert_seconds", 0, "0 must be a positive number"),
    ("chains[0].tokens", "USDC", "must be a list of [[chains.tokens]] tables"),
    ("chains[0].tokens[0].symbol", "US DC", "'US DC' is not a token symbol"),
    ("chains[0].tokens[0].symbol", "eth", "duplicate asset symbol 'eth'"),
    ("chains[0].tokens[0].address", "0x1234", "'0x1234' is not an EVM address"),
    ("chains[0].tokens[0].decimals", 37, "37 must be 0..36"),
    ("chains[0].tokens[0].decimals", "6", "'6' must be an integer >= 0"),
    ("chains[0].tokens[0].balance_guard", "no", "'no' must be true or false"),
    ("billing.due_days", 0, "0 must be an integer >= 1"),
    ("billing.renewal_lead_days", -1, "-1 must be an integer >= 0"),
    ("billing.grace_days", "3", "'3' must be an integer >= 0"),
    ("billing.underpay_tolerance", "1", "'1' must be at least 0 and below 1"),
    ("billing.underpay_tolerance", 0.01, "0.01 must be a decimal string"),
    ("billing.tag_cooling_days", -1, "-1 must be an integer >= 0"),
    ("billing.tag_cooling_days", "180", "'180' must be an integer >= 0"),
    ("notify.urls", "json://x", "must be a list of Apprise URLs"),
    ("notify.urls[0]", "not-a-url", "is not an Apprise URL"),
    ("notify.apprise_events", "watcher.*", "'watcher.*' must be a list of event types"),
    ("notify.timeout", 0, "0 must be a positive number"),
    ("notify.webhooks", "https://x", "must be a list of [[notify.webhooks]] tables"),
    ("notify.webhooks[0].url", "ftp://hooks.example", "is not an http(s) URL"),
    ("notify.webhooks[0].secret", "short", "at least 16 characters"),
    ("notify.webhooks[0].secret", "whsec_not*base64*at-all", "the part after whsec_ is not base64"),
    ("notify.webhooks[0].secret", "whsec_a2tra2tra2tra2tr", "to 64 bytes, not 12"),
    ("notify.webhooks[0].events", [""], "must be a list of event types"),
    ("notify.webhooks[0].name", "CRM hook", "'CRM hook' must be 1-64 lowercase letters"),
    ("notify.apprise", "json://x", "must be a list of [[notify.apprise]] tables"),
    ("notify.apprise[0].name", "", "'' must be 1-64 lowercase letters"),
    ("notify.apprise[0].url", "not-a-url", "is not an Apprise URL"),
    ("notify.apprise[0].events", "*", "'*' must be a list of event types"),
    ("status.listen", "9464", "'9464' must be host:port"),
    ("status.stale_seconds", 0, "0 must be a positive number"),
    ("status.token", "literal-token-0123456789", "must come from the environment"),
    ("status.token", 16, "must be a string"),
    ("status.allowed_hosts", "status.example.com", "must be a list of host names"),
    ("status.allowed_hosts[0]", "https://status.example.com", "is not a host name"),
    ("status.allowed_hosts[0]", "status.example.com:443", "is not a host name (no port"),
    ("daemon.lease_seconds", 5, "5 must be at least 10 seconds (two daemon heartbeats)"),
    ("daemon.lease_seconds", "30", "'30' must be at least 10 seconds"),
]


@pytest.mark.parametrize(
    ("key", "value", "why"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES]
)
def test_bad_value_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: Any, why: str
) -> None:
    """One bad value gives exactly one problem, naming the key and why."""
    config = base_config()
    set_path(config, key, value)
    error = refused(write(tmp_path, config))
    assert len(error.problems) == 1, error.problems
    assert error.problems[0].startswith(f"{key}: ")
    assert why in error.problems[0]
    assert str(error).startswith("invalid configuration: ")


UNKNOWN_KEYS = [
    ("database.path", "x.db", "database.path: unknown key"),
    ("chains[0].rpc_url", "http://x", "chains[0].rpc_url: unknown key"),
    ("chains[0].tokens[0].decimal", 6, "chains[0].tokens[0].decimal: unknown key"),
    ("billing.due", 7, "billing.due: unknown key"),
    ("notify.url", "json://x", "notify.url: unknown key"),
    ("notify.webhooks[0].hmac", "x", "notify.webhooks[0].hmac: unknown key"),
    ("status.port", 9464, "status.port: unknown key"),
    ("alerts", {"email": "ops@example.com"}, "alerts: unknown section"),
]


@pytest.mark.parametrize(
    ("key", "value", "problem"), UNKNOWN_KEYS, ids=[k for k, *_ in UNKNOWN_KEYS]
)
def test_unknown_key_or_section_is_refused(
    tmp_path: Path, key: str, value: Any, problem: str
) -> None:
    """A misspelt key or section is an error, not silently ignored."""
    config = base_config()
    set_path(config, key, value)
    assert refused(write(tmp_path, config)).problems == [problem]


def test_cross_check_needs_a_second_rpc_url(tmp_path: Path) -> None:
    """cross_check = true with one RPC URL is refused: there is no second provider to ask."""
    config = base_config()
    config["chains"][0]["rpc_urls"] = config["chains"][0]["rpc_urls"][:1]
    config["chains"][0]["cross_check"] = True
    assert refused(write(tmp_path, config)).problems == [
        "chains[0].cross_check: true needs at least two rpc_urls (a second provider)"
    ]


def test_cross_check_and_token_guard_load(tmp_path: Path) -> None:
    """cross_check, unconfirmed_alert_seconds and a token's balance_guard reach the settings."""
    config = base_config()
    config["chains"][0].update(cross_check=True, unconfirmed_alert_seconds=60)
    config["chains"][0]["tokens"][0]["balance_guard"] = False
    chain = load_settings(write(tmp_path, config)).chains[0]
    assert (chain.cross_check, chain.unconfirmed_alert_seconds) == (True, 60.0)
    assert chain.tokens[0].balance_guard is False


def test_duplicate_chain_names_are_refused(tmp_path: Path) -> None:
    """Two chains may not share a name (it is what the command line uses)."""
    config = base_config()
    config["chains"].append(copy.deepcopy(config["chains"][0]))
    assert refused(write(tmp_path, config)).problems == [
        "chains[1].name: duplicate chain name 'base'"
    ]


def test_sections_that_are_not_tables_are_refused(tmp_path: Path) -> None:
    """[billing] and friends must be tables, not scalars."""
    config = base_config()
    config["billing"] = 7
    config["status"] = "on"
    assert refused(write(tmp_path, config)).problems == [
        "billing: must be a table",
        "status: must be a table",
    ]


def test_every_example_key_has_a_bad_value_test() -> None:
    """Each key of config/watcher.example.toml appears in the bad-value table above."""

    def keys(value: Any, prefix: str) -> set[str]:
        if isinstance(value, dict):
            out = set()
            for k, v in value.items():
                out |= {f"{prefix}.{k}" if prefix else k} | keys(
                    v, f"{prefix}.{k}" if prefix else k
                )
            return out
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return keys(value[0], f"{prefix}[0]")
        return set()

    example = keys(tomllib.loads(EXAMPLE.read_text()), "")
    tested = {re.sub(r"\[[1-9]\]", "[0]", k) for k, _, _ in BAD_VALUES}
    sections = {"database", "billing", "notify", "status", "daemon"}
    assert example - sections <= tested, example - tested


def test_every_settings_field_is_in_the_example() -> None:
    """The example config documents every setting the code reads."""
    example = tomllib.loads(EXAMPLE.read_text())
    chain, token = example["chains"][0], example["chains"][0]["tokens"][0]
    assert {f.name for f in dataclasses.fields(ChainSettings)} <= set(chain)
    assert {f.name for f in dataclasses.fields(TokenSettings)} <= set(token)
    assert {f.name for f in dataclasses.fields(BillingSettings)} <= set(example["billing"])
    assert {f.name for f in dataclasses.fields(NotifySettings)} <= set(example["notify"])
    assert {f.name for f in dataclasses.fields(WebhookSettings)} <= set(
        example["notify"]["webhooks"][0]
    )
    assert {f.name for f in dataclasses.fields(AppriseSettings)} <= set(
        example["notify"]["apprise"][0]
    )
    assert {f.name for f in dataclasses.fields(StatusSettings)} <= set(example["status"])
    assert set(example["database"]) == {"url"}


# --- all at once ----------------------------------------------------------------------------


def test_every_problem_is_reported_in_one_error(tmp_path: Path) -> None:
    """Several bad keys across sections are all named in ONE ConfigError message."""
    config = base_config()
    config["chains"][0]["chain_id"] = -5
    config["chains"][0]["tokens"][0]["decimals"] = 99
    config["billing"]["due_days"] = 0
    config["notify"]["webhooks"][0]["secret"] = "short"
    config["status"]["listen"] = "nowhere"
    config["database"]["url"] = "mysql://x"
    config["chains"][0]["rpc_urls"] = ["${NOT_SET_ANYWHERE}"]
    error = refused(write(tmp_path, config))
    message = str(error)
    expected = [
        "database.url",
        "chains[0].chain_id",
        "chains[0].rpc_urls[0]: ${NOT_SET_ANYWHERE} is not set",
        "chains[0].rpc_urls[0]: is not an http(s) URL",
        "chains[0].tokens[0].decimals",
        "billing.due_days",
        "notify.webhooks[0].secret",
        "status.listen",
    ]
    for fragment in expected:
        assert fragment in message
    assert len(error.problems) == len(expected)
    assert "\n" not in message


# --- ${VAR} interpolation -------------------------------------------------------------------


def test_missing_variable_is_named(tmp_path: Path) -> None:
    """A ${VAR} set neither in .env nor the environment is refused, naming the key and the VAR."""
    env = {k: v for k, v in DOTENV.items() if k != "WEBHOOK_URL"}
    error = refused(write(tmp_path, base_config(), env=env))
    assert error.problems == [
        "notify.webhooks[0].url: ${WEBHOOK_URL} is not set in the environment or .env",
        "notify.webhooks[0].url: is not an http(s) URL (value not shown: may hold a key)",
    ]


def test_empty_variable_counts_as_missing(tmp_path: Path) -> None:
    """A variable set to the empty string is as good as unset."""
    env = {**DOTENV, "BASE_RPC_URL_BACKUP": ""}
    error = refused(write(tmp_path, base_config(), env=env))
    assert "chains[0].rpc_urls[1]: ${BASE_RPC_URL_BACKUP} is not set" in str(error)


def test_environment_overrides_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable from the process environment wins over the same name in .env."""
    monkeypatch.setenv("BASE_RPC_URL", "https://from-env.example/k")
    settings = load_settings(write(tmp_path, base_config()))
    assert settings.chains[0].rpc_urls[0] == "https://from-env.example/k"


def test_variable_inside_a_longer_string(tmp_path: Path) -> None:
    """${VAR} may be part of a string; the rest of the string is kept."""
    config = base_config()
    config["chains"][0]["rpc_urls"] = ["https://node.example/v2/${KEY_PART}"]
    settings = load_settings(write(tmp_path, config, env={**DOTENV, "KEY_PART": "k123"}))
    assert settings.chains[0].rpc_urls == ("https://node.example/v2/k123",)
    assert "k123" in settings.secrets


def test_env_file_option_replaces_the_default(tmp_path: Path) -> None:
    """An explicit env file is used instead of the .env beside the config."""
    path = write(tmp_path, base_config(), env={})
    other = tmp_path / "elsewhere.env"
    other.write_text("".join(f"{k}={v}\n" for k, v in DOTENV.items()))
    assert load_settings(path, other).chains[0].rpc_urls[0] == DOTENV["BASE_RPC_URL"]
    error = refused(path, tmp_path / "missing.env")
    assert "missing.env: env file not found" in str(error)


def test_missing_config_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    """No config file, or one that is not TOML, is a ConfigError naming the file."""
    assert "config file not found" in str(refused(tmp_path / "nope.toml"))
    path = write(tmp_path, "[chains\nname = 1\n")
    assert "not valid TOML" in str(refused(path))


# --- relative database paths ----------------------------------------------------------------


def test_relative_sqlite_path_is_relative_to_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///data/w.db means <config dir>/data/w.db, whatever the working directory."""
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = base_config()
    config["database"]["url"] = "sqlite:///data/w.db"
    settings = load_settings(write(config_dir, config))
    assert settings.database_url == f"sqlite:///{config_dir.resolve()}/data/w.db"


def test_absolute_and_memory_sqlite_urls_are_kept(tmp_path: Path) -> None:
    """An absolute sqlite path and :memory: are left as they are."""
    config = base_config()
    config["database"]["url"] = "sqlite:////var/lib/proofwatch/w.db"
    assert load_settings(write(tmp_path, config)).database_url == (
        "sqlite:////var/lib/proofwatch/w.db"
    )
    config["database"]["url"] = "sqlite:///:memory:"
    assert load_settings(write(tmp_path, config)).database_url == "sqlite:///:memory:"


def test_postgresql_urls_use_psycopg_3(tmp_path: Path) -> None:
    """postgresql+psycopg:// is kept; a bare postgresql:// URL gets the psycopg 3 driver."""
    config = base_config()
    config["database"]["url"] = "postgresql+psycopg://app:pw@db.internal:5432/watcher"
    assert load_settings(write(tmp_path, config)).database_url == (
        "postgresql+psycopg://app:pw@db.internal:5432/watcher"
    )
    config["database"]["url"] = "postgresql://app@db.internal/watcher"
    assert load_settings(write(tmp_path, config)).database_url == (
        "postgresql+psycopg://app@db.internal/watcher"
    )


def test_a_database_password_is_a_secret_and_never_echoed(tmp_path: Path) -> None:
    """The password of a database URL joins Settings.secrets (so logs redact it), and a refused
    URL's error does not show it."""
    config = base_config()
    config["database"]["url"] = "postgresql+psycopg://app:Db-Pass-123@db/watcher"
    assert "Db-Pass-123" in load_settings(write(tmp_path, config)).secrets
    config["database"]["url"] = "postgresql+psycopg:app:Db-Pass-123@db/watcher"
    error = refused(write(tmp_path, config))
    assert "database.url" in str(error)
    assert "Db-Pass-123" not in str(error)


# --- secrets: this program is watch-only ----------------------------------------------------


def _assert_hidden(error: ConfigError, *secrets: str) -> None:
    message = str(error)
    for secret in secrets:
        assert secret not in message
        for word in set(secret.split()) - {"test"}:
            if len(secret.split()) > 1:
                assert not re.search(rf"\b{word}\b", message)
    assert not re.search(r"[0-9a-fA-F]{64}", message)


@pytest.mark.parametrize("key", [KEY, "0x" + KEY, KEY.upper(), "0x" + KEY2])
def test_private_key_in_toml_is_refused_without_echoing_it(tmp_path: Path, key: str) -> None:
    """A 64-hex private key (with or without 0x) in the TOML is refused; the key is not shown."""
    config = base_config()
    config["chains"][0]["receiving_address"] = key
    error = refused(write(tmp_path, config))
    assert "chains[0].receiving_address: looks like a private key" in str(error)
    assert "watch-only" in str(error)
    _assert_hidden(error, key, key.removeprefix("0x"))


def test_private_key_under_an_unknown_key_is_refused(tmp_path: Path) -> None:
    """A key pasted under an invented name like private_key is refused and not echoed."""
    config = base_config()
    config["chains"][0]["private_key"] = "0x" + KEY
    error = refused(write(tmp_path, config))
    assert sorted(error.problems) == [
        "chains[0].private_key: looks like a private key (64 hex characters); "
        "proofwatch is watch-only",
        "chains[0].private_key: unknown key",
    ]
    _assert_hidden(error, KEY)


@pytest.mark.parametrize("key", [KEY, "0x" + KEY])
def test_private_key_in_dotenv_is_refused_even_if_unused(tmp_path: Path, key: str) -> None:
    """A private key anywhere in .env is refused, naming the variable and not the value."""
    error = refused(write(tmp_path, base_config(), env={**DOTENV, "SIGNER_KEY": key}))
    assert error.problems == [
        ".env:SIGNER_KEY: looks like a private key (64 hex characters); proofwatch is watch-only"
    ]
    _assert_hidden(error, key, KEY)


# A bare 64-hex value is accepted as a webhook secret (issue 9: `openssl rand -hex 32`), so
# this case now uses the 0x form, which stays refused even there.
@pytest.mark.parametrize("key", ["0x" + KEY, "0x" + KEY2])
def test_private_key_through_a_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """A ${VAR} whose environment value is a private key is refused, naming key and VAR."""
    monkeypatch.setenv("WEBHOOK_SECRET", key)
    env = {k: v for k, v in DOTENV.items() if k != "WEBHOOK_SECRET"}
    error = refused(write(tmp_path, base_config(), env=env))
    assert error.problems == [
        "notify.webhooks[0].secret: ${WEBHOOK_SECRET} looks like a private key "
        "(64 hex characters); proofwatch is watch-only"
    ]
    _assert_hidden(error, key, KEY)


def test_private_key_through_a_variable_used_as_an_address_is_not_echoed(tmp_path: Path) -> None:
    """Even a validator that quotes bad values never shows a key that arrived via ${VAR}."""
    config = base_config()
    config["chains"][0]["receiving_address"] = "${PAY_TO}"
    error = refused(write(tmp_path, config, env={**DOTENV, "PAY_TO": "0x" + KEY2}))
    assert ".env:PAY_TO: looks like a private key" in str(error)
    assert "chains[0].receiving_address: ${PAY_TO} looks like a private key" in str(error)
    _assert_hidden(error, KEY2)


def test_private_key_inside_a_url_is_refused(tmp_path: Path) -> None:
    """A private key embedded in a URL path is still found."""
    config = base_config()
    config["chains"][0]["rpc_urls"] = [f"https://node.example/{KEY}"]
    error = refused(write(tmp_path, config))
    assert "chains[0].rpc_urls[0]: looks like a private key" in str(error)
    _assert_hidden(error, KEY)


def test_private_key_in_a_watcher_environment_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WATCHER_* environment variable holding a private key is refused by name."""
    monkeypatch.setenv("WATCHER_SIGNER", "0x" + KEY)
    error = refused(write(tmp_path, base_config()))
    assert error.problems == [
        "environment:WATCHER_SIGNER: looks like a private key (64 hex characters); "
        "proofwatch is watch-only"
    ]
    _assert_hidden(error, KEY)


@pytest.mark.parametrize("mnemonic", [MNEMONIC_12, MNEMONIC_24], ids=["12-words", "24-words"])
def test_mnemonic_in_toml_is_refused_without_echoing_it(tmp_path: Path, mnemonic: str) -> None:
    """A 12- or 24-word BIP-39 mnemonic in the TOML is refused; the words are not shown."""
    config = base_config()
    config["notify"]["webhooks"][0]["secret"] = mnemonic
    error = refused(write(tmp_path, config))
    assert error.problems == [
        "notify.webhooks[0].secret: looks like a BIP-39 mnemonic; proofwatch is watch-only"
    ]
    _assert_hidden(error, mnemonic)


@pytest.mark.parametrize("mnemonic", [MNEMONIC_12, MNEMONIC_24], ids=["12-words", "24-words"])
def test_mnemonic_in_dotenv_and_via_variable_is_refused(tmp_path: Path, mnemonic: str) -> None:
    """A mnemonic in .env (quoted, upper case) used as a ${VAR} is refused in both places."""
    config = base_config()
    config["chains"][0]["receiving_address"] = "${SEED}"
    env = {**DOTENV, "SEED": f'"{mnemonic.upper()}"'}
    error = refused(write(tmp_path, config, env=env))
    assert ".env:SEED: looks like a BIP-39 mnemonic" in str(error)
    assert "chains[0].receiving_address: ${SEED} looks like a BIP-39 mnemonic" in str(error)
    _assert_hidden(error, mnemonic.upper(), mnemonic)


@pytest.mark.parametrize(
    "value",
    [
        KEY[:-1],  # 63 hex characters
        KEY + "0",  # 65 hex characters
        WALLET,
        "test test test test test test test test test test junk",  # 11 words
        "test test test test test test test test test test test proofwatch",  # not BIP-39
        "https://base-mainnet.g.alchemy.com/v2/abcdefghijklmnopqrstuvwxyz012345",
    ],
)
def test_values_that_are_not_keys_pass(value: str) -> None:
    """Addresses, near-miss hex strings and non-mnemonic word lists are not mistaken for keys."""
    assert looks_like_secret_key(value) is None


# --- the shipped example --------------------------------------------------------------------


def test_example_config_loads_with_its_env_example(tmp_path: Path) -> None:
    """config/watcher.example.toml loads when config/.env.example sits beside it as .env."""
    shutil.copy(EXAMPLE, tmp_path / "watcher.toml")
    shutil.copy(EXAMPLE_ENV, tmp_path / ".env")
    settings = load_settings(tmp_path / "watcher.toml")
    assert [c.name for c in settings.chains] == ["base"]
    assert settings.chains[0].token("usdc") == TokenSettings("USDC", USDC, 6)
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/data/watcher.db"
    assert len(settings.notify.webhooks) == 1


def test_example_config_without_env_names_every_missing_variable(tmp_path: Path) -> None:
    """Without a .env every ${VAR} of the example is reported at once."""
    shutil.copy(EXAMPLE, tmp_path / "watcher.toml")
    message = str(refused(tmp_path / "watcher.toml"))
    for name in ENV_VARS:
        assert f"${{{name}}} is not set" in message


# --- the environment at the edge ------------------------------------------------------------


def test_config_path_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins, then $WATCHER_CONFIG, then ./config/watcher.toml."""
    assert config_path_from_env(None) == Path("config/watcher.toml")
    monkeypatch.setenv("WATCHER_CONFIG", "/etc/proofwatch.toml")
    assert config_path_from_env(None) == Path("/etc/proofwatch.toml")
    assert config_path_from_env(Path("given.toml")) == Path("given.toml")


def test_watcher_now_replaces_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """$WATCHER_NOW fixes the clock (converted to UTC); without it the clock is real UTC time."""
    real = clock_from_env()()
    assert real.tzinfo is UTC
    monkeypatch.setenv("WATCHER_NOW", "2026-01-31T12:00:00+02:00")
    assert clock_from_env()() == datetime(2026, 1, 31, 10, tzinfo=UTC)
    monkeypatch.setenv("WATCHER_NOW", "2026-01-31T10:00:00Z")
    assert clock_from_env()() == datetime(2026, 1, 31, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "why"), [("yesterday", "is not an ISO 8601"), ("2026-01-31T10:00:00", "no time zone")]
)
def test_bad_watcher_now_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    """A WATCHER_NOW that is not an aware ISO 8601 timestamp is refused, naming the value."""
    monkeypatch.setenv("WATCHER_NOW", value)
    with pytest.raises(BadInput, match=why) as info:
        clock_from_env()
    assert repr(value) in str(info.value)


# --- webhook secrets made with openssl rand -hex 32 -------------------------------------------

HEX_SECRET = "9f2c" * 16  # the shape of `openssl rand -hex 32`


def test_a_64_hex_webhook_secret_from_dotenv_is_accepted(tmp_path: Path) -> None:
    """`WEBHOOK_SECRET=$(openssl rand -hex 32)` in .env, used as a webhook secret, loads."""
    settings = load_settings(
        write(tmp_path, base_config(), env={**DOTENV, "WEBHOOK_SECRET": HEX_SECRET})
    )
    assert settings.notify.webhooks[0].secret == HEX_SECRET
    assert HEX_SECRET in settings.secrets  # still redacted everywhere


def test_a_64_hex_webhook_secret_written_in_the_toml_is_accepted(tmp_path: Path) -> None:
    """A bare 64-hex value directly in a webhook's `secret` key is accepted too."""
    config = base_config()
    config["notify"]["webhooks"][0]["secret"] = HEX_SECRET
    assert load_settings(write(tmp_path, config)).notify.webhooks[0].secret == HEX_SECRET


def test_a_64_hex_value_used_anywhere_but_a_webhook_secret_is_still_a_private_key(
    tmp_path: Path,
) -> None:
    """The same 64-hex value as an address, a URL part or an unused .env entry is refused,
    and used both as a secret and elsewhere it is refused where it is not the secret."""
    config = base_config()
    config["chains"][0]["receiving_address"] = "${WEBHOOK_SECRET}"
    env = {**DOTENV, "WEBHOOK_SECRET": HEX_SECRET, "SPARE": HEX_SECRET.upper()}
    error = refused(write(tmp_path, config, env=env))
    assert sorted(error.problems) == [
        ".env:SPARE: looks like a private key (64 hex characters); proofwatch is watch-only",
        "chains[0].receiving_address: ${WEBHOOK_SECRET} looks like a private key "
        "(64 hex characters); proofwatch is watch-only",
        "chains[0].receiving_address: value '<redacted>' is not an EVM address "
        "(0x followed by 40 hex characters)",
    ]
    _assert_hidden(error, HEX_SECRET, HEX_SECRET.upper())
    config = base_config()
    config["chains"][0]["explorer_url"] = f"https://scan.example/{HEX_SECRET}"
    assert refused(write(tmp_path, config)).problems == [
        "chains[0].explorer_url: looks like a private key (64 hex characters); "
        "proofwatch is watch-only"
    ]


def test_a_webhook_secret_that_embeds_64_hex_in_more_text_is_refused(tmp_path: Path) -> None:
    """Only the whole value may be the 64 hex: `prefix-<64 hex>` in a secret is refused."""
    config = base_config()
    config["notify"]["webhooks"][0]["secret"] = f"key={HEX_SECRET}"
    assert (
        refused(write(tmp_path, config))
        .problems[0]
        .startswith("notify.webhooks[0].secret: looks like a private key")
    )


# --- channel names ----------------------------------------------------------------------------


def test_channel_names_are_stable_secret_free_and_configurable(tmp_path: Path) -> None:
    """A webhook without `name` is named from its host and a hash of its URL (never its
    secret or password); the same URL gives the same name, another URL another one, and a
    configured `name` wins."""
    token_url = "https://hooks.example.com/in/SECRETTOKEN123?sig=abc"
    derived = WebhookSettings(token_url, "s" * 16).channel_name
    assert re.fullmatch(r"webhook:hooks\.example\.com-[0-9a-f]{8}", derived)
    assert WebhookSettings(token_url, "another-secret-16c").channel_name == derived
    assert WebhookSettings(token_url.replace("123", "124"), "s" * 16).channel_name != derived
    assert WebhookSettings(token_url, "s" * 16, name="crm").channel_name == "crm"
    mail = "mailtos://alice:pw1@smtp.example.com?to=ops@example.com"
    named = AppriseSettings(mail).channel_name
    assert re.fullmatch(r"apprise:mailtos-[0-9a-f]{8}", named)
    assert AppriseSettings(mail.replace("pw1", "pw2")).channel_name == named  # password rotated
    tgram = AppriseSettings("tgram://123456:BOTTOKEN/987").channel_name
    assert "BOTTOKEN" not in tgram and tgram.startswith("apprise:tgram-")
    settings = load_settings(write(tmp_path, base_config()))
    names = [h.channel_name for h in settings.notify.webhooks]
    names += [a.channel_name for a in settings.notify.apprise_channels()]
    assert names[2] == "ops" and len(set(names)) == 3


def test_two_channels_with_one_name_are_refused(tmp_path: Path) -> None:
    """Two webhooks to the same URL (hence the same derived name), or two equal `name`s, are
    refused: deliveries are bound to the name."""
    config = base_config()
    config["notify"]["webhooks"].append(dict(config["notify"]["webhooks"][0], secret="x" * 16))
    assert refused(write(tmp_path, config)).problems == [
        "notify.webhooks[1]: channel name "
        f"{WebhookSettings(DOTENV['WEBHOOK_URL'], 'x').channel_name!r} is also "
        "notify.webhooks[0]'s: give each a `name`"
    ]
    config = base_config()
    config["notify"]["webhooks"][0]["name"] = "ops"
    assert refused(write(tmp_path, config)).problems == [
        "notify.apprise[0]: channel name 'ops' is also notify.webhooks[0]'s: give each a `name`"
    ]
