"""One JSON-RPC POST over HTTP: the connection pool, the timeout, and what an HTTP answer means.

``watcher.chain.rpc.RpcPool`` decides which URL to ask, when to retry and how to count; this
module only sends a body and reads the answer back, mapping every way a POST can fail to
``AttemptFailed`` (retried by the pool) or ``BatchTooLarge`` (resent in smaller batches).
Messages are redacted by the caller's ``redact`` before they leave.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import requests

from watcher.chain.rpc_errors import (
    AttemptFailed,
    BatchTooLarge,
    error_text,
    is_batch_refusal,
    retry_after_seconds,
)

__all__ = ["HttpTransport"]


class HttpTransport:
    """POSTs JSON-RPC bodies over one pooled ``requests.Session`` (keep-alive per URL)."""

    def __init__(self, timeout: float, redact: Callable[[str], str]) -> None:
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update(
            {"Content-Type": "application/json", "User-Agent": "proofwatch"}
        )
        self._redact = redact

    def post(self, url: str, body: str, ids: list[Any]) -> dict[Any, dict[str, Any]]:
        """POST ``body`` (the JSON of the entries with ``ids``) to ``url``: the answers by id.

        Raises ``AttemptFailed`` (no usable answer: connection error, timeout, HTTP 429/5xx,
        not JSON) or ``BatchTooLarge`` (HTTP 413, or one error refusing the whole batch).
        """
        try:
            response = self.session.post(url, data=body, timeout=self.timeout)
        except requests.Timeout:
            raise AttemptFailed(f"no answer within {self.timeout:g} s", timeout=True) from None
        except requests.RequestException as exc:
            reason = f"{type(exc).__name__}: {self._redact(str(exc))}"
            raise AttemptFailed(reason) from None
        status = response.status_code
        if status == 413:
            raise BatchTooLarge(f"HTTP 413 for a batch of {len(ids)}")
        if status == 429:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise AttemptFailed("HTTP 429 Too Many Requests", retry_after)
        if status >= 300 and status != 400:
            # 5xx, but also 401/403/404: a bad key or path on this URL, another may work.
            raise AttemptFailed(f"HTTP {status}")
        try:
            answer = json.loads(response.content)
        except ValueError:
            raise AttemptFailed(f"HTTP {status} with an answer that is not JSON") from None
        if isinstance(answer, dict) and ("result" in answer or "error" in answer):
            # One answer: to a single request, or one error for a whole refused batch.
            if len(ids) > 1 and is_batch_refusal(answer.get("error")):
                code, message = error_text(answer["error"])
                raise BatchTooLarge(f"JSON-RPC error {code}: {self._redact(message)}")
            return dict.fromkeys(ids, answer)
        if isinstance(answer, list):
            return {a.get("id"): a for a in answer if isinstance(a, dict)}
        raise AttemptFailed(f"HTTP {status} without a JSON-RPC answer")

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()
