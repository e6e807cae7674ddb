"""The proof-v1 JSON Schema shipped in the package, and the terms hash the verifier recomputes."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from watcher.chain.verify import parse_finality
from watcher.domain.billing import Terms
from watcher.domain.proof_rules import amount_checks, terms_checks, terms_hash
from watcher.errors import BadInput
from watcher.schemas.proof import proof_schema, validate_bundle

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
TERMS = Terms(
    client="Zürich Café & Co",
    chain="base",
    chain_id=8453,
    asset="USDC",
    token_address=USDC,
    decimals=6,
    monthly_base_units=1_500_000_000,
    pay_to=WALLET,
    scope="Support: 20 h/month",
)


def bundle() -> dict[str, Any]:
    """A proof-v1 bundle as settlement freezes it (one ERC-20 payment)."""
    when = "2026-03-03T10:30:00Z"
    return {
        "schema": "proof-v1",
        "invoice": {
            "id": "INV-1",
            "kind": "first_month",
            "period_index": 1,
            "status": "paid",
            "price": "1500",
            "amount": "1500.000001",
            "amount_base_units": "1500000001",
            "paid_amount": "1500.000001",
            "paid_amount_base_units": "1500000001",
            "overpaid_by": "0",
            "issued_at": when,
            "due_at": when,
            "paid_at": when,
            "pay_to": WALLET,
        },
        "retainer": {
            "id": "RET-1",
            "client": TERMS.client,
            "scope": TERMS.scope,
            "terms_hash": TERMS.hash(),
            "terms": json.loads(TERMS.canonical_json()),
            "approval": {
                "approved_by": "Jane",
                "approved_at": when,
                "note": "",
                "terms_hash": TERMS.hash(),
            },
        },
        "chain": {"name": "base", "chain_id": 8453, "explorer_url": None},
        "asset": {"symbol": "USDC", "token_address": USDC, "decimals": 6, "decimals_on_chain": 6},
        "payments": [
            {
                "chain_id": 8453,
                "tx_hash": "0x" + "ab" * 32,
                "log_index": 3,
                "kind": "erc20",
                "block_number": 100,
                "block_hash": "0x" + "cd" * 32,
                "block_time": when,
                "final_block": 100,
                "from": "0x52908400098527886E0F7030069857D2E4169EE7",
                "to": WALLET,
                "asset": "USDC",
                "token_address": USDC,
                "amount": "1500.000001",
                "amount_base_units": "1500000001",
                "detected_at": when,
                "finalized_at": when,
                "explorer_tx_url": None,
            }
        ],
        "cycle": {
            "id": "CYC-1",
            "period_index": 1,
            "starts_at": when,
            "ends_at": "2026-04-03T10:30:00Z",
        },
    }


def test_schema_ships_in_the_package_and_is_a_valid_draft_2020_12_schema() -> None:
    """proof-v1.json is package data of ``watcher`` and a valid JSON Schema (2020-12)."""
    shipped = resources.files("watcher").joinpath("schemas/proof-v1.json").read_text()
    assert json.loads(shipped) == proof_schema()
    Draft202012Validator.check_schema(proof_schema())


def test_a_settled_bundle_is_valid_and_older_ones_without_block_time_too() -> None:
    """A bundle as settlement writes it is valid; so is one frozen before block_time existed."""
    assert list(Draft202012Validator(proof_schema()).iter_errors(bundle())) == []
    old = bundle()
    del old["payments"][0]["block_time"]
    validate_bundle(old)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda b: b["payments"][0].update(tx_hash="0xABC"), "payments[0].tx_hash"),
        (lambda b: b["payments"][0].update(amount_base_units="1.5"), "payments[0].amount_base"),
        (lambda b: b["invoice"].update(status="open"), "invoice.status"),
        (lambda b: b["retainer"].update(terms_hash="md5:1"), "retainer.terms_hash"),
        (lambda b: b.update(schema="proof-v2"), "schema"),
        (lambda b: b.update(payments=[]), "payments"),
    ],
    ids=["tx hash", "base units", "status", "terms hash", "version", "no payments"],
)
def test_a_bundle_breaking_the_schema_is_bad_input_naming_the_field(edit: Any, named: str) -> None:
    """validate_bundle raises BadInput naming the first field that breaks proof-v1."""
    broken = copy.deepcopy(bundle())
    edit(broken)
    with pytest.raises(BadInput, match="does not match proof-v1 at " + named.replace("[", r"\[")):
        validate_bundle(broken)


def test_terms_hash_recomputed_from_the_bundle_equals_the_approvals() -> None:
    """The verifier's hash of the terms as printed in a bundle equals Terms.hash(), non-ASCII
    text included; any change to them changes it."""
    printed = json.loads(json.dumps(bundle()))["retainer"]["terms"]
    assert terms_hash(printed) == TERMS.hash()
    assert terms_hash({**printed, "scope": "Support: 21 h/month"}) != TERMS.hash()


def test_finality_option_accepts_tags_and_confirmations_only() -> None:
    """--finality is finalized, safe or a positive number of confirmations."""
    assert [parse_finality(v) for v in ("finalized", "SAFE", "12")] == ["finalized", "safe", "12"]
    for bad in ("0", "-1", "latest", ""):
        with pytest.raises(BadInput, match="--finality"):
            parse_finality(bad)


def test_bundle_rules_hold_for_a_settled_bundle_and_name_what_was_edited() -> None:
    """The pure rules pass on a consistent bundle; editing an amount, the terms or the price
    fails the check of exactly that field."""
    good = bundle()
    assert all(c.ok for c in amount_checks(good) + terms_checks(good))
    cases: list[tuple[Any, str]] = [
        (lambda b: b["payments"][0].update(amount="1500.00001"), "payments[0].amount"),
        (
            lambda b: b["invoice"].update(paid_amount_base_units="1"),
            "invoice.paid_amount_base_units",
        ),
        (lambda b: b["invoice"].update(amount="1500.1"), "invoice.amount"),
        (lambda b: b["payments"][0].update(to=USDC), "payments[0].to"),
        (lambda b: b["retainer"]["terms"].update(scope="more"), "retainer.terms"),
        (lambda b: b["retainer"].update(client="Other"), "retainer.terms.client"),
        (lambda b: b["invoice"].update(price="1400"), "invoice.price"),
    ]
    for edit, field in cases:
        edited = bundle()
        edit(edited)
        failed = [c.field for c in amount_checks(edited) + terms_checks(edited) if not c.ok]
        assert failed[:1] == [field], (field, failed)
