"""The field rules of a config, as pydantic types, and pydantic's errors in our wording.

Each config value is an ``Annotated`` type whose rule ends in ``says(...)``: whatever pydantic
finds wrong with the value itself becomes one problem, ``<key>: <value> <why>``, so every key
reads the same however it failed. Checks across fields raise ``refuse(...)``, naming the key
below the table they check. ``problems_from`` turns a ``ValidationError`` into those lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge, Gt, MinLen
from pydantic import AfterValidator, PlainValidator, Strict, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from watcher.domain.addresses import parse_address
from watcher.domain.money import parse_fraction
from watcher.errors import BadInput

Where = tuple[str | int, ...]  # a key below the table a check runs on: ("tokens", 0, "symbol")


def refuse(*problems: tuple[Where, str]) -> PydanticCustomError:
    """One error carrying each ``(key below here, why)``: checks across fields report them all."""
    return PydanticCustomError("config", "{why}", {"why": problems[0][1], "problems": problems})


def _why(text: str) -> PydanticCustomError:
    return refuse(((), text))


_FAILED = object()


def says(
    why: str, *, show: bool = True, whole: bool = False, non_empty: bool = False
) -> WrapValidator:
    """Report any failure of the value itself as ``<value> <why>`` (``<why>`` alone with
    ``show=False``: the value may hold a key). Failures inside a list or table keep their own
    keys unless ``whole``; ``non_empty`` also refuses an empty list."""

    def check(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            result = handler(value)
        except ValidationError as exc:
            if not whole and any(error["loc"] for error in exc.errors()):
                raise
            result = _FAILED
        if result is _FAILED or (non_empty and not result):
            raise _why(f"{value!r} {why}" if show else why)
        return result

    return WrapValidator(check)


def _plain(parse: Callable[[Any], Any]) -> PlainValidator:
    """A rule written as a function raising ``BadInput``/``ValueError`` with the whole message."""

    def check(value: Any) -> Any:
        try:
            return parse(value)
        except (BadInput, ValueError) as exc:
            raise _why(str(exc)) from None

    return PlainValidator(check)


def _matches(pattern: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value, re.DOTALL):
            raise ValueError(pattern)
        return value

    return check


def _at_most_36(decimals: int) -> int:
    if decimals > 36:
        raise _why(f"{decimals!r} must be 0..36")
    return decimals


def _finality(value: Any) -> str | int:
    if value in ("finalized", "safe") or (type(value) is int and value >= 1):
        return value  # type: ignore[no-any-return]
    raise ValueError(f'{value!r} must be "finalized", "safe" or an integer >= 1')


def _address(value: Any) -> str:
    return parse_address(value, what="value")


def _tolerance(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        value = str(value)
    elif not isinstance(value, str):
        raise ValueError(f'{value!r} must be a decimal string like "0.01"')
    return parse_fraction(value, what="value")


def _token(value: Any) -> str | None:
    if value is None or value == "":  # "" is reported as an unset ${VAR}
        return None
    if not isinstance(value, str):
        raise ValueError('must be a string like "${STATUS_TOKEN}"')
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,}", value):
        raise ValueError(
            "must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / = - (value not shown)"
        )
    return value


_HOSTNAME = (
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?"
    r"|\[[0-9a-f:.]+\]"
)
InternalMode = Literal["trace_filter", "debug_trace", "off"]
INTERNAL_MODES: tuple[str, ...] = get_args(InternalMode)

Count = Annotated[int, Strict(), Ge(0), says("must be an integer >= 0")]
AtLeastOne = Annotated[int, Strict(), Ge(1), says("must be an integer >= 1")]
Seconds = Annotated[float, Strict(), Gt(0), says("must be a positive number of seconds")]
LeaseSeconds = Annotated[
    float, Strict(), Ge(10), says("must be at least 10 seconds (two daemon heartbeats)")
]
Flag = Annotated[bool, Strict(), says("must be true or false")]
Decimals = Annotated[Count, AfterValidator(_at_most_36)]
Name = Annotated[
    str, Strict(), AfterValidator(_matches(r"[a-z][a-z0-9_-]{0,31}")),
    says("must be lowercase letters, digits, - or _"),
]  # fmt: skip
Symbol = Annotated[
    str, Strict(), AfterValidator(_matches(r"[A-Za-z0-9.]{1,16}")), says("is not a token symbol")
]
ChannelName = Annotated[
    str, Strict(), AfterValidator(_matches(r"[a-z0-9][a-z0-9_.:-]{0,63}")),
    says("must be 1-64 lowercase letters, digits, _ . : or -"),
]  # fmt: skip
Address = Annotated[str, _plain(_address)]
Finality = Annotated[str | int, _plain(_finality)]
Internal = Annotated[InternalMode, says(f"must be one of {', '.join(INTERNAL_MODES)}")]
Tolerance = Annotated[Decimal, _plain(_tolerance)]
RpcUrl = Annotated[
    str, Strict(), AfterValidator(_matches(r"https?://[^\s/]+.*")),
    says("is not an http(s) URL (value not shown: may hold a key)", show=False),
]  # fmt: skip
RpcUrls = Annotated[
    tuple[RpcUrl, ...], says("must be a non-empty list of http(s) URLs", show=False, non_empty=True)
]
ExplorerUrl = Annotated[
    str, Strict(), AfterValidator(_matches(r"http.*")), says("is not an http(s) URL"),
    AfterValidator(lambda url: url.rstrip("/")),
]  # fmt: skip
HookUrl = Annotated[
    str, Strict(), AfterValidator(_matches(r"https?://.*")),
    says("is not an http(s) URL (value not shown: may hold a key)", show=False),
]  # fmt: skip
AppriseUrl = Annotated[
    str, Strict(), AfterValidator(_matches(r".*://.*")),
    says("is not an Apprise URL like scheme://... (value not shown)", show=False),
]  # fmt: skip
Events = Annotated[
    tuple[Annotated[str, Strict(), MinLen(1)], ...],
    says('must be a list of event types ("*" and "watcher.*" allowed)', whole=True),
]
Listen = Annotated[
    str, Strict(), AfterValidator(_matches(r"[0-9A-Za-z.\-\[\]:]+:[0-9]{1,5}")),
    says("must be host:port, like 127.0.0.1:9464"),
]  # fmt: skip
Host = Annotated[
    str, Strict(), AfterValidator(lambda host: _matches(_HOSTNAME)(host.strip().lower())),
    says("is not a host name (no port, no scheme)"), AfterValidator(lambda h: h.rstrip(".")),
]  # fmt: skip
Hosts = Annotated[tuple[Host, ...], says('must be a list of host names like "status.example.com"')]
Token = Annotated[str | None, _plain(_token)]


def tables(of: str, *, non_empty: bool = False) -> WrapValidator:
    """A list of ``[[of]]`` tables."""
    if non_empty:
        return says(f"at least one [[{of}]] table is required", show=False, non_empty=True)
    return says(f"must be a list of [[{of}]] tables", show=False)


# --- pydantic's errors, in our words ---------------------------------------------------------

_TABLE_TYPES = {"model_type", "dataclass_type", "dataclass_args_type", "model_attributes_type"}


def _key(loc: Where) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def problems_from(exc: ValidationError) -> list[str]:
    """One line per problem, in the order pydantic found them (the order of the keys)."""
    out: list[str] = []
    for error in exc.errors(include_url=False):
        loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
        if kind == "config":
            out += [f"{_key(loc + below)}: {why}" for below, why in ctx["problems"]]
        elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
            out.append(f"{_key(loc)}: unknown {'section' if len(loc) == 1 else 'key'}")
        elif kind in ("missing", "missing_argument"):
            out.append(f"{_key(loc)}: is required")
        elif kind in _TABLE_TYPES:
            out.append(f"{_key(loc)}: must be a table")
        else:  # a rule without ``says``: pydantic's own words, never the value
            out.append(f"{_key(loc)}: {error['msg']}")
    return out
