"""Billing rules: unique amount tags, payment URIs, calendar months, terms hashes, dates."""

from __future__ import annotations

import calendar
import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from watcher.domain.billing import (
    InvoiceStatus,
    IssuedAmount,
    RetainerStatus,
    Terms,
    add_months,
    check_issuable,
    choose_amount,
    due_at,
    held_amounts,
    holds_until,
    max_tag,
    parse_when,
    payment_uri,
    tag_space,
    unique_amount,
)
from watcher.domain.money import Asset
from watcher.errors import BadInput, Refused

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"

# --- unique amount tags ---------------------------------------------------------------------


@pytest.mark.parametrize("decimals", range(3, 37))
def test_max_tag_stays_at_most_a_thousandth_of_a_unit(decimals: int) -> None:
    """For assets with 3+ decimals the largest tag is 1/1000 of a unit, well under 0.01."""
    assert max_tag(decimals) == 10**decimals // 1000
    assert max_tag(decimals) * 100 < 10**decimals


def test_max_tag_for_usdc_is_under_a_cent() -> None:
    """A 6-decimal token's tag never reaches 0.01 of a unit (10_000 base units)."""
    assert max_tag(6) == 1000
    assert max_tag(6) < 10_000


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_max_tag_is_one_base_unit_for_coarse_assets(decimals: int) -> None:
    """With fewer than 3 decimals only a 1-base-unit tag exists (one open invoice per price)."""
    assert max_tag(decimals) == 1
    with pytest.raises(Refused):
        unique_amount(100, [101], decimals)


def test_unique_amount_adds_the_smallest_free_tag() -> None:
    """The first invoice gets price + 1 base unit; taken totals are skipped."""
    price = 1_500_000_000
    assert unique_amount(price, [], 6) == price + 1
    assert unique_amount(price, [price + 1, price + 2, price + 4], 6) == price + 3


def test_unique_amount_ignores_amounts_of_other_prices() -> None:
    """Totals owned by invoices with another price only matter if they are equal totals."""
    assert unique_amount(1_000_000, [2_000_001, 999_999, 1_000_000], 6) == 1_000_001


def test_unique_amount_reuses_a_freed_amount() -> None:
    """When a voided or paid invoice leaves the taken set, its amount is the next one handed out."""
    price = 2_000_000_000
    taken = [price + 1, price + 2, price + 3]
    taken.remove(price + 2)  # INV for price + 2 was voided (or paid)
    assert unique_amount(price, taken, 6) == price + 2


def test_unique_amount_refuses_when_every_tag_is_taken() -> None:
    """With every tag in use the issue is refused by state (exit 3), naming the price."""
    price = 5_000_000
    taken = [price + tag for tag in range(1, max_tag(6) + 1)]
    with pytest.raises(Refused, match=r"price 5000000 base units"):
        unique_amount(price, taken, 6)


# --- tag cooling: a paid or voided invoice's amount is not reissued soon ---------------------

DAY0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
COOL = 180


def test_open_invoice_holds_its_amount_however_old() -> None:
    """An invoice still waiting for money holds its amount past any cooling window."""
    old = IssuedAmount(1_000_001, InvoiceStatus.EXPIRED, DAY0 - timedelta(days=400))
    assert holds_until(old, COOL) is None
    assert held_amounts([old], DAY0, COOL) == {1_000_001}


@pytest.mark.parametrize("status", [InvoiceStatus.PAID, InvoiceStatus.VOID])
def test_paid_or_void_invoice_holds_its_amount_for_the_cooling_window(
    status: InvoiceStatus,
) -> None:
    """A paid or voided invoice keeps its amount until tag_cooling_days after its issue."""
    done = IssuedAmount(1_000_001, status, DAY0)
    assert holds_until(done, COOL) == DAY0 + timedelta(days=COOL)
    assert held_amounts([done], DAY0 + timedelta(days=COOL - 1), COOL) == {1_000_001}
    assert held_amounts([done], DAY0 + timedelta(days=COOL), COOL) == set()


def test_cooling_counts_from_the_payment_when_it_came_later() -> None:
    """An invoice paid long after its issue cools down from its payment, not its issue."""
    late = IssuedAmount(1_000_001, InvoiceStatus.PAID_LATE, DAY0, DAY0 + timedelta(days=200))
    assert holds_until(late, COOL) == DAY0 + timedelta(days=200 + COOL)


