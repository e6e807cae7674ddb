"""TOML + .env -> one frozen ``Settings``; every bad key reported at once.

This is the only module that reads ``os.environ`` (with ``config_secrets``, which resolves
``${VAR}``s). Secrets (RPC URLs with keys, webhook secrets, SMTP passwords) come from the
environment through ``${VAR}`` references.

The value objects below are pydantic dataclasses: each field's rule (``config_rules``) runs
whenever one is built, from a config or by hand; extra keys are refused. A config is checked
as ``_ConfigFile`` in one pass, so every problem of every table is reported together.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from watcher.config_rules import (
    INTERNAL_MODES,
    Address,
    AppriseUrl,
    AtLeastOne,
    ChannelName,
    Count,
    Decimals,
    Events,
    ExplorerUrl,
    Finality,
    Flag,
    HookUrl,
    Hosts,
    Internal,
    LeaseSeconds,
    Listen,
    Name,
    RpcUrls,
    Seconds,
    Symbol,
    Token,
    Tolerance,
    Where,
    problems_from,
    refuse,
    says,
    tables,
)
from watcher.config_secrets import (
    Environment,
    Problems,
    looks_like_secret_key,
    status_token_from_env,
)
from watcher.errors import BadInput, ConfigError
from watcher.notify.channel_names import default_channel_name
from watcher.notify.webhook import standard_key
from watcher.redact import database_secrets

__all__ = [
    "INTERNAL_MODES",
    "AppriseSettings",
    "BillingSettings",
    "ChainSettings",
    "NotifySettings",
    "Settings",
    "StatusSettings",
    "TokenSettings",
    "WebhookSettings",
    "clock_from_env",
    "config_path_from_env",
    "default_channel_name",
    "load_settings",
    "looks_like_secret_key",
]

DEFAULT_CONFIG = Path("config/watcher.toml")
_TABLE = ConfigDict(extra="forbid", hide_input_in_errors=True)  # values may be secrets
_LOADING = "config"  # validation context key: set while a config file is checked


@dataclass(frozen=True, slots=True, config=_TABLE)
class TokenSettings:
    symbol: Symbol
    address: Address
    decimals: Decimals
    balance_guard: Flag = True  # false for rebasing or fee-on-transfer tokens


@dataclass(frozen=True, slots=True, config=_TABLE)
class ChainSettings:
    name: Name
    chain_id: AtLeastOne
    rpc_urls: RpcUrls
    receiving_address: Address
    finality: Finality = "finalized"  # "finalized" | "safe" | confirmations
    poll_seconds: Seconds = 6.0
    # With no open invoice and no transfer waiting for finality on this chain, the daemon
    # polls it this often instead (never more often than poll_seconds).
    idle_poll_seconds: Seconds = 60.0
    start_block: Count = 0
    native_symbol: Symbol = "ETH"
    tokens: Annotated[tuple[TokenSettings, ...], tables("chains.tokens")] = ()
    internal: Internal = "off"
    balance_guard: Flag = True
    explorer_url: ExplorerUrl | None = None
    rpc_timeout: Seconds = 10.0
    max_log_range: AtLeastOne = 2000
    max_trace_range: AtLeastOne | None = None  # trace_filter's widest range; None: max_log_range
    reorg_depth: AtLeastOne = 128
    max_lag_blocks: AtLeastOne = 100  # health: the cursor may trail the head by at most this
    max_batch: AtLeastOne = 100  # JSON-RPC entries per POST to start with; shrinks if refused
    cross_check: Flag = False  # a second URL must confirm each receipt before it is final
    unconfirmed_alert_seconds: Seconds = 900.0  # final-block receipt unconfirmed this long

    @model_validator(mode="after")
    def _assets_and_providers(self) -> Self:
        problems: list[tuple[Where, str]] = []
        seen = {self.native_symbol.upper()}
        for i, token in enumerate(self.tokens):
            if token.symbol.upper() in seen:
                why = f"duplicate asset symbol {token.symbol!r} on this chain"
                problems.append((("tokens", i, "symbol"), why))
            seen.add(token.symbol.upper())
        if self.cross_check and len(self.rpc_urls) < 2:
            why = "true needs at least two rpc_urls (a second provider)"
            problems.append((("cross_check",), why))
        if problems:
            raise refuse(*problems)
        return self

    def token(self, symbol: str) -> TokenSettings | None:
        return next((t for t in self.tokens if t.symbol.upper() == symbol.upper()), None)

    @property
    def trace_range(self) -> int:
        """The widest ``trace_filter`` range asked first."""
        return self.max_trace_range or self.max_log_range


@dataclass(frozen=True, slots=True, config=_TABLE)
class BillingSettings:
    due_days: AtLeastOne = 7
    renewal_lead_days: Count = 5
    grace_days: Count = 3
    underpay_tolerance: Tolerance = Decimal(0)
    tag_cooling_days: Count = 180


@dataclass(frozen=True, slots=True, config=_TABLE)
class WebhookSettings:
    url: HookUrl
    secret: str
    events: Events = ("*",)
    name: ChannelName | None = None  # as configured; None: derived from the URL

    @field_validator("secret", mode="plain")
    @classmethod
    def _signing_secret(cls, secret: Any, info: ValidationInfo) -> str:
        """A config's secret must be long enough; a ``whsec_`` one must decode, always."""
        short = not isinstance(secret, str) or len(secret) < 16
        if short and (info.context or {}).get(_LOADING):
            raise refuse(((), "must be a string of at least 16 characters (use ${VAR})"))
        if not isinstance(secret, str):
            raise refuse(((), "must be a string (use ${VAR})"))
        try:
            standard_key(secret)
        except ValueError as exc:
            raise refuse(((), f"{exc} (value not shown)")) from None
        return secret

    @property
    def channel_name(self) -> str:
        """The stable name its deliveries are bound to."""
        return self.name or default_channel_name("webhook", self.url)


