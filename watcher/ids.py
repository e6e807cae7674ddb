"""Human-readable stable ids: ``RET-1``, ``INV-1``, ``CYC-1``."""

from __future__ import annotations

import re

from watcher.errors import BadInput

_KINDS = {"RET": "retainer", "INV": "invoice", "CYC": "cycle"}


def fmt_id(prefix: str, number: int | None) -> str | None:
    return None if number is None else f"{prefix}-{number}"


def parse_id(text: str, prefix: str) -> int:
    """``"INV-3"`` (or ``"inv-3"``, or ``"3"``) -> 3; anything else is bad input."""
    match = re.fullmatch(rf"(?:{prefix}-)?([1-9][0-9]{{0,17}})", text.strip(), flags=re.IGNORECASE)
    if match is None:
        raise BadInput(f"{_KINDS[prefix]} id {text!r} is not like {prefix}-1")
    return int(match.group(1))