def test_choose_amount_skips_a_paid_invoices_amount() -> None:
    """Trap 1: a new invoice never asks for the amount a client just paid on another one."""
    paid = IssuedAmount(1_500_000_001, InvoiceStatus.PAID, DAY0, DAY0 + timedelta(days=1))
    assert choose_amount(1_500_000_000, 6, [paid], now=DAY0 + timedelta(days=2),
                         cooling_days=COOL) == 1_500_000_002  # fmt: skip
    assert choose_amount(1_500_000_000, 6, [paid], now=DAY0 + timedelta(days=COOL + 1),
                         cooling_days=COOL) == 1_500_000_001  # fmt: skip


def test_few_decimals_exhaust_and_refuse_naming_when_a_tag_frees() -> None:
    """With 2 decimals there is one tag per price: a second invoice inside the window is
    refused by state, saying when the first tag frees up."""
    voided = IssuedAmount(150_001, InvoiceStatus.VOID, DAY0)
    with pytest.raises(Refused, match=r"all 1 tag\(s\) .* first frees at 2026-08-29T09:00:00Z"):
        choose_amount(150_000, 2, [voided], now=DAY0, cooling_days=COOL)
    still_open = IssuedAmount(150_001, InvoiceStatus.OPEN, DAY0)
    with pytest.raises(Refused, match=r"settle or void an open invoice"):
        choose_amount(150_000, 2, [still_open], now=DAY0, cooling_days=COOL)


def test_tag_space_counts_used_and_left_per_price() -> None:
    """Tag space counts only amounts inside the price's tag range."""
    assert tag_space(1_000_000, {1_000_001, 1_000_003, 2_000_001, 999_999}, 6) == (
        dataclasses.replace(tag_space(1_000_000, set(), 6), used=2, left=max_tag(6) - 2)
    )
    assert tag_space(150_000, {150_001}, 2).left == 0


@given(
    price=st.integers(min_value=1, max_value=10**30),
    decimals=st.integers(min_value=3, max_value=18),
    tags=st.sets(st.integers(min_value=1, max_value=200), max_size=150),
)
def test_unique_amount_never_collides_and_stays_under_the_bound(
    price: int, decimals: int, tags: set[int]
) -> None:
    """For any taken set the result is new, within price + max_tag, and the smallest free one."""
    taken = {price + t for t in tags if t <= max_tag(decimals)}
    if len(taken) == max_tag(decimals):
        with pytest.raises(Refused):
            unique_amount(price, taken, decimals)
        return
    amount = unique_amount(price, taken, decimals)
    assert amount not in taken
    assert price < amount <= price + max_tag(decimals)
    assert all(price + t in taken for t in range(1, amount - price))


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("issue"), st.sampled_from([1_000_000, 1_000_001, 2_500_000])),
            st.tuples(st.just("settle"), st.integers(min_value=0, max_value=50)),
        ),
        max_size=80,
    )
)
def test_open_invoices_never_share_an_amount(ops: list[tuple[str, int]]) -> None:
    """Issuing and settling in any order keeps open amounts distinct; a freed one is reusable."""
    open_invoices: list[tuple[int, int]] = []  # (price, amount)
    for op, value in ops:
        amounts = [amount for _, amount in open_invoices]
        if op == "issue":
            amount = unique_amount(value, amounts, 6)
            assert amount not in amounts
            assert 0 < amount - value <= max_tag(6)
            open_invoices.append((value, amount))
        elif open_invoices:
            price, freed = open_invoices.pop(value % len(open_invoices))
            still_open = [amount for _, amount in open_invoices]
            assert unique_amount(price, still_open, 6) <= freed
        amounts = [amount for _, amount in open_invoices]
        assert len(set(amounts)) == len(amounts)


@given(
    price=st.integers(min_value=1, max_value=10**24),
    count=st.integers(min_value=2, max_value=40),
    freed_index=st.integers(min_value=0, max_value=39),
)
def test_freed_tag_is_reused_first(price: int, count: int, freed_index: int) -> None:
    """After freeing one of n consecutive tags, the next invoice of that price gets exactly it."""
    assume(freed_index < count)
    taken = [unique_amount(price, [], 6)]
    while len(taken) < count:
        taken.append(unique_amount(price, taken, 6))
    assert taken == [price + t for t in range(1, count + 1)]
    freed = taken.pop(freed_index)
    assert unique_amount(price, taken, 6) == freed


# --- payment URIs ---------------------------------------------------------------------------


