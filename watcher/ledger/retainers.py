"""Retainer use cases: add, approve, change terms. I/O sequenced around the domain.

An invoice is issued only against approved terms (``watcher.ledger.invoices``); any change of
terms here needs a new approval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlmodel import Session

from watcher.domain import billing
from watcher.domain.addresses import parse_address
from watcher.domain.billing import RetainerStatus, Terms
from watcher.domain.money import Asset, parse_amount
from watcher.errors import BadInput, NotFound, Refused
from watcher.ids import fmt_id, parse_id
from watcher.ledger.context import Context
from watcher.settings import ChainSettings
from watcher.store.db import transaction
from watcher.store.tables import Approval, Retainer

NATIVE_DECIMALS = 18


def asset_for(chain: ChainSettings, symbol: str) -> Asset:
    """The configured asset ``symbol`` on ``chain`` (native coin or token), or bad input."""
    if symbol.upper() == chain.native_symbol.upper():
        return Asset(chain.name, chain.chain_id, chain.native_symbol, NATIVE_DECIMALS, None)
    token = chain.token(symbol)
    if token is None:
        known = ", ".join([chain.native_symbol, *(t.symbol for t in chain.tokens)])
        raise BadInput(f"unknown asset {symbol!r} on chain {chain.name!r} (configured: {known})")
    return Asset(chain.name, chain.chain_id, token.symbol, token.decimals, token.address)


def _text(value: str, what: str, *, limit: int = 200, required: bool = True) -> str:
    cleaned = value.strip()
    if required and not cleaned:
        raise BadInput(f"{what} {value!r} must not be empty")
    if len(cleaned) > limit or any(ch in cleaned for ch in "\r\n\x00"):
        raise BadInput(f"{what} {value[:40]!r} must be one line of at most {limit} characters")
    return cleaned


def terms_of(retainer: Retainer, chain: ChainSettings) -> Terms:
    return Terms(
        client=retainer.client,
        chain=retainer.chain,
        chain_id=retainer.chain_id,
        asset=retainer.asset,
        token_address=retainer.token_address,
        decimals=retainer.decimals,
        monthly_base_units=retainer.monthly,
        pay_to=chain.receiving_address,
        scope=retainer.scope,
        cadence=retainer.cadence,
        scope_cap=retainer.scope_cap,
    )


def get_retainer(session: Session, ref: str) -> Retainer:
    retainer = session.get(Retainer, parse_id(ref, "RET"))
    if retainer is None:
        raise NotFound(f"unknown retainer {ref!r}")
    return retainer


def add_retainer(
    ctx: Context,
    *,
    client: str,
    chain: str,
    asset: str,
    monthly: str,
    payers: Sequence[str] = (),
    scope: str = "",
    start: str | None = None,
    scope_cap: str = "",
) -> Retainer:
    """A new retainer in ``draft``: it needs an approval before it can be invoiced."""
    now = ctx.now()
    chain_settings = ctx.settings.chain(chain)
    the_asset = asset_for(chain_settings, asset)
    price = parse_amount(monthly, the_asset.decimals, what="monthly amount")
    payer_list = sorted({parse_address(p, what="payer address") for p in payers})
    start_at = billing.parse_when(start, what="start date") if start else now
    retainer = Retainer(
        client=_text(client, "client name"),
        chain=chain_settings.name,
        chain_id=chain_settings.chain_id,
        asset=the_asset.symbol,
        token_address=the_asset.token_address,
        decimals=the_asset.decimals,
        monthly=price,
        pay_to=chain_settings.receiving_address,
        payers=json.dumps(payer_list),
        scope=_text(scope, "scope", limit=2000, required=False),
        scope_cap=_text(scope_cap, "scope cap", required=False),
        start_at=start_at,
        status=RetainerStatus.DRAFT.value,
        terms_hash="",
        created_at=now,
    )
    retainer.terms_hash = terms_of(retainer, chain_settings).hash()
    with transaction(ctx.engine) as session:
        session.add(retainer)
    return retainer


def approve_retainer(ctx: Context, ref: str, *, by: str, note: str = "") -> Approval:
    """Record who approved the current terms, when, and the terms hash."""
    approver = _text(by, "approver name")
    note_text = _text(note, "note", limit=2000, required=False)
    now = ctx.now()
    with transaction(ctx.engine) as session:
        retainer = get_retainer(session, ref)
        if retainer.status == RetainerStatus.ENDED:
            raise Refused(f"retainer {fmt_id('RET', retainer.id)} has ended; it cannot be approved")
        terms = terms_of(retainer, ctx.settings.chain(retainer.chain))
        approval = Approval(
            retainer_id=retainer.id or 0,
            approved_by=approver,
            note=note_text,
            approved_at=now,
            terms_hash=terms.hash(),
            terms_json=terms.canonical_json(),
        )
        session.add(approval)
        session.flush()
        retainer.terms_hash = approval.terms_hash
        retainer.approval_id = approval.id
        if retainer.status == RetainerStatus.DRAFT:
            retainer.status = RetainerStatus.APPROVED.value
        session.add(retainer)
    return approval


def update_retainer(
    ctx: Context,
    ref: str,
    *,
    monthly: str | None = None,
    payers: Sequence[str] | None = None,
    scope: str | None = None,
    scope_cap: str | None = None,
) -> Retainer:
    """Change a retainer's terms. The next invoice needs a new approval of the new terms."""
    with transaction(ctx.engine) as session:
        retainer = get_retainer(session, ref)
        if retainer.status == RetainerStatus.ENDED:
            raise Refused(f"retainer {fmt_id('RET', retainer.id)} has ended")
        if monthly is not None:  # in the asset's decimals as configured now (they may be fixed)
            retainer.decimals = asset_for(
                ctx.settings.chain(retainer.chain), retainer.asset
            ).decimals
            retainer.monthly = parse_amount(monthly, retainer.decimals, what="monthly amount")
        if payers is not None:
            retainer.payers = json.dumps(
                sorted({parse_address(p, what="payer address") for p in payers})
            )
        if scope is not None:
            retainer.scope = _text(scope, "scope", limit=2000, required=False)
        if scope_cap is not None:
            retainer.scope_cap = _text(scope_cap, "scope cap", required=False)
        retainer.terms_hash = terms_of(retainer, ctx.settings.chain(retainer.chain)).hash()
        session.add(retainer)
    return retainer
