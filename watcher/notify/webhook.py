"""Signed webhooks, exactly as CONTRACT.md says.

``POST`` of the event's stored body, byte for byte, with ``Content-Type: application/json``,
``Proofwatch-Event-Id: EVT-...`` and
``Proofwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
When the secret is a Standard Webhooks secret (``whsec_<base64>``), the Standard Webhooks
headers come beside these: ``webhook-id`` (the event id), ``webhook-timestamp`` (the same
``t``) and ``webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<t>.<raw body>")>``, the key
being the base64-decoded secret (https://www.standardwebhooks.com). The ``Proofwatch-Signature``
is still keyed with the whole secret string, so existing receivers keep working.

Any 2xx is delivered; 410 Gone raises ``ChannelGone`` (the receiver is gone for good: the
outbox disables the channel); anything else is a failure with a short reason that never holds
the URL or the secret (a webhook URL may carry a token in its path).

``t`` is the wall-clock time of the request, not the watcher's (possibly rehearsed) clock: it
exists so that receivers can refuse replays against their own clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a webhook is sent: settings (every command) import this module
    import requests

USER_AGENT = "proofwatch-webhook/1"
EVENT_ID_HEADER = "Proofwatch-Event-Id"
SIGNATURE_HEADER = "Proofwatch-Signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
#: The Standard Webhooks spec asks for keys of 24 to 64 bytes.
STANDARD_KEY_BYTES = (24, 64)
DEFAULT_TOLERANCE = timedelta(minutes=5)


class ChannelGone(Exception):
    """The receiver answered 410 Gone: stop sending to this channel until the operator says."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


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


def standard_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret, or None for any other secret.

    Raises ``ValueError`` (never quoting the secret) when the part after ``whsec_`` is not
    base64 or decodes to fewer than 24 or more than 64 bytes. Padding may be left out.
    """
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        return None
    encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64") from None
    low, high = STANDARD_KEY_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"a whsec_ secret must decode to {low} to {high} bytes, not {len(key)}")
    return key


def standard_signature(key: bytes, event_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(key, "<id>.<t>.<body>")>``."""
    message = f"{event_id}.{timestamp}.".encode() + _as_bytes(body)
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _failure_reason(exc: requests.RequestException) -> str:
    """A short reason for a transport error; ``requests``' own message quotes the URL."""
    import requests

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
        self._standard_key = standard_key(secret)
        self._timeout = timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"WebhookChannel({self.name!r})"  # never the URL or the secret

    def headers(self, event_id: str, body: str) -> dict[str, str]:
        """The request headers for ``body``, signed now (Standard Webhooks too for whsec_)."""
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event_id,
            SIGNATURE_HEADER: signature_header(self._secret, timestamp, body),
        }
        if self._standard_key is not None:
            headers[STANDARD_ID_HEADER] = event_id
            headers[STANDARD_TIMESTAMP_HEADER] = str(timestamp)
            headers[STANDARD_SIGNATURE_HEADER] = standard_signature(
                self._standard_key, event_id, timestamp, body
            )
        return headers

    def send(self, event_id: str, body: str) -> tuple[bool, str]:
        """POST ``body`` unchanged; (delivered, short detail like ``"HTTP 503"``).

        Raises ``ChannelGone`` on a 410 answer.
        """
        import requests

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
        if status == 410:
            raise ChannelGone("HTTP 410")
        return 200 <= status < 300, f"HTTP {status}"