def test_payment_uri_for_native_coin() -> None:
    """Native: ethereum:<wallet>@<chain_id>?value=<wei> (EIP-681)."""
    asset = Asset("base", 8453, "ETH", 18, None)
    assert payment_uri(asset, WALLET, 500_000_000_000_000_001) == (
        f"ethereum:{WALLET}@8453?value=500000000000000001"
    )


def test_payment_uri_for_erc20_token() -> None:
    """ERC-20: ethereum:<token>@<chain_id>/transfer?address=<wallet>&uint256=<base units>."""
    asset = Asset("base", 8453, "USDC", 6, USDC)
    assert payment_uri(asset, WALLET, 1_500_000_137) == (
        f"ethereum:{USDC}@8453/transfer?address={WALLET}&uint256=1500000137"
    )


@given(amount=st.integers(min_value=1, max_value=10**40))
def test_payment_uri_carries_base_units_without_exponent(amount: int) -> None:
    """The URI amount is the exact integer in base units, never scientific notation."""
    native = payment_uri(Asset("eth", 1, "ETH", 18, None), WALLET, amount)
    token = payment_uri(Asset("eth", 1, "USDC", 6, USDC), WALLET, amount)
    assert native.endswith(f"?value={amount}")
    assert token.endswith(f"&uint256={amount}")
    assert re.fullmatch(r"ethereum:0x[0-9a-fA-F]{40}@1(/transfer)?\?[a-z0-9=&xA-F]+", token)


# --- calendar months ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (datetime(2026, 1, 31, 10, tzinfo=UTC), 1, datetime(2026, 2, 28, 10, tzinfo=UTC)),
        (datetime(2028, 1, 31, 10, tzinfo=UTC), 1, datetime(2028, 2, 29, 10, tzinfo=UTC)),
        (datetime(2026, 1, 31, 10, tzinfo=UTC), 2, datetime(2026, 3, 31, 10, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), 1, datetime(2026, 4, 30, tzinfo=UTC)),
        (datetime(2026, 11, 15, tzinfo=UTC), 2, datetime(2027, 1, 15, tzinfo=UTC)),
        (datetime(2026, 12, 31, tzinfo=UTC), 1, datetime(2027, 1, 31, tzinfo=UTC)),
        (datetime(2024, 2, 29, tzinfo=UTC), 12, datetime(2025, 2, 28, tzinfo=UTC)),
        (datetime(2024, 2, 29, tzinfo=UTC), 48, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 5, 20, tzinfo=UTC), 0, datetime(2026, 5, 20, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), -1, datetime(2026, 2, 28, tzinfo=UTC)),
    ],
)
def test_add_months_clamps_to_the_end_of_short_months(
    start: datetime, months: int, expected: datetime
) -> None:
    """Jan 31 + 1 month is Feb 28 (29 in leap years); the anchor day comes back later."""
    assert add_months(start, months) == expected


anchors = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 12, 31),
    timezones=st.just(UTC),
)


@given(anchor=anchors, k=st.integers(min_value=0, max_value=600))
def test_months_from_one_anchor_tile_time(anchor: datetime, k: int) -> None:
    """Month k ends where month k+1 starts, each 28-31 days long, on the anchor's clamped day."""
    start, end = add_months(anchor, k), add_months(anchor, k + 1)
    assert start < end
    assert timedelta(days=28) <= end - start <= timedelta(days=31)
    assert (end.year * 12 + end.month) - (start.year * 12 + start.month) == 1
    assert end.day == min(anchor.day, calendar.monthrange(end.year, end.month)[1])
    assert end.timetz() == anchor.timetz()
    assert end.tzinfo is UTC


@given(anchor=anchors, k=st.integers(min_value=1, max_value=600))
def test_months_from_an_anchor_do_not_drift(anchor: datetime, k: int) -> None:
    """The k-th month boundary keeps the anchor day (clamped), never a day lost earlier."""
    boundary = add_months(anchor, k)
    last_day = calendar.monthrange(boundary.year, boundary.month)[1]
    assert boundary.day == min(anchor.day, last_day)


def test_due_at_adds_days() -> None:
    """The due date is the issue time plus due_days."""
    issued = datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert due_at(issued, 7) == datetime(2026, 2, 7, 10, tzinfo=UTC)


# --- terms hash -----------------------------------------------------------------------------


def _terms() -> Terms:
    return Terms(
        client="Acme",
        chain="base",
        chain_id=8453,
        asset="USDC",
        token_address=USDC,
        decimals=6,
        monthly_base_units=1_500_000_000,
        pay_to=WALLET,
        scope="Backend work",
        cadence="monthly",
        scope_cap="20 hours",
    )


