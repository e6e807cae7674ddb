"""Assets and exact amounts: int base units inside, decimal strings at the edges, never float."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from watcher.errors import BadInput

_AMOUNT = re.compile(r"^(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?$")
MAX_DECIMALS = 36


@dataclass(frozen=True, slots=True)
class Asset:
    """What an invoice is paid in: the chain's native coin or one ERC-20 token on one chain."""

    chain: str
    chain_id: int
    symbol: str
    decimals: int
    token_address: str | None = None  # None for the native coin; EIP-55 checksummed otherwise

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise BadInput(
                f"decimals {self.decimals!r} for {self.symbol} must be 0..{MAX_DECIMALS}"
            )

    @property
    def is_native(self) -> bool:
        return self.token_address is None


def parse_amount(text: str, decimals: int, *, what: str = "amount") -> int:
    """Parse a positive decimal string such as ``"1500.25"`` into base units.

    Refuses negatives, zero, exponents, NaN/Infinity, signs, spaces, and more fractional
    digits than the asset has: the message names the value.
    """
    if not isinstance(text, str):
        raise BadInput(f"{what} {text!r} is not a decimal string")
    raw = text.strip()
    match = _AMOUNT.match(raw)
    if match is None:
        raise BadInput(f"{what} {text!r} is not a plain positive decimal number (like 1500.25)")
    frac = match.group("frac") or ""
    if len(frac) > decimals:
        raise BadInput(
            f"{what} {text!r} has {len(frac)} decimal places; the asset has only {decimals}"
        )
    base: int = int(match.group("int")) * int(10**decimals) + int(frac.ljust(decimals, "0") or "0")
    if base == 0:
        raise BadInput(f"{what} {text!r} must be greater than zero")
    return base


def format_amount(base_units: int, decimals: int) -> str:
    """Format base units as a plain decimal string with trailing fractional zeros removed.

    ``format_amount(1500000137, 6) == "1500.000137"``; ``format_amount(1500000000, 6) == "1500"``.
    """
    if base_units < 0:
        return "-" + format_amount(-base_units, decimals)
    whole, frac = divmod(base_units, 10**decimals)
    if decimals == 0 or frac == 0:
        return str(whole)
    return f"{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


def to_decimal(base_units: int, decimals: int) -> Decimal:
    """The exact Decimal value of an amount in base units (for display and JSON only)."""
    return Decimal(format_amount(base_units, decimals))


def parse_fraction(text: str, *, what: str = "fraction") -> Decimal:
    """Parse a decimal fraction in ``[0, 1)`` such as ``"0.01"`` (used for tolerances)."""
    if not isinstance(text, str) or re.fullmatch(r"[0-9]+(\.[0-9]+)?", text.strip()) is None:
        raise BadInput(f'{what} {text!r} is not a plain decimal string like "0.01"')
    value = Decimal(text.strip())
    if not Decimal(0) <= value < Decimal(1):
        raise BadInput(f"{what} {text!r} must be at least 0 and below 1")
    return value
