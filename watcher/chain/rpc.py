"""Raw JSON-RPC over HTTP for one chain: several URLs, failover, backoff, batching, redaction.

One POST (the HTTP session, the timeout, what an HTTP status means) is
``watcher.chain.rpc_http``; how to read a node's refusals is ``watcher.chain.rpc_errors``.

Results stay raw JSON (hex strings, dicts): callers decode. URLs often carry API keys, so only
their redacted form (``watcher.redact``) ever reaches a log line, an exception message or
the status attributes.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from structlog.typing import FilteringBoundLogger

from watcher.chain.rpc_errors import (
    AttemptFailed,
    BatchTooLarge,
    RpcResponseError,
    error_text,
    is_batch_refusal,
    is_busy,
    is_range_refusal,
    json_default,
)
from watcher.chain.rpc_http import HttpTransport
from watcher.domain.finality import RangeSizer
from watcher.errors import BadInput, RangeTooLarge, RpcError
from watcher.redact import redact_text, redact_url

if TYPE_CHECKING:
    from web3 import Web3

__all__ = ["Call", "RpcPool", "RpcResponseError"]

Call = tuple[str, Sequence[Any]]


class RpcPool:
    """JSON-RPC client for one chain over several HTTP URLs.

    URLs are tried in order, sticking to the last one that answered. Connection errors,
    timeouts, HTTP 429/5xx and busy/rate-limit JSON-RPC errors are retried with exponential
    backoff and jitter (``Retry-After`` honoured, capped at ``backoff_max``), failing over to
    the next URL; switching to a URL not yet failed in this request happens without waiting.
    Batches are sent in POSTs of at most ``max_batch`` entries, a width learned like an
    ``eth_getLogs`` range (``RangeSizer``): HTTP 413 or an error saying the batch is too large
    halves it and resends at once (no attempt used), a timeout halves it too (and counts as a
    failed attempt); successes grow it back to the configured ``max_batch``.
    After ``max_attempts`` failures ``RpcError`` is raised. Deterministic JSON-RPC errors are
    never retried: they raise ``RangeTooLarge`` (a refused ``eth_getLogs``/``trace_filter``
    range or result size) or ``RpcResponseError``. With ``expected_chain_id`` set, each URL's
    ``eth_chainId`` is checked on its first use and a mismatch raises ``RpcError``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        chain: str,
        expected_chain_id: int | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 10.0,
        max_batch: int = 100,
        sleep: Callable[[float], None] = time.sleep,
        logger: FilteringBoundLogger | structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        if not urls:
            raise BadInput(f"chain {chain}: at least one RPC URL is needed")
        if max_attempts < 1 or max_batch < 1 or timeout <= 0:
            raise BadInput(
                f"chain {chain}: max_attempts ({max_attempts}), max_batch ({max_batch}) and "
                f"timeout ({timeout}) must be positive"
            )
        self.chain = chain
        self.expected_chain_id = expected_chain_id
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.batch_sizer = RangeSizer(max_batch)  # entries per POST, learned
        self._urls = tuple(urls)
        self._redacted = tuple(redact_url(u) for u in self._urls)
        self._sleep = sleep
        self._log = logger if logger is not None else structlog.get_logger("watcher.chain.rpc")
        self._http = HttpTransport(timeout, self._redact)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._jitter = random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self._current = 0
        self._verified: set[int] = set()
        self._web3: Web3 | None = None
        self._witnesses: dict[int, RpcPool] = {}
        self.request_count = 0
        self.counts_by_method: Counter[str] = Counter()
        self.last_ok_at: datetime | None = None
        self.last_error: str | None = None

    # -- public API --------------------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        """Entries per POST now: the configured ``max_batch``, or less after refusals."""
        return self.batch_sizer.size

    @property
    def current_url_redacted(self) -> str:
        """The URL requests go to now, redacted."""
        return self._redacted[self._current]

    @property
    def urls_redacted(self) -> tuple[str, ...]:
        return self._redacted

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """The raw ``result`` of one request; raise RpcError / RangeTooLarge on failure."""
        answer = self._exchange([(method, params)])[0]
        if answer.get("error") is not None:
            raise self._response_error(method, answer["error"])
        return answer.get("result")

    def batch(self, calls: Sequence[Call], *, return_errors: bool = False) -> list[Any]:
        """Raw results of ``calls`` in request order, sent as JSON arrays of at most
        ``max_batch`` entries. A JSON-RPC error raises (RangeTooLarge / RpcResponseError), or
        with ``return_errors`` its exception object takes that entry's slot.
        """
        out: list[Any] = []
        start = 0
        while start < len(calls):  # max_batch may shrink while the calls are sent
            chunk = calls[start : start + self.max_batch]
            start += len(chunk)
            for (method, _), answer in zip(chunk, self._exchange(chunk), strict=True):
                if answer.get("error") is None:
                    out.append(answer.get("result"))
                    continue
                exc = self._response_error(method, answer["error"])
                if not return_errors:
                    raise exc
                out.append(exc)
        return out

    def fail_over(self, reason: str) -> bool:
        """Move to the next URL for later requests (a URL that answers but cannot be trusted
        now, e.g. behind the cursor); False when there is no other URL."""
        if len(self._urls) < 2:
            return False
        old, self._current = self._current, (self._current + 1) % len(self._urls)
        self._log.warning(
            "rpc.failover", chain=self.chain, from_url=self._redacted[old],
            to_url=self._redacted[self._current], reason=reason,
        )  # fmt: skip
        return True

    def witness(self) -> RpcPool | None:
        """A pool over this chain's other URLs (all but the current one), to confirm what the
        current one said (``cross_check``); None with a single URL. It keeps its own counts."""
        if len(self._urls) < 2:
            return None
        if self._current not in self._witnesses:
            others = [u for i, u in enumerate(self._urls) if i != self._current]
            self._witnesses[self._current] = RpcPool(
                others, chain=self.chain, expected_chain_id=self.expected_chain_id,
                timeout=self.timeout, max_attempts=self.max_attempts,
                backoff_base=self.backoff_base, backoff_max=self.backoff_max,
                max_batch=self.max_batch, sleep=self._sleep, logger=self._log,
            )  # fmt: skip
        return self._witnesses[self._current]

    def check_chain_id(self) -> int:
        """The chain id the current URL reports; RpcError if it differs from the expected one."""
        return self._parse_chain_id(self.call("eth_chainId"))

    def web3(self) -> Web3:
        """A Web3 whose every request goes through this pool."""
        if self._web3 is None:
            from web3 import Web3  # slow to import; few callers need it

            from watcher.chain.web3_provider import PoolProvider

            self._web3 = Web3(PoolProvider(self))
        return self._web3

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._http.close()
        for witness in self._witnesses.values():
            witness.close()

    def __repr__(self) -> str:
        return f"<RpcPool {self.chain} {', '.join(self._redacted)}>"

    # -- the retry loop ----------------------------------------------------------------------

    def _exchange(self, calls: Sequence[Call]) -> list[dict[str, Any]]:
        """Send ``calls`` until each has a final answer; the raw answers in request order.

        Answers carrying a deterministic JSON-RPC error are returned as they are.
        """
        entries = [
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            for method, params in calls
        ]
        final: dict[Any, dict[str, Any]] = {}
        pending = entries
        failures = 0
        failed_urls: dict[int, float] = {}  # URL index -> Retry-After it asked for (or 0)
        while pending:
            index = self._current
            sending = pending[: self.max_batch]
            try:
                if self.expected_chain_id is not None and index not in self._verified:
                    self._verify(index)
                answers = self._post(index, sending)
                retry = [e for e in sending if self._settle(index, e, answers, final)]
                if retry:
                    raise self._busy_failure(retry, answers)
            except AttemptFailed as exc:
                shrunk = len(sending) > 1 and (isinstance(exc, BatchTooLarge) or exc.timeout)
                if shrunk:
                    self._batch_refused(len(sending), exc.reason)
                if not (shrunk and isinstance(exc, BatchTooLarge)):  # a refusal costs no try
                    failures += 1
                    self._after_failure(index, exc, failures, failed_urls, sending)
                pending = [e for e in pending if e["id"] not in final]
                continue
            if len(sending) > 1:
                self.batch_sizer.succeeded(len(sending))
            self.last_ok_at = datetime.now(UTC)
            pending = pending[len(sending) :]
        return [final[e["id"]] for e in entries]

    def _batch_refused(self, size: int, reason: str) -> None:
        before = self.max_batch
        self.batch_sizer.refused(size)
        self._log.warning(
            "rpc.batch_shrunk", chain=self.chain, url=self.current_url_redacted, refused=size,
            max_batch=self.max_batch, was=before, reason=reason,
        )  # fmt: skip

    def _settle(
        self,
        index: int,
        entry: dict[str, Any],
        answers: dict[Any, dict[str, Any]],
        final: dict[Any, dict[str, Any]],
    ) -> bool:
        """Record the answer to ``entry`` as final; True if it must be asked again."""
        answer = answers.get(entry["id"])
        error = answer.get("error") if answer is not None else None
        if error is not None and len(answers) > 1 and is_batch_refusal(error):
            code, message = error_text(error)  # this entry was past the provider's limit
            raise BatchTooLarge(f"JSON-RPC error {code}: {self._redact(message)}")
        if answer is None or (
            answer.get("error") is not None and is_busy(entry["method"], answer["error"])
        ):
            return True
        if entry["method"] == "eth_chainId" and answer.get("error") is None:
            self._parse_chain_id(answer.get("result"), index)
        final[entry["id"]] = answer
        return False

    def _busy_failure(
        self, retry: list[dict[str, Any]], answers: dict[Any, dict[str, Any]]
    ) -> AttemptFailed:
        answer = answers.get(retry[0]["id"])
        if answer is None:
            return AttemptFailed(f"no answer for {len(retry)} request(s) of the batch")
        code, message = error_text(answer["error"])
        return AttemptFailed(f"JSON-RPC error {code}: {self._redact(message)}")

    def _after_failure(
        self,
        index: int,
        exc: AttemptFailed,
        failures: int,
        failed_urls: dict[int, float],
        pending: list[dict[str, Any]],
    ) -> None:
        """Log the failure, then raise RpcError if attempts are exhausted, else wait and pick
        the URL for the next attempt."""
        url = self._redacted[index]
        self.last_error = f"{url}: {exc.reason}"
        failed_urls[index] = max(failed_urls.get(index, 0.0), exc.retry_after or 0.0)
        method = pending[0]["method"] if len(pending) == 1 else "batch"
        if failures >= self.max_attempts:
            tried = ", ".join(self._redacted[i] for i in sorted(failed_urls))
            self._log.error(
                "rpc.error", chain=self.chain, urls=tried, method=method, attempts=failures,
                reason=exc.reason,
            )  # fmt: skip
            raise RpcError(
                f"chain {self.chain}: RPC request failed {failures} times via {tried}; "
                f"last error: {exc.reason}"
            ) from exc
        nxt = (index + 1) % len(self._urls)
        delay = 0.0
        if nxt in failed_urls:
            cap = min(self.backoff_max, self.backoff_base * 2 ** (failures - 1))
            delay = cap / 2 + self._jitter.uniform(0, cap / 2)
            delay = min(self.backoff_max, max(delay, failed_urls[nxt]))
        self._log.warning(
            "rpc.retry", chain=self.chain, url=url, method=method, attempt=failures,
            max_attempts=self.max_attempts, delay=round(delay, 3), reason=exc.reason,
        )  # fmt: skip
        if nxt != index:
            self._current = nxt
            self._log.warning(
                "rpc.failover", chain=self.chain, from_url=url, to_url=self._redacted[nxt],
                reason=exc.reason,
            )  # fmt: skip
        if delay > 0:
            self._sleep(delay)

    # -- one POST ----------------------------------------------------------------------------

    def _post(self, index: int, entries: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        """One HTTP POST of ``entries`` to URL ``index``: the answers by request id."""
        payload: Any = entries[0] if len(entries) == 1 else entries
        body = json.dumps(payload, separators=(",", ":"), default=json_default)
        with self._lock:
            self.request_count += 1
            self.counts_by_method.update(e["method"] for e in entries)
        return self._http.post(self._urls[index], body, [e["id"] for e in entries])

    def _verify(self, index: int) -> None:
        """Ask URL ``index`` for its chain id; RpcError if it is not the expected one."""
        entry = {"jsonrpc": "2.0", "id": next(self._ids), "method": "eth_chainId", "params": []}
        answer = self._post(index, [entry])[entry["id"]]
        if answer.get("error") is not None:
            code, message = error_text(answer["error"])
            raise AttemptFailed(f"eth_chainId failed: JSON-RPC error {code}: {message}")
        self._parse_chain_id(answer.get("result"), index)

    def _parse_chain_id(self, raw: Any, index: int | None = None) -> int:
        url = self._redacted[self._current if index is None else index]
        try:
            chain_id = int(raw, 16)
        except (TypeError, ValueError):
            raise RpcError(f"chain {self.chain}: {url} answered eth_chainId with {raw!r}") from None
        expected = self.expected_chain_id
        if expected is not None and chain_id != expected:
            self._log.error(
                "rpc.chain_mismatch", chain=self.chain, url=url, chain_id=chain_id,
                expected_chain_id=expected,
            )  # fmt: skip
            raise RpcError(
                f"chain {self.chain}: {url} is on chain id {chain_id}, "
                f"but the configuration expects chain id {expected}"
            )
        self._verified.add(self._current if index is None else index)
        return chain_id

    # -- errors ------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact_text(text, self._urls)

    def _response_error(self, method: str, error: Any) -> RpcError:
        code, message = error_text(error)
        text = (
            f"chain {self.chain}: {method} refused by {self.current_url_redacted}: "
            f"{self._redact(message)} (JSON-RPC error {code})"
        )
        if is_range_refusal(method, error):
            return RangeTooLarge(text)
        data = error.get("data") if isinstance(error, Mapping) else None
        return RpcResponseError(text, method=method, code=code, data=data)