def test_terms_hash_is_stable_for_equal_terms() -> None:
    """The same terms always hash to the same sha256:<64 hex>."""
    first, second = _terms(), _terms()
    assert first.hash() == second.hash()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.hash())


_CHANGES = {
    "client": "Acme Ltd",
    "chain": "ethereum",
    "chain_id": 1,
    "asset": "USDT",
    "token_address": None,
    "decimals": 18,
    "monthly_base_units": 1_500_000_001,
    "pay_to": "0x52908400098527886E0F7030069857D2E4169EE7",
    "scope": "Backend work.",
    "cadence": "weekly",
    "scope_cap": "21 hours",
}


def test_every_term_is_covered_by_the_change_table() -> None:
    """The change table below lists every field of Terms, so a new term cannot go untested."""
    assert set(_CHANGES) == {f.name for f in dataclasses.fields(Terms)}


@pytest.mark.parametrize(("field", "value"), sorted(_CHANGES.items()))
def test_terms_hash_changes_when_any_term_changes(field: str, value: object) -> None:
    """Changing any single term changes the hash, so the old approval no longer matches."""
    changed = dataclasses.replace(_terms(), **{field: value})
    assert changed.hash() != _terms().hash()


@given(st.text(max_size=50), st.text(max_size=50))
def test_terms_hash_separates_fields(client: str, scope: str) -> None:
    """Moving text between two fields changes the hash (the canonical JSON has no ambiguity)."""
    assume(client != scope)
    a = dataclasses.replace(_terms(), client=client, scope=scope)
    b = dataclasses.replace(_terms(), client=scope, scope=client)
    assert a.hash() != b.hash()


# --- approval gate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [RetainerStatus.APPROVED, RetainerStatus.ACTIVE, RetainerStatus.LAPSED]
)
def test_check_issuable_allows_approved_unchanged_terms(status: RetainerStatus) -> None:
    """An approved, active or lapsed retainer whose terms match its approval can be invoiced."""
    assert check_issuable(status, "sha256:aa", "sha256:aa") is None


@pytest.mark.parametrize("status", [RetainerStatus.DRAFT, RetainerStatus.ENDED])
def test_check_issuable_refuses_draft_and_ended(status: RetainerStatus) -> None:
    """A draft or ended retainer is refused by state, naming its status."""
    with pytest.raises(Refused, match=f"retainer is {status.value}"):
        check_issuable(status, "sha256:aa", "sha256:aa")


def test_check_issuable_refuses_without_approval_or_with_changed_terms() -> None:
    """No approval, or terms that changed since it, are both refused."""
    with pytest.raises(Refused, match="not approved"):
        check_issuable(RetainerStatus.APPROVED, None, "sha256:aa")
    with pytest.raises(Refused, match="terms changed"):
        check_issuable(RetainerStatus.APPROVED, "sha256:aa", "sha256:bb")


# --- dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        (" 2026-03-01 ", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T12:30:00Z", datetime(2026, 3, 1, 12, 30, tzinfo=UTC)),
        ("2026-03-01T12:30:00+02:00", datetime(2026, 3, 1, 10, 30, tzinfo=UTC)),
        ("2026-03-01T00:30:00-01:00", datetime(2026, 3, 1, 1, 30, tzinfo=UTC)),
        ("2028-02-29", datetime(2028, 2, 29, tzinfo=UTC)),
    ],
)
def test_parse_when_returns_utc(text: str, expected: datetime) -> None:
    """A date is midnight UTC; a timestamp with an offset is converted to UTC."""
    value = parse_when(text)
    assert value == expected
    assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2026-02-30", "is not a date"),
        ("2027-02-29", "is not a date"),
        ("tomorrow", "is not a date"),
        ("01/03/2026", "is not a date"),
        ("", "is not a date"),
        ("2026-03-01T12:00:00", "has no time zone"),
    ],
)
def test_parse_when_refuses_and_names_the_value(text: str, why: str) -> None:
    """An impossible date, free text or a naive timestamp is refused, naming field and value."""
    with pytest.raises(BadInput) as info:
        parse_when(text, what="due date")
    assert f"due date {text!r}" in str(info.value)
    assert why in str(info.value)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 31),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_parse_when_round_trips_isoformat(value: datetime) -> None:
    """Any aware ISO 8601 timestamp parses back to the same instant, in UTC."""
    parsed = parse_when(value.isoformat())
    assert parsed == value
    assert parsed.tzinfo == UTC
