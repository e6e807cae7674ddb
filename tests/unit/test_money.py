"""Exact amounts: decimal strings at the edges, int base units inside, never float."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.domain.money import (
    MAX_DECIMALS,
    Asset,
    format_amount,
    parse_amount,
    parse_fraction,
    to_decimal,
)
from watcher.errors import BadInput

decimals_0_18 = st.integers(min_value=0, max_value=18)
base_units = st.integers(min_value=1, max_value=10**40)


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("1500", 6, 1_500_000_000),
        ("1500.25", 6, 1_500_250_000),
        ("1500.000137", 6, 1_500_000_137),
        ("0.000001", 6, 1),
        ("1.100000", 6, 1_100_000),
        ("7", 0, 7),
        ("0.5", 18, 5 * 10**17),
        ("10", 18, 10 * 10**18),
        ("0001.5", 2, 150),
        (" 5 ", 6, 5_000_000),
    ],
)
def test_parse_amount_examples(text: str, decimals: int, expected: int) -> None:
    """Plain decimal strings (outer whitespace ignored) become exact base units."""
    assert parse_amount(text, decimals) == expected


@pytest.mark.parametrize(
    ("text", "decimals", "why"),
    [
        ("1.1234567", 6, "7 decimal places"),
        ("1.0", 0, "1 decimal places"),
        ("0.0000000000000000001", 18, "19 decimal places"),
        ("-5", 6, "not a plain positive decimal"),
        ("0", 6, "greater than zero"),
        ("0.000000", 6, "greater than zero"),
        ("000", 0, "greater than zero"),
        ("1e3", 6, "not a plain positive decimal"),
        ("1E3", 6, "not a plain positive decimal"),
        ("NaN", 6, "not a plain positive decimal"),
        ("nan", 6, "not a plain positive decimal"),
        ("inf", 6, "not a plain positive decimal"),
        ("Infinity", 6, "not a plain positive decimal"),
        ("1 000", 6, "not a plain positive decimal"),
        ("1 .5", 6, "not a plain positive decimal"),
        ("+5", 6, "not a plain positive decimal"),
        (".5", 6, "not a plain positive decimal"),
        ("5.", 6, "not a plain positive decimal"),
        ("", 6, "not a plain positive decimal"),
        ("1,5", 6, "not a plain positive decimal"),
        ("1_000", 6, "not a plain positive decimal"),
        ("0x10", 6, "not a plain positive decimal"),
        ("\u0663", 6, "not a plain positive decimal"),  # ARABIC-INDIC DIGIT THREE
        ("\uff11", 6, "not a plain positive decimal"),  # FULLWIDTH DIGIT ONE
    ],
)
def test_parse_amount_refuses_and_names_the_value(text: str, decimals: int, why: str) -> None:
    """Extra decimals, signs, zero, exponents, NaN/inf, inner spaces, `.5` are refused by name."""
    # `.5` and `5.` are refused today (a whole-number part and fractional digits are both
    # required): deliberate strictness for money, so the test pins it.
    with pytest.raises(BadInput) as info:
        parse_amount(text, decimals, what="monthly amount")
    message = str(info.value)
    assert message.startswith(f"monthly amount {text!r}")
    assert why in message


def test_parse_amount_refuses_non_strings() -> None:
    """A float or int is never accepted as an amount, so no binary rounding can sneak in."""
    for value in (1.5, 15, Decimal("1.5"), None):
        with pytest.raises(BadInput, match="not a decimal string"):
            parse_amount(value, 6)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("units", "decimals", "expected"),
    [
        (1_500_000_137, 6, "1500.000137"),
        (1_500_000_000, 6, "1500"),
        (1_500_250_000, 6, "1500.25"),
        (1, 6, "0.000001"),
        (0, 6, "0"),
        (0, 0, "0"),
        (42, 0, "42"),
        (10**19, 18, "10"),
        (500_000_000_000_000_001, 18, "0.500000000000000001"),
        (-1_500_000, 6, "-1.5"),
    ],
)
def test_format_amount_examples(units: int, decimals: int, expected: str) -> None:
    """Base units are shown as a plain decimal string with trailing fractional zeros removed."""
    assert format_amount(units, decimals) == expected


@given(units=base_units, decimals=decimals_0_18)
def test_format_then_parse_round_trips(units: int, decimals: int) -> None:
    """Parsing what format_amount printed gives back exactly the same base units."""
    assert parse_amount(format_amount(units, decimals), decimals) == units


@given(
    whole=st.integers(min_value=0, max_value=10**24),
    frac=st.text(alphabet="0123456789", max_size=18),
    decimals=decimals_0_18,
)
def test_parse_then_format_gives_the_normalised_string(
    whole: int, frac: str, decimals: int
) -> None:
    """Any accepted decimal string formats back to itself without leading/trailing zeros."""
    frac = frac[:decimals]
    text = f"{whole}.{frac}" if frac else str(whole)
    expected = Decimal(text)
    if expected == 0:
        with pytest.raises(BadInput):
            parse_amount(text, decimals)
        return
    formatted = format_amount(parse_amount(text, decimals), decimals)
    assert Decimal(formatted) == expected
    assert "e" not in formatted.lower()
    if "." in formatted:
        assert not formatted.endswith("0")
    assert formatted == str(whole) + (f".{frac.rstrip('0')}" if frac.rstrip("0") else "")


@given(units=st.integers(min_value=0, max_value=10**40), decimals=decimals_0_18)
def test_format_amount_is_exact(units: int, decimals: int) -> None:
    """format_amount equals the exact Decimal value units / 10**decimals, with no exponent."""
    text = format_amount(units, decimals)
    with localcontext(Context(prec=100)):
        assert Decimal(text) == Decimal(units).scaleb(-decimals)
    assert to_decimal(units, decimals) == Decimal(text)
    assert "e" not in text.lower()
    assert not text.startswith("0") or text == "0" or text.startswith("0.")


@given(
    units=base_units,
    decimals=st.integers(min_value=0, max_value=17),
    extra=st.integers(min_value=1, max_value=9),
)
def test_one_digit_too_many_is_always_refused(units: int, decimals: int, extra: int) -> None:
    """An amount with one more fractional digit than the asset has is refused, never rounded."""
    whole, frac = divmod(units, 10**decimals)
    padded = str(frac).rjust(decimals, "0") if decimals else ""
    text = f"{whole}.{padded}{extra}"
    with pytest.raises(BadInput, match="decimal places"):
        parse_amount(text, decimals)


@pytest.mark.parametrize(("text", "expected"), [("0", "0"), ("0.01", "0.01"), ("0.999", "0.999")])
def test_parse_fraction_accepts_zero_to_below_one(text: str, expected: str) -> None:
    """A tolerance is a plain decimal fraction in [0, 1)."""
    assert parse_fraction(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "1e-2", ".5", "NaN", "", "0,1"])
def test_parse_fraction_refuses_and_names_the_value(text: str) -> None:
    """A fraction outside [0, 1) or not a plain decimal is refused with the value in the message."""
    with pytest.raises(BadInput) as info:
        parse_fraction(text, what="underpay_tolerance")
    assert f"underpay_tolerance {text!r}" in str(info.value)


def test_parse_fraction_refuses_a_float() -> None:
    """A float tolerance is refused: tolerances are decimal strings."""
    with pytest.raises(BadInput, match="is not a plain decimal string"):
        parse_fraction(0.01)  # type: ignore[arg-type]


def test_asset_refuses_impossible_decimals() -> None:
    """An asset's decimals must be 0..MAX_DECIMALS; the message names the value and the symbol."""
    with pytest.raises(BadInput, match=r"decimals 37 for XYZ"):
        Asset("base", 8453, "XYZ", MAX_DECIMALS + 1, None)
    with pytest.raises(BadInput, match=r"decimals -1 for XYZ"):
        Asset("base", 8453, "XYZ", -1, None)
    assert Asset("base", 8453, "ETH", 18).is_native
    assert not Asset(
        "base", 8453, "USDC", 6, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    ).is_native
