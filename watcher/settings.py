"""TOML + .env -> one frozen ``Settings``; every bad key reported at once.

This is the only module that reads ``os.environ``. Secrets (RPC URLs with keys, webhook
secrets, SMTP passwords) come from the environment through ``${VAR}`` references.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from watcher.domain.addresses import parse_address
from watcher.domain.money import parse_fraction
from watcher.errors import BadInput, ConfigError

DEFAULT_CONFIG = Path("config/watcher.toml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEX64 = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SYMBOL = re.compile(r"^[A-Za-z0-9.]{1,16}$")
INTERNAL_MODES = ("trace_filter", "debug_trace", "off")


@dataclass(frozen=True, slots=True)
class TokenSettings:
    symbol: str
    address: str
    decimals: int
    balance_guard: bool = True  # false for rebasing or fee-on-transfer tokens


@dataclass(frozen=True, slots=True)
class ChainSettings:
    name: str
    chain_id: int
    rpc_urls: tuple[str, ...]
    receiving_address: str
    finality: str | int  # "finalized" | "safe" | confirmations
    poll_seconds: float
    start_block: int
    native_symbol: str
    tokens: tuple[TokenSettings, ...]
    internal: str = "off"
    balance_guard: bool = True
    explorer_url: str | None = None
    rpc_timeout: float = 10.0
    max_log_range: int = 2000
    reorg_depth: int = 128
    cross_check: bool = False  # a second URL must confirm each receipt before it is final
    unconfirmed_alert_seconds: float = 900.0  # final-block receipt unconfirmed this long: alert

    def token(self, symbol: str) -> TokenSettings | None:
        return next((t for t in self.tokens if t.symbol.upper() == symbol.upper()), None)


@dataclass(frozen=True, slots=True)
class BillingSettings:
    due_days: int = 7
    renewal_lead_days: int = 5
    grace_days: int = 3
    underpay_tolerance: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str
    events: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    urls: tuple[str, ...] = ()
    apprise_events: tuple[str, ...] = (
        "cycle.opened",
        "transfer.unassigned",
        "invoice.needs_review",
        "retainer.lapsed",
        "watcher.*",
    )
    webhooks: tuple[WebhookSettings, ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class StatusSettings:
    listen: str | None = None
    stale_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path
    database_url: str
    chains: tuple[ChainSettings, ...]
    billing: BillingSettings = field(default_factory=BillingSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    secrets: tuple[str, ...] = ()  # every interpolated value, for redaction

    def chain(self, name: str) -> ChainSettings:
        for chain in self.chains:
            if chain.name == name:
                return chain
        known = ", ".join(c.name for c in self.chains) or "none"
        raise BadInput(f"unknown chain {name!r} (configured: {known})")


# --- the environment, read here and nowhere else -------------------------------------------


def config_path_from_env(given: Path | None) -> Path:
    """``--config``, else ``$WATCHER_CONFIG``, else ``./config/watcher.toml``."""
    if given is not None:
        return given
    env = os.environ.get("WATCHER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def clock_from_env() -> Callable[[], datetime]:
    """The clock every command uses: ``$WATCHER_NOW`` when set (rehearsals), else real UTC time."""
    fixed = os.environ.get("WATCHER_NOW")
    if not fixed:
        return lambda: datetime.now(UTC)
    try:
        value = datetime.fromisoformat(fixed.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"WATCHER_NOW {fixed!r} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise BadInput(f"WATCHER_NOW {fixed!r} has no time zone; add Z")
    value = value.astimezone(UTC)
    return lambda: value


# --- secrets that must never be here -------------------------------------------------------


@cache
def _bip39_words() -> frozenset[str]:
    text = resources.files("eth_account.hdaccount").joinpath("wordlist/english.txt").read_text()
    return frozenset(text.split())


def looks_like_secret_key(value: str) -> str | None:
    """Why ``value`` looks like a private key or a mnemonic, or None."""
    stripped = value.strip()
    if _HEX64.fullmatch(stripped) or any(
        _HEX64.fullmatch(part) for part in re.split(r"[\s,;=:/?&]+", stripped) if part
    ):
        return "looks like a private key (64 hex characters); proofwatch is watch-only"
    words = stripped.lower().split()
    if len(words) in (12, 15, 18, 21, 24) and all(w in _bip39_words() for w in words):
        return "looks like a BIP-39 mnemonic; proofwatch is watch-only"
    return None


# --- loading -------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self._hidden: set[str] = set()

    def add(self, key: str, why: str) -> None:
        self.items.append(f"{key}: {why}")

    def hide(self, value: str) -> None:
        """Never echo ``value`` (a key or mnemonic found in the config) in any message."""
        stripped = value.strip()
        parts = [stripped, repr(stripped)[1:-1]]
        parts += [part for part in re.split(r"[\s,;=:/?&]+", stripped) if _HEX64.fullmatch(part)]
        self._hidden.update(part for part in parts if part)

    def messages(self) -> list[str]:
        out = []
        for item in self.items:
            for secret in sorted(self._hidden, key=len, reverse=True):
                item = item.replace(secret, "<redacted>")
            out.append(item)
        return out


def _walk(value: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{key}[{i}]")


def load_settings(path: Path, env_file: Path | None = None) -> Settings:
    """Load and validate a config; raise ``ConfigError`` listing every problem at once."""
    problems = _Problems()
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    env_path = env_file if env_file is not None else path.parent / ".env"
    file_env: dict[str, str] = {}
    if env_file is not None and not env_path.is_file():
        raise ConfigError([f"{env_path}: env file not found"])
    if env_path.is_file():
        file_env = {k: v for k, v in dotenv_values(env_path).items() if v is not None}
        for key, value in file_env.items():
            why = looks_like_secret_key(value)
            if why:
                problems.add(f"{env_path.name}:{key}", why)
                problems.hide(value)
    environ: dict[str, str] = {**file_env, **os.environ}
    for key, value in os.environ.items():
        if key.startswith(("WATCHER_", "PROOFWATCH_")) and (why := looks_like_secret_key(value)):
            problems.add(f"environment:{key}", why)
            problems.hide(value)
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None

    secrets: list[str] = []

    def interpolate(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: interpolate(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        why = looks_like_secret_key(value)
        if why:
            problems.add(key, why)
            problems.hide(value)

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ or environ[name] == "":
                problems.add(key, f"${{{name}}} is not set in the environment or .env")
                return ""
            found = environ[name]
            if reason := looks_like_secret_key(found):
                problems.add(key, f"${{{name}}} {reason}")
                problems.hide(found)
            secrets.append(found)
            return found

        return _VAR.sub(sub, value)

    data = interpolate(raw, "")
    settings = _build(path, data, problems, secrets)
    if problems.items:
        raise ConfigError(problems.messages())
    assert settings is not None
    return settings


def _build(path: Path, data: dict[str, Any], p: _Problems, secrets: list[str]) -> Settings | None:
    known_top = {"database", "chains", "billing", "notify", "status"}
    for key in data:
        if key not in known_top:
            p.add(key, "unknown section")
    db = _table(data, "database", p)
    url = db.get("url", "sqlite:///data/watcher.db")
    database_url = _database_url(url, path, p)
    for key in db:
        if key != "url":
            p.add(f"database.{key}", "unknown key")

    chains_raw = data.get("chains", [])
    chains: list[ChainSettings] = []
    if not isinstance(chains_raw, list) or not chains_raw:
        p.add("chains", "at least one [[chains]] table is required")
        chains_raw = []
    for i, raw in enumerate(chains_raw):
        chain = _chain(raw, f"chains[{i}]", p)
        if chain is not None:
            if any(c.name == chain.name for c in chains):
                p.add(f"chains[{i}].name", f"duplicate chain name {chain.name!r}")
            chains.append(chain)

    billing = _billing(_table(data, "billing", p), p)
    notify = _notify(_table(data, "notify", p), p)
    status = _status(_table(data, "status", p), p)
    if p.items:
        return None
    return Settings(
        config_path=path.resolve(),
        database_url=database_url,
        chains=tuple(chains),
        billing=billing,
        notify=notify,
        status=status,
        secrets=tuple(s for s in secrets if s),
    )


def _table(data: Mapping[str, Any], key: str, p: _Problems) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        p.add(key, "must be a table")
        return {}
    return value


def _database_url(url: Any, path: Path, p: _Problems) -> str:
    if not isinstance(url, str) or not url:
        p.add("database.url", f"{url!r} is not a database URL")
        return ""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            return "sqlite:///" + str((path.parent / rel).resolve())
    if not url.startswith(("sqlite:", "postgresql")):
        p.add(
            "database.url",
            f"{url.split(':')[0]!r} is not a supported database (sqlite, postgresql)",
        )
    return url


def _int(
    raw: Mapping[str, Any], key: str, full: str, p: _Problems, default: int | None, minimum: int = 0
) -> int:
    value = raw.get(key, default)
    if value is None:
        p.add(full, "is required")
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        p.add(full, f"{value!r} must be an integer >= {minimum}")
        return 0
    return value


def _number(raw: Mapping[str, Any], key: str, full: str, p: _Problems, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        p.add(full, f"{value!r} must be a positive number of seconds")
        return default
    return float(value)


def _address(value: Any, full: str, p: _Problems) -> str:
    try:
        return parse_address(value, what="value")
    except BadInput as exc:
        p.add(full, str(exc))
        return ""


def _unknown(raw: Mapping[str, Any], allowed: set[str], prefix: str, p: _Problems) -> None:
    for key in raw:
        if key not in allowed:
            p.add(f"{prefix}.{key}", "unknown key")


def _chain(raw: Any, prefix: str, p: _Problems) -> ChainSettings | None:
    if not isinstance(raw, dict):
        p.add(prefix, "must be a table")
        return None
    _unknown(
        raw,
        {
            "name",
            "chain_id",
            "rpc_urls",
            "receiving_address",
            "finality",
            "poll_seconds",
            "start_block",
            "native_symbol",
            "tokens",
            "internal",
            "balance_guard",
            "explorer_url",
            "rpc_timeout",
            "max_log_range",
            "reorg_depth",
            "cross_check",
            "unconfirmed_alert_seconds",
        },
        prefix,
        p,
    )
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        p.add(f"{prefix}.name", f"{name!r} must be lowercase letters, digits, - or _")
        name = "?"
    chain_id = _int(raw, "chain_id", f"{prefix}.chain_id", p, None, minimum=1)
    urls = raw.get("rpc_urls")
    if not isinstance(urls, list) or not urls:
        p.add(f"{prefix}.rpc_urls", "must be a non-empty list of http(s) URLs")
        urls = []
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            p.add(
                f"{prefix}.rpc_urls[{i}]", "is not an http(s) URL (value not shown: may hold a key)"
            )
    address = _address(raw.get("receiving_address"), f"{prefix}.receiving_address", p)
    finality = raw.get("finality", "finalized")
    if isinstance(finality, bool) or not (
        finality in ("finalized", "safe") or (isinstance(finality, int) and finality >= 1)
    ):
        p.add(f"{prefix}.finality", f'{finality!r} must be "finalized", "safe" or an integer >= 1')
    internal = raw.get("internal", "off")
    if internal not in INTERNAL_MODES:
        p.add(f"{prefix}.internal", f"{internal!r} must be one of {', '.join(INTERNAL_MODES)}")
    symbol = raw.get("native_symbol", "ETH")
    if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
        p.add(f"{prefix}.native_symbol", f"{symbol!r} is not a token symbol")
    tokens: list[TokenSettings] = []
    tokens_raw = raw.get("tokens", [])
    if not isinstance(tokens_raw, list):
        p.add(f"{prefix}.tokens", "must be a list of [[chains.tokens]] tables")
        tokens_raw = []
    for j, tok in enumerate(tokens_raw):
        tp = f"{prefix}.tokens[{j}]"
        if not isinstance(tok, dict):
            p.add(tp, "must be a table")
            continue
        _unknown(tok, {"symbol", "address", "decimals", "balance_guard"}, tp, p)
        tsym = tok.get("symbol")
        if not isinstance(tsym, str) or not _SYMBOL.match(tsym):
            p.add(f"{tp}.symbol", f"{tsym!r} is not a token symbol")
            tsym = "?"
        elif tsym.upper() == str(symbol).upper() or any(
            t.symbol.upper() == tsym.upper() for t in tokens
        ):
            p.add(f"{tp}.symbol", f"duplicate asset symbol {tsym!r} on this chain")
        taddr = _address(tok.get("address"), f"{tp}.address", p)
        dec = _int(tok, "decimals", f"{tp}.decimals", p, None)
        if dec > 36:
            p.add(f"{tp}.decimals", f"{dec!r} must be 0..36")
        tguard = tok.get("balance_guard", True)
        if not isinstance(tguard, bool):
            p.add(f"{tp}.balance_guard", f"{tguard!r} must be true or false")
        tokens.append(
            TokenSettings(symbol=tsym, address=taddr, decimals=dec, balance_guard=tguard is True)
        )
    explorer = raw.get("explorer_url")
    if explorer is not None and (not isinstance(explorer, str) or not explorer.startswith("http")):
        p.add(f"{prefix}.explorer_url", f"{explorer!r} is not an http(s) URL")
    guard = raw.get("balance_guard", True)
    if not isinstance(guard, bool):
        p.add(f"{prefix}.balance_guard", f"{guard!r} must be true or false")
    cross_check = raw.get("cross_check", False)
    if not isinstance(cross_check, bool):
        p.add(f"{prefix}.cross_check", f"{cross_check!r} must be true or false")
    elif cross_check and len(urls) < 2:
        p.add(f"{prefix}.cross_check", "true needs at least two rpc_urls (a second provider)")
    return ChainSettings(
        name=name,
        chain_id=chain_id,
        rpc_urls=tuple(u for u in urls if isinstance(u, str)),
        receiving_address=address,
        finality=finality if isinstance(finality, str | int) else "finalized",
        poll_seconds=_number(raw, "poll_seconds", f"{prefix}.poll_seconds", p, 6.0),
        start_block=_int(raw, "start_block", f"{prefix}.start_block", p, 0),
        native_symbol=str(symbol),
        tokens=tuple(tokens),
        internal=str(internal),
        balance_guard=bool(guard),
        explorer_url=explorer.rstrip("/") if isinstance(explorer, str) else None,
        rpc_timeout=_number(raw, "rpc_timeout", f"{prefix}.rpc_timeout", p, 10.0),
        max_log_range=_int(raw, "max_log_range", f"{prefix}.max_log_range", p, 2000, minimum=1),
        reorg_depth=_int(raw, "reorg_depth", f"{prefix}.reorg_depth", p, 128, minimum=1),
        cross_check=cross_check is True,
        unconfirmed_alert_seconds=_number(
            raw, "unconfirmed_alert_seconds", f"{prefix}.unconfirmed_alert_seconds", p, 900.0
        ),
    )


def _billing(raw: Mapping[str, Any], p: _Problems) -> BillingSettings:
    _unknown(
        raw, {"due_days", "renewal_lead_days", "grace_days", "underpay_tolerance"}, "billing", p
    )
    tolerance = raw.get("underpay_tolerance", "0")
    tol = Decimal(0)
    if not isinstance(tolerance, str):
        p.add("billing.underpay_tolerance", f'{tolerance!r} must be a decimal string like "0.01"')
    else:
        try:
            tol = parse_fraction(tolerance, what="value")
        except BadInput as exc:
            p.add("billing.underpay_tolerance", str(exc))
    return BillingSettings(
        due_days=_int(raw, "due_days", "billing.due_days", p, 7, minimum=1),
        renewal_lead_days=_int(raw, "renewal_lead_days", "billing.renewal_lead_days", p, 5),
        grace_days=_int(raw, "grace_days", "billing.grace_days", p, 3),
        underpay_tolerance=tol,
    )


def _events(value: Any, key: str, p: _Problems, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        p.add(key, f'{value!r} must be a list of event types ("*" and "watcher.*" allowed)')
        return default
    return tuple(value)


def _notify(raw: Mapping[str, Any], p: _Problems) -> NotifySettings:
    _unknown(raw, {"urls", "webhooks", "apprise_events", "timeout"}, "notify", p)
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        p.add("notify.urls", "must be a list of Apprise URLs")
        urls = []
    for i, url in enumerate(urls):
        if "://" not in url:
            p.add(f"notify.urls[{i}]", "is not an Apprise URL like scheme://... (value not shown)")
    hooks: list[WebhookSettings] = []
    hooks_raw = raw.get("webhooks", [])
    if not isinstance(hooks_raw, list):
        p.add("notify.webhooks", "must be a list of [[notify.webhooks]] tables")
        hooks_raw = []
    for i, hook in enumerate(hooks_raw):
        hp = f"notify.webhooks[{i}]"
        if not isinstance(hook, dict):
            p.add(hp, "must be a table")
            continue
        _unknown(hook, {"url", "secret", "events"}, hp, p)
        url = hook.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            p.add(f"{hp}.url", "is not an http(s) URL (value not shown: may hold a key)")
        secret = hook.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            p.add(f"{hp}.secret", "must be a string of at least 16 characters (use ${VAR})")
        hooks.append(
            WebhookSettings(
                url=str(url),
                secret=str(secret),
                events=_events(hook.get("events"), f"{hp}.events", p, ("*",)),
            )
        )
    default = NotifySettings()
    return NotifySettings(
        urls=tuple(u for u in urls if u),
        webhooks=tuple(hooks),
        apprise_events=_events(
            raw.get("apprise_events"), "notify.apprise_events", p, default.apprise_events
        ),
        timeout=_number(raw, "timeout", "notify.timeout", p, 10.0),
    )


def _status(raw: Mapping[str, Any], p: _Problems) -> StatusSettings:
    _unknown(raw, {"listen", "stale_seconds"}, "status", p)
    listen = raw.get("listen")
    if listen is not None and (
        not isinstance(listen, str) or not re.fullmatch(r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}", listen)
    ):
        p.add("status.listen", f"{listen!r} must be host:port, like 127.0.0.1:9464")
        listen = None
    return StatusSettings(
        listen=listen,
        stale_seconds=_number(raw, "stale_seconds", "status.stale_seconds", p, 300.0),
    )
