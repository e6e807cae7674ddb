"""What a proof bundle must say about itself, whatever the chain says: pure checks, no I/O.

The amounts add up (decimal strings are their base units, the payments sum to the paid
amount, each pays the invoice's wallet in its asset), and the terms hash recomputed from the
bundle's terms is the approval's. ``watcher.chain.verify`` adds what only a node can confirm.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watcher.domain.money import format_amount


@dataclass(frozen=True)
class Check:
    """One fact compared with the chain or with the bundle itself."""

    field: str  # the bundle field it vouches for, e.g. "payments[0].block_hash"
    ok: bool
    detail: str  # what was found (when ok) or why it does not match


def check(field: str, ok: bool, good: str, bad: str) -> Check:
    """A ``Check`` whose detail is ``good`` when it holds, else ``bad``."""
    return Check(field, ok, good if ok else bad)


def terms_hash(terms: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the terms as canonical JSON (sorted keys, no spaces), as approved."""
    canonical = json.dumps(dict(terms), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def amount_checks(bundle: Mapping[str, Any]) -> list[Check]:
    """Each decimal amount is its base units at the asset's decimals, the payments add up to
    the paid amount, and each pays the invoice's wallet in its asset on its chain."""
    inv, asset, chain_id = bundle["invoice"], bundle["asset"], bundle["chain"]["chain_id"]
    decimals, symbol = int(asset["decimals"]), asset["symbol"]
    out: list[Check] = []
    for i, p in enumerate(bundle["payments"]):
        text = format_amount(int(p["amount_base_units"]), decimals)
        out.append(
            check(
                f"payments[{i}].amount",
                text == p["amount"],
                f"{text} {symbol}",
                f"{p['amount_base_units']} base units are {text} {symbol}, the bundle says "
                f"{p['amount']}",
            )
        )
    total = sum(int(p["amount_base_units"]) for p in bundle["payments"])
    out.append(
        check(
            "invoice.paid_amount_base_units",
            str(total) == inv["paid_amount_base_units"],
            f"the payments add up to {total} base units",
            f"the payments add up to {total} base units, the invoice says "
            f"{inv['paid_amount_base_units']}",
        )
    )
    for name, text, base in (
        ("invoice.paid_amount", inv["paid_amount"], inv["paid_amount_base_units"]),
        ("invoice.amount", inv["amount"], inv["amount_base_units"]),
    ):
        want = format_amount(int(base), decimals)
        out.append(check(name, text == want, f"{want} {symbol}", f"{base} base units are {want}"))
    for i, p in enumerate(bundle["payments"]):
        ours = (p["to"], p["chain_id"], p["token_address"]) == (
            inv["pay_to"],
            chain_id,
            asset["token_address"],
        )
        out.append(
            check(
                f"payments[{i}].to",
                ours,
                "paid to the invoice's wallet in its asset",
                f"the payment is not to {inv['pay_to']} in {symbol} on chain {chain_id}",
            )
        )
    return out


def terms_checks(bundle: Mapping[str, Any]) -> list[Check]:
    """The terms hash recomputed from the bundle's terms equals the approval's and the
    invoice's; the terms name the bundle's chain, asset, wallet and client, and its price."""
    ret, inv, asset = bundle["retainer"], bundle["invoice"], bundle["asset"]
    terms, approval = ret["terms"], ret["approval"]
    recomputed = terms_hash(terms)
    out = [
        check(
            "retainer.terms",
            recomputed == approval["terms_hash"],
            f"the terms hash to the approved {recomputed}",
            f"the terms hash to {recomputed}, the approval recorded {approval['terms_hash']}",
        ),
        check(
            "retainer.terms_hash",
            ret["terms_hash"] == approval["terms_hash"],
            "the invoice was issued under the approved terms",
            f"{ret['terms_hash']} is not the approved {approval['terms_hash']}",
        ),
    ]
    named = {
        "chain_id": bundle["chain"]["chain_id"],
        "asset": asset["symbol"],
        "token_address": asset["token_address"],
        "decimals": asset["decimals"],
        "pay_to": inv["pay_to"],
        "client": ret["client"],
    }
    differ = next(((k, v) for k, v in named.items() if terms.get(k) != v), None)
    if differ is not None:
        key, value = differ
        out.append(
            Check(
                f"retainer.terms.{key}",
                False,
                f"the approved terms say {terms.get(key)!r}, the bundle says {value!r}",
            )
        )
        return out
    out.append(Check("retainer.terms", True, "the terms name this chain, asset, wallet, client"))
    if inv["kind"] != "sprint":
        monthly = format_amount(int(terms["monthly_base_units"]), int(asset["decimals"]))
        out.append(
            check(
                "invoice.price",
                monthly == inv["price"],
                f"the price is the approved {monthly} {asset['symbol']} a month",
                f"the approved terms say {monthly} a month, the invoice says {inv['price']}",
            )
        )
    return out
