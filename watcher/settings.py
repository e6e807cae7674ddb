"""TOML + .env -> one frozen ``Settings``; every bad key reported at once.

This is the only module that reads ``os.environ``. Secrets (RPC URLs with keys, webhook
secrets, SMTP passwords) come from the environment through ``${VAR}`` references.
"""

from __future__ import annotations

import hashlib
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
from urllib.parse import urlsplit

from dotenv import dotenv_values

from watcher.domain.addresses import parse_address
from watcher.domain.money import parse_fraction
from watcher.errors import BadInput, ConfigError
from watcher.notify.webhook import standard_key

DEFAULT_CONFIG = Path("config/watcher.toml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEX64 = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SYMBOL = re.compile(r"^[A-Za-z0-9.]{1,16}$")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,}")
_HOSTNAME = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?"
    r"|\[[0-9a-f:.]+\]"
)
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
# ``openssl rand -hex 32``: accepted as a webhook ``secret`` only (elsewhere it is a key).
_HEX_SECRET = re.compile(r"[0-9a-fA-F]{64}")
_SECRET_KEY = re.compile(r"notify\.webhooks\[\d+\]\.secret")
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
    max_lag_blocks: int = 100  # health: the cursor may trail the head by at most this much
    max_batch: int = 100  # JSON-RPC entries per POST to start with; shrinks when refused
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
    tag_cooling_days: int = 180


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str
    events: tuple[str, ...] = ("*",)
    name: str | None = None  # as configured; None: derived from the URL (``channel_name``)

    @property
    def channel_name(self) -> str:
        """The stable name its deliveries are bound to."""
        return self.name or default_channel_name("webhook", self.url)


@dataclass(frozen=True, slots=True)
class AppriseSettings:
    """One ``[[notify.apprise]]`` table: an Apprise URL with a name (and its own filter)."""

    url: str
    name: str | None = None  # None: derived from the URL
    events: tuple[str, ...] | None = None  # None: ``[notify] apprise_events``

    @property
    def channel_name(self) -> str:
        return self.name or default_channel_name("apprise", self.url)


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
    apprise: tuple[AppriseSettings, ...] = ()  # named Apprise channels, besides ``urls``

    def apprise_channels(self) -> tuple[AppriseSettings, ...]:
        """Every Apprise channel: the plain ``urls`` (names derived), then the named ones."""
        return (*(AppriseSettings(url) for url in self.urls), *self.apprise)


@dataclass(frozen=True, slots=True)
class StatusSettings:
    listen: str | None = None
    stale_seconds: float = 300.0
    token: str | None = None  # bearer token for the page and /metrics; from the environment
    allowed_hosts: tuple[str, ...] = ()  # Host headers accepted besides the listen address


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


# --- channel names ---------------------------------------------------------------------------


