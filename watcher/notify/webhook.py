"""Signed webhooks, exactly as CONTRACT.md says.

``POST`` of the event's stored body, byte for byte, with ``Content-Type: application/json``,
``Proofwatch-Event-Id: EVT-...`` and
``Proofwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
Any 2xx is delivered; anything else is a failure with a short reason that never holds the URL
or the secret (a webhook URL may carry a token in its path).

``t`` is the wall-clock time of the request, not the watcher's (possibly rehearsed) clock: it
exists so that receivers can refuse replays against their own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import requests

USER_AGENT = "proofwatch-webhook/1"
EVENT_ID_HEADER = "Proofwatch-Event-Id"
SIGNATURE_HEADER = "Proofwatch-Signature"
DEFAULT_TOLERANCE = timedelta(minutes=5)


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def signature(secret: str, timestamp: int, body: bytes | str) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    message = str(timestamp).encode("ascii") + b"." + _as_bytes(body)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes | str) -> str:
    """The ``Proofwatch-Signature`` header value: ``t=<timestamp>,v1=<hex>``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` at a time within ``tolerance`` of now.

    For receivers: pass the raw request body, not a re-serialised one. Several ``v1=`` values
    are accepted (any one matching is enough), so a sender may sign with an old and a new
    secret while they are rotated. Never raises on a malformed header: returns False.
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs(now.timestamp() - timestamp) > tolerance.total_seconds():
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c.lower()) for c in candidates)


def _failure_reason(exc: requests.RequestException) -> str:
    """A short reason for a transport error; ``requests``' own message quotes the URL."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.Timeout):
        return "read timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "refused" in text.lower():
            return "connection refused"
        if "Name or service not known" in text or "getaddrinfo" in text:
            return "host not found"
        return "connection failed"
    return f"request failed ({type(exc).__name__})"


class WebhookChannel:
    """One configured ``[[notify.webhooks]]`` entry."""

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        *,
        events: tuple[str, ...] = ("*",),
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.events = events
        self._url = url
        self._secret = secret
        self._timeout = timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"WebhookChannel({self.name!r})"  # never the URL or the secret

    def headers(self, event_id: str, body: str) -> dict[str, str]:
        """The request headers for ``body``, signed now."""
        return {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event_id,
            SIGNATURE_HEADER: signature_header(self._secret, int(self._clock()), body),
        }

    def send(self, event_id: str, body: str) -> tuple[bool, str]:
        """POST ``body`` unchanged; (delivered, short detail like ``"HTTP 503"``)."""
        payload = body.encode("utf-8")
        try:
            response = requests.post(
                self._url,
                data=payload,
                headers=self.headers(event_id, body),
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return False, _failure_reason(exc)
        with response:
            status = response.status_code
        return 200 <= status < 300, f"HTTP {status}"
