"""How to read a node's refusals: which JSON-RPC errors mean "slow down", "ask for a smaller
range" or "send smaller batches", and the errors the pool raises or retries on.

Pure functions over the raw error objects; ``watcher.chain.rpc`` decides what to do with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from watcher.errors import RpcError

# Methods whose refusals can mean "ask for a smaller block range".
RANGE_METHODS = frozenset({"eth_getLogs", "trace_filter"})
_RANGE_CODES = frozenset({-32005, -32602, -32600, -32000})
_RANGE_WORDS = (
    "block range", "range too", "range is too", "too many blocks", "more than", "exceed",
    "limit", "too many results", "max results", "response size", "result size", "too large",
)  # fmt: skip
# A provider refusing a batch for its size: HTTP 413, or an error naming the batch.
_BATCH_WORDS = ("too large", "too big", "size", "limit", "exceed", "too many", "maximum", "max ")
_BUSY_CODES = frozenset({429, -32005, -32007, -32016})
_BUSY_WORDS = (
    "rate limit", "rate-limit", "ratelimit", "too many requests", "request rate", "busy",
    "capacity", "compute units", "throughput", "try again", "temporarily unavailable",
    "overloaded", "request count exceeded", "quota",
)  # fmt: skip


# "block range too large, currently limited to 300" (Anvil), "exceeds maximum of 100 blocks",
# "max range: 10,000": a number after one of these words, in a refusal about a block range.
_STATED_LIMIT = re.compile(
    r"(?:limited to|limit is|limit of|maximum|max range|max|up to|at most)"
    r"(?:\s*block range)?\s*(?:is|of)?\s*:?\s*(?:a\s+)?(\d[\d,_]*)",
    re.IGNORECASE,
)
_NOT_BLOCKS = ("result", "response", "logs in", "size", "second", "byte")


def stated_range_limit(message: str) -> int | None:
    """The widest block range a range refusal says the node allows ("limited to 300"), or
    None when it states none, or its number is about something else (results, bytes)."""
    lower = message.lower()
    if not ("range" in lower or "block" in lower) or any(w in lower for w in _NOT_BLOCKS):
        return None
    match = _STATED_LIMIT.search(message)
    if match is None:
        return None
    limit = int(match.group(1).replace(",", "").replace("_", ""))
    return limit if limit >= 1 else None


class RpcResponseError(RpcError):
    """A node answered with a deterministic JSON-RPC error (revert, invalid params, ...)."""

    def __init__(self, message: str, *, method: str, code: int | None, data: Any = None) -> None:
        super().__init__(message)
        self.method = method
        self.code = code
        self.data = data


class AttemptFailed(Exception):
    """One POST got no usable answer; the message is already redacted."""

    def __init__(
        self, reason: str, retry_after: float | None = None, *, timeout: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.timeout = timeout


class BatchTooLarge(AttemptFailed):
    """The provider refused a POST for the number of entries in it (HTTP 413, or an error
    naming the batch size)."""


def is_batch_refusal(error: Any) -> bool:
    """True when a JSON-RPC error says the batch itself is too big."""
    _, message = error_text(error)
    lower = message.lower()
    return "batch" in lower and any(word in lower for word in _BATCH_WORDS)


def error_text(error: Any) -> tuple[int | None, str]:
    if not isinstance(error, Mapping):
        return None, str(error)
    code = error.get("code")
    return (code if isinstance(code, int) else None), str(error.get("message", ""))


def is_busy(method: str, error: Any) -> bool:
    """True when a JSON-RPC error says "slow down" (rate limit, server busy): worth a retry."""
    code, message = error_text(error)
    lower = message.lower()
    if any(word in lower for word in _BUSY_WORDS):
        return True
    return code in _BUSY_CODES and not (method in RANGE_METHODS and code == -32005)


def is_range_refusal(method: str, error: Any) -> bool:
    code, message = error_text(error)
    lower = message.lower()
    return method in RANGE_METHODS and (
        code == -32005 or (code in _RANGE_CODES and any(w in lower for w in _RANGE_WORDS))
    )


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; None for a date or garbage."""
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


def json_default(value: Any) -> Any:
    """Encode what web3 may hand over besides plain JSON: bytes as 0x hex, mappings as objects."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