def default_channel_name(kind: str, url: str) -> str:
    """A channel's name when the config gives none: stable while its URL is, never holding a
    secret. ``webhook:<host>-<8 hex>`` or ``apprise:<scheme>-<8 hex>`` (an Apprise URL's host
    may be a token), the hex a SHA-256 of the URL without its password. Rotating a password or
    a webhook ``secret`` keeps the name; changing the URL makes it another channel."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        parts, host = urlsplit(""), ""
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = (userinfo.partition(":")[0] + at if at else "") + hostport  # no password
    bare = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    digest = hashlib.sha256(bare.encode()).hexdigest()[:8]
    label = host if kind == "webhook" and host else (parts.scheme.lower() or "url")
    label = re.sub(r"[^a-z0-9.-]+", "-", label.lower()).strip("-.")[:40] or "url"
    return f"{kind}:{label}-{digest}"


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
    # A bare 64-hex value may be a webhook secret (openssl rand -hex 32): it is refused only
    # if something other than a webhook ``secret`` uses it, or nothing does.
    hex_secrets: dict[str, str] = {}  # variable -> where it is defined, for the message
    if env_path.is_file():
        file_env = {k: v for k, v in dotenv_values(env_path).items() if v is not None}
        for key, value in file_env.items():
            why = looks_like_secret_key(value)
            if why and _HEX_SECRET.fullmatch(value.strip()):
                hex_secrets[key] = f"{env_path.name}:{key}"
            elif why:
                problems.add(f"{env_path.name}:{key}", why)
                problems.hide(value)
    environ: dict[str, str] = {**file_env, **os.environ}
    for key, value in os.environ.items():
        if key.startswith(("WATCHER_", "PROOFWATCH_")) and (why := looks_like_secret_key(value)):
            if _HEX_SECRET.fullmatch(value.strip()):
                hex_secrets[key] = f"environment:{key}"
            else:
                problems.add(f"environment:{key}", why)
                problems.hide(value)
    used_as_secret: set[str] = set()
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
        secret_key = bool(_SECRET_KEY.fullmatch(key))
        whole = _VAR.fullmatch(value.strip())
        why = looks_like_secret_key(value)
        if why and not (secret_key and _HEX_SECRET.fullmatch(value.strip())):
            problems.add(key, why)
            problems.hide(value)

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ or environ[name] == "":
                problems.add(key, f"${{{name}}} is not set in the environment or .env")
                return ""
            found = environ[name]
            hex_ok = secret_key and whole is not None and _HEX_SECRET.fullmatch(found.strip())
            if hex_ok:
                used_as_secret.add(name)
            elif reason := looks_like_secret_key(found):
                problems.add(key, f"${{{name}}} {reason}")
                problems.hide(found)
            secrets.append(found)
            return found

        return _VAR.sub(sub, value)

    status_raw = raw.get("status")
    if isinstance(status_raw, dict) and isinstance(status_raw.get("token"), str):
        token_raw = str(status_raw["token"])
        if not _VAR.fullmatch(token_raw.strip()):
            problems.add(
                "status.token",
                'must come from the environment, like "${STATUS_TOKEN}" (value not shown)',
            )
            problems.hide(token_raw)
            status_raw.pop("token")  # reported once, here
    data = interpolate(raw, "")
    for name, where in hex_secrets.items():
        if name not in used_as_secret:  # used elsewhere (reported there), or not at all
            problems.add(where, looks_like_secret_key(environ.get(name, "")) or "private key")
            problems.hide(environ.get(name, ""))
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
            "max_lag_blocks",
            "max_batch",
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
        max_lag_blocks=_int(raw, "max_lag_blocks", f"{prefix}.max_lag_blocks", p, 100, minimum=1),
        max_batch=_int(raw, "max_batch", f"{prefix}.max_batch", p, 100, minimum=1),
        cross_check=cross_check is True,
        unconfirmed_alert_seconds=_number(
            raw, "unconfirmed_alert_seconds", f"{prefix}.unconfirmed_alert_seconds", p, 900.0
        ),
    )


def _billing(raw: Mapping[str, Any], p: _Problems) -> BillingSettings:
    _unknown(
        raw,
        {"due_days", "renewal_lead_days", "grace_days", "underpay_tolerance", "tag_cooling_days"},
        "billing",
        p,
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
        tag_cooling_days=_int(raw, "tag_cooling_days", "billing.tag_cooling_days", p, 180),
    )


def _events(value: Any, key: str, p: _Problems, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        p.add(key, f'{value!r} must be a list of event types ("*" and "watcher.*" allowed)')
        return default
    return tuple(value)


def _channel_name(value: Any, key: str, p: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CHANNEL.match(value):
        p.add(key, f"{value!r} must be 1-64 lowercase letters, digits, _ . : or -")
        return None
    return value


def _apprise_tables(raw: Any, p: _Problems) -> list[AppriseSettings]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        p.add("notify.apprise", "must be a list of [[notify.apprise]] tables")
        return []
    out = []
    for i, table in enumerate(raw):
        ap = f"notify.apprise[{i}]"
        if not isinstance(table, dict):
            p.add(ap, "must be a table")
            continue
        _unknown(table, {"name", "url", "events"}, ap, p)
        url = table.get("url")
        if not isinstance(url, str) or "://" not in url:
            p.add(f"{ap}.url", "is not an Apprise URL like scheme://... (value not shown)")
            url = ""
        events = table.get("events")
        out.append(
            AppriseSettings(
                url=url,
                name=_channel_name(table.get("name"), f"{ap}.name", p),
                events=None if events is None else _events(events, f"{ap}.events", p, ("*",)),
            )
        )
    return out


def _unique_channels(notify: NotifySettings, p: _Problems) -> None:
    """Every channel's name (configured or derived) must be its own: deliveries bind to it."""
    seen: dict[str, str] = {}
    keyed = [(f"notify.webhooks[{i}]", h.channel_name) for i, h in enumerate(notify.webhooks)]
    keyed += [(f"notify.urls[{i}]", AppriseSettings(u).channel_name) for i, u in
              enumerate(notify.urls)]  # fmt: skip
    keyed += [(f"notify.apprise[{i}]", a.channel_name) for i, a in enumerate(notify.apprise)]
    for key, name in keyed:
        if name in seen:
            p.add(key, f"channel name {name!r} is also {seen[name]}'s: give each a `name`")
        else:
            seen[name] = key


