"""Token decimals as the chain reports them: read once per token and chain, stored, enforced.

A token's ``decimals()`` is read on chain the first time it matters (the scanner's first poll
of the chain, ``invoice issue``, ``invoice attach``) and stored in ``token_decimals``. When the
configured ``decimals`` disagree with the stored value, amounts in that token mean something
else than the configuration thinks (an 18-decimal token configured as 6 lets dust pay a
month), so:

- ``invoice issue`` (and the renewal round) refuses that asset (exit 3, naming both values);
- settlement never counts a transfer of that token: it is left unassigned, and the alert
  ``watcher.token_decimals_mismatch`` says why (once per chain, token and pair of values);
- ``invoice attach`` refuses it.

Fixing ``decimals`` in the configuration lifts all three. When nothing is stored yet,
``invoice issue`` reads the value on chain before issuing; if the node cannot be reached it
issues with the configured value and warns (settlement checks again before counting anything:
the scanner reads the value before its first chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from sqlmodel import Session, select

from watcher.errors import Refused, WatcherError
from watcher.settings import ChainSettings, Settings, TokenSettings
from watcher.store.outbox import emit
from watcher.store.tables import TokenDecimals

log = structlog.get_logger("watcher.token_decimals")

#: Reads ``decimals()`` of a token on a chain (raises WatcherError when it cannot).
Reader = Callable[[ChainSettings, str], int]


class DecimalsUnknown(WatcherError):
    """Nothing is stored yet for a token whose decimals an operation must know."""

    def __init__(self, chain: str, token: str) -> None:
        super().__init__(f"decimals of token {token} on chain {chain} not read yet")
        self.chain, self.token = chain, token


def stored(session: Session, chain: str, token: str) -> int | None:
    """The decimals read on chain for ``token`` (checksummed), or None if never read."""
    row = session.get(TokenDecimals, (chain, token))
    return None if row is None else row.decimals


def record(
    session: Session, chain: ChainSettings, token: str, decimals: int, now: datetime
) -> None:
    """Store what the chain said (once: a stored value is never overwritten)."""
    if session.get(TokenDecimals, (chain.name, token)) is None:
        session.add(
            TokenDecimals(
                chain=chain.name,
                token_address=token,
                chain_id=chain.chain_id,
                decimals=decimals,
                read_at=now,
            )
        )
        session.flush()
        log.info("token.decimals_read", chain=chain.name, token=token, decimals=decimals)


def mismatch_reason(chain: str, token: TokenSettings, on_chain: int) -> str:
    return (
        f"{token.symbol} ({token.address}) on chain {chain}: decimals() is {on_chain} on chain, "
        f"{token.decimals} in the config; fix chains.tokens.decimals"
    )


def mismatch(session: Session, settings: Settings, chain: str, token: str | None) -> str | None:
    """Why amounts of ``token`` on ``chain`` cannot be trusted (None: they can, or it is the
    native coin, or nothing was read yet)."""
    if token is None:
        return None
    configured = next(
        (t for c in settings.chains if c.name == chain for t in c.tokens if t.address == token),
        None,
    )
    on_chain = stored(session, chain, token)
    if configured is None or on_chain is None or on_chain == configured.decimals:
        return None
    return mismatch_reason(chain, configured, on_chain)


def alert(
    session: Session, chain: ChainSettings, token: TokenSettings, on_chain: int, now: datetime
) -> None:
    """The ``watcher.token_decimals_mismatch`` event, once per token and pair of values."""
    data: dict[str, Any] = {
        "chain": chain.name,
        "chain_id": chain.chain_id,
        "asset": token.symbol,
        "token_address": token.address,
        "decimals_on_chain": on_chain,
        "decimals_in_config": token.decimals,
        "reason": mismatch_reason(chain.name, token, on_chain)
        + ": its transfers are not counted until then",
    }
    values = f"{on_chain}:{token.decimals}"
    key = f"watcher.token_decimals_mismatch:{chain.name}:{token.address}:{values}"
    emit(session, "watcher.token_decimals_mismatch", data, dedupe_key=key, now=now)


def ensure(session: Session, chain: ChainSettings, values: dict[str, int], now: datetime) -> None:
    """Record freshly read ``values`` (token -> decimals) and raise the alert for every
    configured token of ``chain`` whose stored value disagrees with the config."""
    for address, decimals in values.items():
        record(session, chain, address, decimals, now)
    for token in chain.tokens:
        on_chain = stored(session, chain.name, token.address)
        if on_chain is not None and on_chain != token.decimals:
            log.error(
                "token.decimals_mismatch",
                chain=chain.name,
                token=token.address,
                on_chain=on_chain,
                config=token.decimals,
            )
            alert(session, chain, token, on_chain, now)


def missing(session: Session, chain: ChainSettings) -> list[str]:
    """Configured tokens of ``chain`` whose decimals were never read."""
    rows = session.exec(select(TokenDecimals).where(TokenDecimals.chain == chain.name)).all()
    known = {r.token_address for r in rows}
    return [t.address for t in chain.tokens if t.address not in known]


def check_issuable(
    session: Session, settings: Settings, chain: str, token: str | None, *, need_known: bool
) -> None:
    """Refuse to invoice in a token whose configured decimals disagree with the chain's;
    ``need_known``: raise DecimalsUnknown when nothing is stored yet (the caller reads it)."""
    if token is None:
        return
    if need_known and stored(session, chain, token) is None:
        raise DecimalsUnknown(chain, token)
    reason = mismatch(session, settings, chain, token)
    if reason is not None:
        raise Refused(reason)
