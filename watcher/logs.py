"""structlog setup: JSON lines when stderr is not a TTY, readable on a TTY; secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from watcher.redact import redact_text


class _Redact:
    """A processor that removes every configured secret (and URL keys) from every value."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if isinstance(value, str) and (self.secrets or "://" in value):
                event[key] = redact_text(value, self.secrets)
        return event


def configure(
    secrets: Iterable[str] = (), *, level: int = logging.INFO, tty: bool | None = None
) -> None:
    """Configure structlog once per process, writing to stderr."""
    pretty = sys.stderr.isatty() if tty is None else tty
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if pretty
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _Redact(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (apprise, urllib3, apscheduler) log through stdlib logging: keep them quiet.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("apprise", "urllib3", "web3", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