def _notify(raw: Mapping[str, Any], p: _Problems) -> NotifySettings:
    _unknown(raw, {"urls", "webhooks", "apprise", "apprise_events", "timeout"}, "notify", p)
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
        _unknown(hook, {"name", "url", "secret", "events"}, hp, p)
        url = hook.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            p.add(f"{hp}.url", "is not an http(s) URL (value not shown: may hold a key)")
        secret = hook.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            p.add(f"{hp}.secret", "must be a string of at least 16 characters (use ${VAR})")
        else:
            try:
                standard_key(secret)
            except ValueError as exc:
                p.add(f"{hp}.secret", f"{exc} (value not shown)")
        hooks.append(
            WebhookSettings(
                url=str(url),
                secret=str(secret),
                events=_events(hook.get("events"), f"{hp}.events", p, ("*",)),
                name=_channel_name(hook.get("name"), f"{hp}.name", p),
            )
        )
    default = NotifySettings()
    notify = NotifySettings(
        urls=tuple(u for u in urls if u),
        webhooks=tuple(hooks),
        apprise_events=_events(
            raw.get("apprise_events"), "notify.apprise_events", p, default.apprise_events
        ),
        timeout=_number(raw, "timeout", "notify.timeout", p, 10.0),
        apprise=tuple(_apprise_tables(raw.get("apprise"), p)),
    )
    _unique_channels(notify, p)
    return notify


def _status(raw: Mapping[str, Any], p: _Problems) -> StatusSettings:
    _unknown(raw, {"listen", "stale_seconds", "token", "allowed_hosts"}, "status", p)
    token = raw.get("token")
    if token is not None and (not isinstance(token, str) or not _TOKEN.fullmatch(token)):
        if isinstance(token, str) and token:  # "" is reported as an unset ${VAR}
            p.add(
                "status.token",
                "must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / = - (value not shown)",
            )
        elif not isinstance(token, str):
            p.add("status.token", 'must be a string like "${STATUS_TOKEN}"')
        token = None
    hosts = raw.get("allowed_hosts", [])
    allowed: list[str] = []
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        p.add(
            "status.allowed_hosts",
            f'{hosts!r} must be a list of host names like "status.example.com"',
        )
        hosts = []
    for i, host in enumerate(hosts):
        name = host.strip().lower()
        if not _HOSTNAME.fullmatch(name):
            p.add(f"status.allowed_hosts[{i}]", f"{host!r} is not a host name (no port, no scheme)")
        allowed.append(name.rstrip("."))
    listen = raw.get("listen")
    if listen is not None and (
        not isinstance(listen, str) or not re.fullmatch(r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}", listen)
    ):
        p.add("status.listen", f"{listen!r} must be host:port, like 127.0.0.1:9464")
        listen = None
    return StatusSettings(
        listen=listen,
        stale_seconds=_number(raw, "stale_seconds", "status.stale_seconds", p, 300.0),
        token=token,
        allowed_hosts=tuple(allowed),
    )
