"""Apprise channels (email, Slack, Telegram, ntfy, ...): one ``apprise.Apprise`` per URL.

The message is written for a person, from the event's stored body, by
``watcher.notify.messages.render``.

Apprise URLs carry passwords and tokens. Nothing here logs a URL; Apprise's own log records
(and urllib3's, which Apprise uses for HTTP) pass through a filter that redacts every
configured URL, its secret parts and any other URL, before any handler sees them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import apprise

from watcher.notify.messages import render, severity
from watcher.redact import redact_text

#: Loggers whose records may quote an Apprise URL; all of them get the redacting filter.
LIBRARY_LOGGERS = ("apprise", "urllib3.connectionpool")
DETAIL_LIMIT = 200

_NOTIFY_TYPES = {
    "failure": apprise.NotifyType.FAILURE,
    "warning": apprise.NotifyType.WARNING,
    "success": apprise.NotifyType.SUCCESS,
    "info": apprise.NotifyType.INFO,
}


def notify_type(event_type: str) -> apprise.NotifyType:
    return _NOTIFY_TYPES[severity(event_type)]


# --- keeping URLs out of logs --------------------------------------------------------------------


class _RedactingFilter(logging.Filter):
    """Rewrites a record's message with every known secret and every URL redacted."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not stop the redaction
            message = str(record.msg)
        if record.exc_info:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            record.exc_info = None
            record.exc_text = None
        record.msg = redact_text(message, self.secrets)
        record.args = None
        return True


_FILTER = _RedactingFilter()


def protect_library_logs(secrets: Iterable[str]) -> None:
    """Redact ``secrets`` (URLs or plain values) and any URL from Apprise's and urllib3's logs."""
    _FILTER.secrets.update(s for s in secrets if s)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


# --- the channel -------------------------------------------------------------------------------


class AppriseChannel:
    """One configured Apprise URL: its own ``apprise.Apprise`` object, so its own channel."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        events: tuple[str, ...],
        timeout: float = 10.0,
        secrets: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.events = events
        self._timeout = timeout
        self._secrets = (url, *secrets)
        self._scheme = url.partition("://")[0].lower() or "?"
        protect_library_logs(self._secrets)
        self._apprise = apprise.Apprise()
        self._loaded = bool(self._apprise.add(url))

    def __repr__(self) -> str:
        return f"AppriseChannel({self.name!r}, {self._scheme}://...)"

    def send(self, event_id: str, body: str) -> tuple[bool, str]:
        """Render the event for a person and notify; (delivered, short redacted detail)."""
        if not self._loaded:
            return False, f"apprise: {self._scheme}:// URL not understood"
        event = json.loads(body)
        title, text = render(event)
        result = self._apprise.notify(
            body=text,
            title=title,
            notify_type=notify_type(str(event.get("type"))),
            body_format=apprise.NotifyFormat.TEXT,
            timeout=self._timeout,
        )
        with result:
            if result:
                return True, "apprise: sent"
            problems = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR")]
            status = result.status.name.lower()
        detail = f"apprise: {status}" + (f": {problems[-1]}" if problems else "")
        return False, redact_text(detail, self._secrets)[:DETAIL_LIMIT]