@dataclass(frozen=True, slots=True, config=_TABLE)
class AppriseSettings:
    """One ``[[notify.apprise]]`` table: an Apprise URL with a name (and its own filter)."""

    url: AppriseUrl
    name: ChannelName | None = None  # None: derived from the URL
    events: Events | None = None  # None: ``[notify] apprise_events``

    @property
    def channel_name(self) -> str:
        return self.name or default_channel_name("apprise", self.url)


@dataclass(frozen=True, slots=True, config=_TABLE)
class NotifySettings:
    urls: Annotated[tuple[AppriseUrl, ...], says("must be a list of Apprise URLs", show=False)] = ()
    apprise_events: Events = (
        "cycle.opened",
        "transfer.unassigned",
        "invoice.needs_review",
        "retainer.lapsed",
        "watcher.*",
    )
    webhooks: Annotated[tuple[WebhookSettings, ...], tables("notify.webhooks")] = ()
    timeout: Seconds = 10.0
    apprise: Annotated[tuple[AppriseSettings, ...], tables("notify.apprise")] = ()

    @model_validator(mode="after")
    def _one_name_each(self) -> Self:
        """Every channel's name (configured or derived) must be its own: deliveries bind to it."""
        seen: dict[str, str] = {}
        problems: list[tuple[Where, str]] = []
        keyed = [("webhooks", i, h.channel_name) for i, h in enumerate(self.webhooks)]
        keyed += [("urls", i, AppriseSettings(u).channel_name) for i, u in enumerate(self.urls)]
        keyed += [("apprise", i, a.channel_name) for i, a in enumerate(self.apprise)]
        for field, i, name in keyed:
            if name in seen:
                why = f"channel name {name!r} is also {seen[name]}'s: give each a `name`"
                problems.append(((field, i), why))
            else:
                seen[name] = f"notify.{field}[{i}]"
        if problems:
            raise refuse(*problems)
        return self

    def apprise_channels(self) -> tuple[AppriseSettings, ...]:
        """Every Apprise channel: the plain ``urls`` (names derived), then the named ones."""
        return (*(AppriseSettings(url) for url in self.urls), *self.apprise)


@dataclass(frozen=True, slots=True, config=_TABLE)
class StatusSettings:
    listen: Listen | None = None
    stale_seconds: Seconds = 300.0
    token: Token = None  # bearer token for the page and /metrics; from the environment
    allowed_hosts: Hosts = ()  # Host headers accepted besides the listen address


@dataclass(frozen=True, slots=True, config=_TABLE)
class DaemonSettings:
    """``[daemon]``: how daemons sharing one database (PostgreSQL) hand chains over.

    ``lease_seconds``: a daemon's lease on a chain lasts this long past its last heartbeat, so
    the chains of a daemon that died are taken over by another within it."""

    lease_seconds: LeaseSeconds = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path
    database_url: str
    chains: tuple[ChainSettings, ...]
    billing: BillingSettings = dataclasses.field(default_factory=BillingSettings)
    notify: NotifySettings = dataclasses.field(default_factory=NotifySettings)
    status: StatusSettings = dataclasses.field(default_factory=StatusSettings)
    daemon: DaemonSettings = dataclasses.field(default_factory=DaemonSettings)
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


# --- loading -------------------------------------------------------------------------------


class _Database(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    url: Annotated[str, Field(validate_default=True)] = "sqlite:///data/watcher.db"

    @field_validator("url", mode="plain")
    @classmethod
    def _supported(cls, url: Any) -> str:
        if not isinstance(url, str) or not url:
            raise refuse(((), f"{url!r} is not a database URL"))
        scheme = url.split(":")[0]
        if not url.startswith(("sqlite:", "postgresql")):
            raise refuse(((), f"{scheme!r} is not a supported database (sqlite, postgresql)"))
        if scheme == "postgresql":  # the one PostgreSQL driver proofwatch ships: psycopg 3
            return "postgresql+psycopg" + url.removeprefix("postgresql")
        if scheme.startswith("postgresql") and scheme != "postgresql+psycopg":
            raise refuse(((), f"{scheme!r} is not a supported driver (use postgresql+psycopg)"))
        if scheme == "postgresql+psycopg" and not url.startswith(f"{scheme}://"):
            # not echoed: what follows the scheme may hold the password
            raise refuse(((), f"{scheme!r} is not a database URL (postgresql+psycopg://...)"))
        return url

    def resolved(self, config_dir: Path) -> str:
        """A relative ``sqlite:///`` path is relative to the config's directory."""
        rel = self.url.removeprefix("sqlite:///")
        if rel != self.url and not rel.startswith("/") and rel and rel != ":memory:":
            return "sqlite:///" + str((config_dir / rel).resolve())
        return self.url


class _ConfigFile(BaseModel):
    """The TOML file's shape: these sections, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    database: _Database = _Database()
    chains: Annotated[tuple[ChainSettings, ...], tables("chains", non_empty=True)] = Field(
        default=(), validate_default=True
    )
    billing: BillingSettings = BillingSettings()
    notify: NotifySettings = NotifySettings()
    status: StatusSettings = StatusSettings()
    daemon: DaemonSettings = DaemonSettings()

    @model_validator(mode="after")
    def _unique_chain_names(self) -> Self:
        names = [chain.name for chain in self.chains]
        problems = [
            (("chains", i, "name"), f"duplicate chain name {name!r}")
            for i, name in enumerate(names)
            if name in names[:i]
        ]
        if problems:
            raise refuse(*problems)
        return self


def load_settings(path: Path, env_file: Path | None = None) -> Settings:
    """Load and validate a config; raise ``ConfigError`` listing every problem at once."""
    problems = Problems()
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    env_path = env_file if env_file is not None else path.parent / ".env"
    if env_file is not None and not env_path.is_file():
        raise ConfigError([f"{env_path}: env file not found"])
    environment = Environment(env_path, problems)
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    status_token_from_env(raw, problems)
    data = environment.interpolate(raw)
    environment.check_unused()
    try:
        config = _ConfigFile.model_validate(data, context={_LOADING: True})
    except ValidationError as exc:
        problems.items += problems_from(exc)
    if problems.items:
        raise ConfigError(problems.messages())
    return Settings(
        config_path=path.resolve(),
        database_url=config.database.resolved(path.parent),
        chains=config.chains,
        billing=config.billing,
        notify=config.notify,
        status=config.status,
        daemon=config.daemon,
        secrets=tuple(
            s for s in (*environment.secrets, *database_secrets(config.database.url)) if s
        ),
    )
